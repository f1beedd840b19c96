"""Malicious data poisoning (the paper's Figure 6): one GD step that makes class K read as T.

    .venv/bin/datadistill pretrain --dataset mnist --data-root ../shared/data --models 120 \
        --held-out 20 --epochs 2 --lr 2e-3 --decay-epochs 1 --batch-size 256 --group 4 --out pools/mnist-lenet
    .venv/bin/python benchmarks/attack.py --pool pools/mnist-lenet --data-root ../shared/data

Distils one step of 10 images per class against random models of the pool (4 per
meta-iteration), with the final loss on labels where K is replaced by T; evaluates on the
pool's held-out models; runs the label-flipping baselines (random / optimized / k-means /
average real images, class K labelled T) with the lr × epochs grid; reports accuracy w.r.t.
the modified labels and the fraction of class K classified as T; plots both (docs/attack-*.png).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import datadistill
from datadistill.baselines.write import baseline_artifact

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402
from report import percent, write_block  # noqa: E402

METHODS = [("ours", "Ours"), ("random", "Random real"), ("optimized", "Optimized real"),
           ("kmeans", "k-means"), ("average", "Average real")]


def plot(summaries: dict, path: Path, title: str) -> None:
    """Figure 6's two panels: accuracy w.r.t. modified labels, and the K → T ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [title for key, title in METHODS]
    for ax, metric, label in zip(axes, ("modified_accuracy", "attack_ratio"),
                                 ("accuracy w.r.t. modified labels", "class K classified as T")):
        means = [100 * summaries[key][f"{metric}_mean"] for key, _ in METHODS]
        stds = [100 * summaries[key][f"{metric}_std"] for key, _ in METHODS]
        ax.bar(names, means, yerr=stds, capsize=3, color=["C3"] + ["C0"] * (len(names) - 1))
        ax.set_ylabel(f"{label} (%)")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--attack-class", type=int, default=3)
    parser.add_argument("--target-class", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10, help="distillation passes")
    parser.add_argument("--out", default="runs/attack")
    parser.add_argument("--results", default="docs/results-adaptation.md")
    args = parser.parse_args()
    k, t = args.attack_class, args.target_class
    out = Path(args.out) / f"{args.dataset}-{k}-to-{t}"
    start = time.perf_counter()

    datadistill.distill(out=out / "ours", dataset=args.dataset, data_root=args.data_root,
                        init="pretrained-random", pool=args.pool, objective="attack",
                        attack_class=k, target_class=t, steps=1, distill_epochs=1,
                        images_per_class=10, epochs=args.epochs,
                        decay_epochs=max(1, args.epochs // 2), progress=False)
    summaries = {"ours": datadistill.evaluate(out / "ours", data_root=args.data_root)}
    notes = {"ours": "learned lr"}
    summaries["before"] = summaries["ours"]["before"]
    summaries["ours"] = summaries["ours"]["after"]
    print(f"ours: ratio {percent(summaries['ours'], 'attack_ratio')}", flush=True)
    for method in ("random", "optimized", "kmeans", "average"):
        report = baseline_artifact(method, out / method, like=out / "ours",
                                   settings={"data_root": args.data_root})
        summaries[method] = report["final"]
        notes[method] = f"lr {report['best']['lr']}, {report['best']['epochs']} ep"
        print(f"{method}: ratio {percent(report['final'], 'attack_ratio')} ({notes[method]})",
              flush=True)
    minutes = (time.perf_counter() - start) / 60
    (out / "attack.json").write_text(json.dumps({"summaries": summaries, "notes": notes,
                                                 "minutes": minutes}, indent=2))
    figure = Path(args.results).parent / f"attack-{args.dataset}.png"
    plot(summaries, figure, f"{args.dataset}: one GD step, class {k} → {t}, "
                            f"{summaries['ours']['nets']} held-out models")
    before = summaries["before"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, {minutes:.0f} min in all "
        f"(distillation: {args.epochs} passes, 1 step of 10 images per class).",
        "",
        "```bash",
        ".venv/bin/python " + " ".join(sys.argv),
        "```",
        "",
        "| | " + " | ".join(title for _, title in METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
        "| accuracy w.r.t. modified labels | "
        + " | ".join(percent(summaries[key], "modified_accuracy") for key, _ in METHODS) + " |",
        f"| class {k} classified as {t} | "
        + " | ".join(percent(summaries[key], "attack_ratio") for key, _ in METHODS) + " |",
        "| best grid cell | " + " | ".join(notes[key] for key, _ in METHODS) + " |",
        "",
        f"Before the step the held-out models classify {percent(before, 'accuracy')} % of the test "
        f"set correctly and {percent(before, 'attack_ratio')} % of class {k} as {t}.",
        "",
        f"![attack]({figure.name})",
    ]
    print(write_block(Path(args.results), f"attack-{args.dataset}",
                      "Figure 6: malicious data poisoning", lines))


if __name__ == "__main__":
    main()
