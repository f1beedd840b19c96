"""The paper's Figures 4 and 5: sweeps of steps, epochs, and one big step vs many steps.

    .venv/bin/python benchmarks/sweeps.py --dataset mnist-5k --epochs 150 --decay-epochs 50

Random init; each point distils afresh and is evaluated on --nets fresh nets (mean ± std).
Figure 4a: steps 1..10, 2 epochs, 1 image per class per step. Figure 4b: 10 steps, 1..5
epochs. Figure 5: N images per class in one step vs N steps of 1 image per class, 1 epoch.
Plots go to docs/fig4a_steps.png, docs/fig4b_epochs.png, docs/fig5_one_vs_many.png; the points
(with each run's learned lrs) to docs/sweeps.json as they finish, so an interrupted sweep resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import datadistill  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402


class Sweep:
    """Distils each (steps, epochs, images per class) once; points are saved as they finish.

    A rerun with the same arguments reuses the points already in ``path``.
    """

    def __init__(self, data, args, path: Path) -> None:
        self.data, self.args, self.path = data, args, path
        self.settings = {k: getattr(args, k) for k in ("dataset", "epochs", "decay_epochs", "nets")}
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.points = saved.get("points", []) if saved.get("settings") == self.settings else []

    def point(self, steps: int, epochs: int, ipc: int) -> dict:
        for row in self.points:
            if (row["steps"], row["epochs"], row["ipc"]) == (steps, epochs, ipc):
                return row
        start = time.perf_counter()
        result = datadistill.distill(data=self.data, steps=steps, distill_epochs=epochs,
                                     images_per_class=ipc, epochs=self.args.epochs,
                                     decay_epochs=self.args.decay_epochs,
                                     eval_nets=self.args.nets, progress=False)
        final = result.meta["metrics"]["final"]
        row = {"steps": steps, "epochs": epochs, "ipc": ipc,
               "accuracy_mean": final["accuracy_mean"], "accuracy_std": final["accuracy_std"],
               "learned_lrs": result.lrs.tolist(), "seconds": time.perf_counter() - start}
        print(row, flush=True)
        self.points.append(row)
        self.path.write_text(json.dumps({"settings": self.settings, "machine": machine(),
                                         "points": self.points}, indent=2))
        return row


def plot(rows, x_key, path, title, label, extra=None):
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for series, name in [(rows, label)] + ([extra] if extra else []):
        xs = [r[x_key] if x_key != "images" else r["steps"] * r["ipc"] for r in series]
        ax.errorbar(xs, [100 * r["accuracy_mean"] for r in series],
                    yerr=[100 * r["accuracy_std"] for r in series], marker="o", capsize=3,
                    label=name)
    ax.set_xlabel({"steps": "GD steps", "epochs": "epochs", "images": "images per class (N)"}[x_key])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--decay-epochs", type=int, default=50)
    parser.add_argument("--nets", type=int, default=20)
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()
    data = datadistill.load_dataset(args.dataset, args.data_root)
    docs = Path(args.docs)
    start = time.perf_counter()
    sweep = Sweep(data, args, docs / "sweeps.json")
    fig4a = [sweep.point(s, 2, 1) for s in (1, 2, 4, 6, 8, 10)]
    fig4b = [sweep.point(10, e, 1) for e in (1, 2, 3, 4, 5)]
    many = [sweep.point(n, 1, 1) for n in (1, 2, 4, 6, 8, 10)]
    one = [sweep.point(1, 1, n) for n in (1, 2, 4, 6, 8, 10)]
    budget = f"{args.dataset}, {args.epochs} passes"
    plot(fig4a, "steps", docs / "fig4a_steps.png", f"Fig. 4a: 2 epochs ({budget})", "ours")
    plot(fig4b, "epochs", docs / "fig4b_epochs.png", f"Fig. 4b: 10 steps ({budget})", "ours")
    plot(many, "images", docs / "fig5_one_vs_many.png", f"Fig. 5: 1 epoch ({budget})",
         "N steps x 1 image/class", (one, "1 step x N images/class"))
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min (points distilled in this run)")


if __name__ == "__main__":
    main()
