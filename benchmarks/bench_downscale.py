"""The compiled LeNet against the engine's PyTorch path on a multi-formed flat set.

    .venv/bin/python benchmarks/bench_downscale.py [--rounds 3] [--json out.json]

Setting: the windowed case of ``bench_window.py`` with ``--downscale 2``: 40 images of
14 × 14 per class (400, learned labels), each enlarged to 28 × 28 in every inner step,
T = 200 steps on the whole set, a window of W = 60, 1,024 real images, one net. ``pytorch``
is ``choose_meta_gradient("pytorch")`` (where such sets ran before the kernel took them),
``compiled`` is ``"auto"`` (the kernel on the enlarged images, the gradient carried back
through the resize). Rounds interleave the two on the same window; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402
from bench_window import fresh, make_case  # noqa: E402

from datadistill.backends import choose_meta_gradient  # noqa: E402
from datadistill.functional import FunctionalModel  # noqa: E402


def timed(choice: str, case, window: range) -> tuple[float, str]:
    """Seconds for one meta-iteration through the backend ``choice``, and its name."""
    module, steps, params, real_x, real_y = case
    steps = fresh(steps)
    start = time.perf_counter()
    backend = choose_meta_gradient(choice, FunctionalModel(module), params, steps, real_x)
    backend.run(params, steps, real_x, real_y, window)
    return time.perf_counter() - start, backend.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    case = make_case(downscale=2)
    gen = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {"pytorch": [], "auto": []}
    names = {}
    for _ in range(args.rounds):
        last = int(torch.randint(60, 201, (1,), generator=gen))
        for choice in times:
            seconds, names[choice] = timed(choice, case, range(last - 60, last))
            times[choice].append(seconds)
    medians = {choice: statistics.median(values) for choice, values in times.items()}
    ratio = medians["pytorch"] / medians["auto"]
    print(f"T=200 W=60, 400 images of 14x14 enlarged to 28x28, learned labels: "
          f"{names['pytorch']} {medians['pytorch']:.3f} s, {names['auto']} "
          f"{medians['auto']:.3f} s per meta-iteration: x{ratio:.2f}")
    print(machine(), time.strftime("%Y-%m-%d"))
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": times, "backends": names,
                                               "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
