"""Time to 76 %: distil MNIST (random init) until 20 fresh nets reach the target on average.

    .venv/bin/python benchmarks/time_to_accuracy.py --data-root ../shared/data [--seeds 0 1 2]

One run measures the yardstick's seconds per meta-iteration at the paper's setting (1 net,
1,024 real images; median of --rounds, before and after the distillations, and the faster of
the two is used, which favours the yardstick) and distils each schedule with
``--stop-accuracy`` and an evaluation of 20 fresh nets after every pass. The official code
reaches 76 % after about 20 passes (1,180 meta-iterations), so each time is compared with
1,180 x the yardstick's seconds per iteration. Times count the distillation only
(evaluations excluded, as in the yardstick figure) and, beside them, with the evaluations.
Evaluations come once per pass, so a time is an upper bound by up to one pass.
The table goes into docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import datadistill

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine, make_case, time_yardstick  # noqa: E402
from report import write_block  # noqa: E402

OFFICIAL_ITERATIONS = 1180  # about 20 passes of 59 iterations (reference facts)
SCHEDULES = {
    "paper": {},  # noise images, 1,024 real images, Adam 0.01
    "real-init": {"image_init": "real"},
    "real-init-batch-256": {"image_init": "real", "batch_size": 256},
}


def yardstick_seconds(rounds: int) -> float:
    """Median seconds of one yardstick meta-iteration, MNIST/LeNet, 1 net."""
    case = make_case("lenet", (1, 28, 28))
    time_yardstick(case, 1)  # warm-up
    return statistics.median(time_yardstick(case, 1) for _ in range(rounds))


def time_to_target(data, schedule: dict, seed: int, target: float, max_epochs: int) -> dict:
    """Distil until the first evaluation at ``target``; its pass, iterations and seconds."""
    result = datadistill.distill(data=data, init="random", seed=seed, epochs=max_epochs,
                                 decay_epochs=10, eval_every=1, stop_accuracy=target,
                                 progress=False, **schedule)
    history = result.meta["metrics"]["history"]
    spent_evaluating = 0.0
    for entry in history:
        if entry["accuracy_mean"] >= target:
            return {"reached": True, "epoch": entry["epoch"], "iterations": entry["iterations"],
                    "accuracy": entry["accuracy_mean"],
                    "distill_s": entry["elapsed_s"] - spent_evaluating,
                    "with_evaluations_s": entry["elapsed_s"] + entry["evaluation_s"]}
        spent_evaluating += entry["evaluation_s"]
    final = result.meta["metrics"]["final"]["accuracy_mean"]
    return {"reached": False, "epoch": max_epochs, "accuracy": final,
            "best": max([final] + [h["accuracy_mean"] for h in history])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--target", type=float, default=0.76)
    parser.add_argument("--schedules", nargs="*", default=["real-init", "real-init-batch-256"],
                        choices=list(SCHEDULES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--doc", default="docs/performance.md")
    args = parser.parse_args()
    start = time.perf_counter()
    data = datadistill.load_dataset("mnist", args.data_root)
    yardstick = [yardstick_seconds(args.rounds)]
    print(f"yardstick before: {yardstick[0]:.3f} s per iteration", flush=True)
    rows = []
    for name in args.schedules:
        for seed in args.seeds:
            row = {"schedule": name, "seed": seed,
                   **time_to_target(data, SCHEDULES[name], seed, args.target, args.max_epochs)}
            rows.append(row)
            print(row, flush=True)
    yardstick.append(yardstick_seconds(args.rounds))
    per_iteration = min(yardstick)
    budget = OFFICIAL_ITERATIONS * per_iteration

    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; "
             f"{(time.perf_counter() - start) / 60:.0f} min in all.",
             f"Yardstick: {yardstick[0]:.3f} s per meta-iteration before the distillations and "
             f"{yardstick[1]:.3f} s after (medians of {args.rounds}); with the faster, "
             f"{OFFICIAL_ITERATIONS} iterations = {budget:.0f} s and a third of it {budget / 3:.0f} s.",
             "", "```bash",
             f".venv/bin/python benchmarks/time_to_accuracy.py --data-root {args.data_root} "
             f"--schedules {' '.join(args.schedules)} --seeds {' '.join(map(str, args.seeds))}",
             "```", "",
             f"| schedule | seed | first pass at {100 * args.target:g} % | meta-iterations | "
             "accuracy there | distillation s | with evaluations s | against 1,180 yardstick "
             "iterations |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["reached"]:
            lines.append(f"| {r['schedule']} | {r['seed']} | {r['epoch']} | {r['iterations']} | "
                         f"{100 * r['accuracy']:.2f} % | {r['distill_s']:.0f} | "
                         f"{r['with_evaluations_s']:.0f} | **×{budget / r['distill_s']:.1f}** "
                         f"sooner |")
        else:
            lines.append(f"| {r['schedule']} | {r['seed']} | not within {r['epoch']} | | best "
                         f"{100 * r['best']:.2f} % | | | |")
    block = write_block(Path(args.doc), "time-to-accuracy", "Time to 76 % (MNIST, random init)",
                        lines)
    print(block)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "yardstick_s": yardstick,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
