"""Domain adaptation with distilled images (the paper's Table 2) for one source pool → target.

    .venv/bin/datadistill pretrain --dataset digits28 --models 44 --held-out 20 --out pools/digits28-lenet
    .venv/bin/python benchmarks/adaptation.py --pool pools/digits28-lenet --target mnist \
        --data-root ../shared/data --epochs 5

Distils 10 steps × 3 epochs × 1 image per class on the target, from one fixed pool model
and from random pool models (4 per meta-iteration); evaluates on the pool's held-out models;
runs the random / optimized / k-means / average real baselines on the same held-out models
with the lr × epochs grid; adds "no adaptation" (held-out models tested on the target as they
are) and "train on the full target set" (held-out models fine-tuned with Adam). Each pair's
figures go to OUT/<pair>.json; the table in docs/results-adaptation.md is rebuilt from all of them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import datadistill
from datadistill.baselines.write import baseline_artifact
from datadistill.data import load_dataset
from datadistill.evaluate import test_nets
from datadistill.functional import FunctionalModel
from datadistill.models import build_model
from datadistill.pools import Schedule, load_pool, train_models

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402
from report import percent, write_block  # noqa: E402

COLUMNS = [("fixed", "Ours fixed pretrained"), ("random", "Ours random pretrained"),
           ("random-real", "Random real"), ("optimized", "Optimized real"), ("kmeans", "k-means"),
           ("average", "Average real"), ("none", "No adaptation"), ("full", "Train on full target")]


def fine_tuned(pool_dir: str, target: str, data_root: str, epochs: int) -> dict:
    """Held-out pool models fine-tuned on the whole target training set, then tested."""
    pool = load_pool(pool_dir)
    data = load_dataset(target, data_root)
    module = build_model(pool.manifest["arch"], data.image_shape, data.num_classes)
    fmodel = FunctionalModel(module)
    params = pool.split("held_out").take(0, len(pool.manifest["held_out"]))
    trained = train_models(fmodel, params, data, Schedule(epochs, 1e-3, epochs), 256,
                           torch.Generator().manual_seed(0), progress=False)
    return test_nets(fmodel, trained, data.test_images, data.test_labels).summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="source pool (trained on the source domain)")
    parser.add_argument("--target", required=True, help="target dataset")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=5, help="distillation passes over the target")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/adaptation")
    parser.add_argument("--results", default="docs/results-adaptation.md")
    args = parser.parse_args()
    source = load_pool(args.pool).manifest["dataset"]
    pair = f"{source}-to-{args.target}"
    out = Path(args.out) / pair
    start = time.perf_counter()
    cells, notes = {}, {}

    common = dict(dataset=args.target, data_root=args.data_root, pool=args.pool,
                  epochs=args.epochs, decay_epochs=max(1, args.epochs // 2), progress=False)
    for init in ("fixed", "random"):
        run = out / f"ours-{init}"
        datadistill.distill(out=run, init=f"pretrained-{init}", **common)
        result = datadistill.evaluate(run, data_root=args.data_root)
        cells[init] = percent(result["after"])
        if init == "random":
            cells["none"] = percent(result["before"])
        print(f"{pair} ours {init}: {cells[init]}", flush=True)
    for method in ("random", "optimized", "kmeans", "average"):
        report = baseline_artifact(method, out / method, like=out / "ours-random",
                                   settings={"data_root": args.data_root})
        key = "random-real" if method == "random" else method
        cells[key] = percent(report["final"])
        notes[key] = f"lr {report['best']['lr']}, {report['best']['epochs']} ep"
        print(f"{pair} {method}: {cells[key]} ({notes[key]})", flush=True)
    cells["full"] = percent(fine_tuned(args.pool, args.target, args.data_root,
                                       args.finetune_epochs))
    notes["full"] = f"Adam 1e-3, {args.finetune_epochs} ep"
    minutes = (time.perf_counter() - start) / 60
    record = {"pair": pair, "cells": cells, "notes": notes, "minutes": minutes,
              "epochs": args.epochs, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": ".venv/bin/python " + " ".join(sys.argv)}
    (Path(args.out) / f"{pair}.json").write_text(json.dumps(record, indent=2))

    rows = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*.json"))]
    lines = ["| source → target | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row['pair'].replace('-to-', ' → ')} | "
                     + " | ".join(row["cells"][key] for key, _ in COLUMNS) + " |")
        lines.append("| (best grid cell) | | | " + " | ".join(
            row["notes"].get(key, "") for key, _ in COLUMNS[2:]) + " |")
    lines.append("")
    lines += [f"- {row['pair']}: `{row['command']}`, {row['epochs']} passes over the target, "
              f"{row['minutes']:.0f} min on {row['machine']}, {row['date']}." for row in rows]
    print(write_block(Path(args.results), "adaptation", "Table 2: domain adaptation", lines))


if __name__ == "__main__":
    main()
