"""torch.compile (inductor, CPU) against the compiled C kernel on LeNet, in one run.

    .venv/bin/python benchmarks/bench_compile.py [--rounds 5] [--nets 25]

Two parts of the work the C kernel does. (1) The meta-gradient: the unrolled inner steps
and the backpropagation through them need a gradient of a gradient, which torch.compile's
AOT autograd does not take; the script tries and reports what it says. (2) The held-out
nets' test pass: ``--nets`` stacked LeNets on 10,000 MNIST-sized images, in chunks of 512,
by eager PyTorch, by ``torch.compile`` of the same function, and by the C kernel; the first
compiled call (compilation) is timed apart, then rounds interleave the three; medians. All
three must give the same logits.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.inner_loop import meta_gradient
from datadistill.kernels.lenet import lenet_logits_fn
from datadistill.models import build_model
from datadistill.state import new_steps

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402

CHUNK = 512


def meta_gradient_compiles(fmodel: FunctionalModel, params) -> str:
    """What torch.compile says of the unrolled meta-gradient (10 steps x 3 epochs)."""
    steps = new_steps(torch.randn(10, 10, 1, 28, 28), torch.arange(10).repeat(10, 1), 30,
                      0.02, 10)
    real_x, real_y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    try:
        torch.compile(meta_gradient)(fmodel, params, steps, real_x, real_y)
    except Exception as error:  # report whatever the compiler raises
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return "compiled"


def test_pass(logits_of, images: torch.Tensor) -> torch.Tensor:
    """Logits of every chunk of ``images``, concatenated (N, B, classes)."""
    with torch.no_grad():
        return torch.cat([logits_of(images[s:s + CHUNK]) for s in range(0, len(images), CHUNK)], 1)


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nets", type=int, default=25)
    args = parser.parse_args()
    module = build_model("lenet", (1, 28, 28), 10)
    fmodel = FunctionalModel(module, "pytorch")
    params = RandomInit(module).sample(args.nets, torch.Generator().manual_seed(0))
    images = torch.randn(10_000, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    print(machine())
    print("meta-gradient under torch.compile:",
          meta_gradient_compiles(fmodel, {k: v[:1] for k, v in params.items()}))

    def eager_logits(x):
        return fmodel.logits(params, x, train=False)

    compiled_logits = torch.compile(eager_logits)
    kernel_logits = lenet_logits_fn(module, params, images)
    if kernel_logits is None:
        raise SystemExit("the C kernel did not build here: nothing to compare against")
    first = seconds(lambda: test_pass(compiled_logits, images))
    reference = test_pass(eager_logits, images)
    for name, fn in (("torch.compile", compiled_logits), ("C kernel", kernel_logits)):
        torch.testing.assert_close(test_pass(fn, images), reference, atol=1e-3, rtol=1e-3,
                                   msg=lambda m: f"{name} differs from eager: {m}")
    times: dict[str, list[float]] = {"eager": [], "torch.compile": [], "C kernel": []}
    for _ in range(args.rounds):
        for name, fn in (("eager", eager_logits), ("torch.compile", compiled_logits),
                         ("C kernel", kernel_logits)):
            times[name].append(seconds(lambda: test_pass(fn, images)))
    print(f"test pass of {args.nets} LeNets on 10,000 images (median of {args.rounds}; "
          f"torch.compile's first call, compiling: {first:.1f} s):")
    eager = statistics.median(times["eager"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:14s} {median:.3f} s   x{eager / median:.2f} eager's speed")


if __name__ == "__main__":
    main()
