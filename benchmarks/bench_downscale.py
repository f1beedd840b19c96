"""The compiled LeNet against the engine's PyTorch path on a multi-formed flat set.

    .venv/bin/python benchmarks/bench_downscale.py [--rounds 3] [--json out.json]

Setting: the windowed case of ``bench_window.py`` with ``--downscale 2``: 40 images of
14 × 14 per class (400, learned labels), each enlarged to 28 × 28 in every inner step,
T = 200 steps on the whole set, a window of W = 60, 1,024 real images, one net. ``pytorch``
is the meta-gradient under ``--backend pytorch`` (where such sets ran before the kernel took them),
``compiled`` is ``"auto"`` (the kernel on the enlarged images, the gradient carried back
through the resize). Rounds interleave the two on the same window; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402
from bench_window import interleaved, make_case, ours  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    runs = {"pytorch": partial(ours, choice="pytorch"), "compiled": ours}
    times, medians = interleaved(runs, make_case(downscale=2), args.rounds)
    ratio = medians["pytorch"] / medians["compiled"]
    print(f"T=200 W=60, 400 images of 14x14 enlarged to 28x28, learned labels: pytorch "
          f"{medians['pytorch']:.3f} s, compiled {medians['compiled']:.3f} s per "
          f"meta-iteration: x{ratio:.2f}")
    print(machine(), time.strftime("%Y-%m-%d"))
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": times, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
