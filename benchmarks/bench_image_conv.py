"""The image layer of a ConvNet: oneDNN's convolution (``F.conv2d``) against PyTorch's
im2col-GEMM one (``ImageConv``: ``thnn_conv2d``), one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_image_conv.py --rounds 5

The shapes are the converge evaluator's first layer: 1 channel (MNIST, 28 x 28 padded by 3, as
DC's ConvNet does) or 3 (32 x 32 padded by 1), to 32 or 128 channels; a training step on 10
or 64 images (forward, then the weight and bias gradients: the images need none) and a test
chunk of 64 images (forward, no graph). The two run interleaved; each figure is the fastest
round's mean time per call.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from datadistill.kernels.normpool import ImageConv

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402

SHAPES = [(1, 28, 3), (3, 32, 1)]  # input channels, side, padding
WIDTHS = [32, 128]
CASES = [("train", 10), ("train", 64), ("test", 64)]


def per_call(run: Callable[[], object], seconds: float = 0.2) -> Callable[[], float]:
    """A timer of ``run``: mean seconds per call over about ``seconds``."""
    start = time.perf_counter()
    run()
    calls = max(3, int(seconds / max(time.perf_counter() - start, 1e-6)))

    def timed() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        return (time.perf_counter() - start) / calls
    return timed


def fastest(timers: list[Callable[[], float]], rounds: int) -> list[float]:
    """Each timer's fastest of ``rounds`` interleaved rounds."""
    measured = [[timer() for timer in timers] for _ in range(rounds)]
    return [min(column) for column in zip(*measured)]


def start(description: str) -> int:
    """Parse ``--rounds``, seed torch, print the machine line; the number of rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    torch.manual_seed(0)
    print(f"# {machine()}; {rounds} interleaved rounds, fastest round per variant")
    return rounds


def step(layer: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    if mode == "test":
        def test() -> object:
            with torch.no_grad():
                return layer(x)
        return test

    def train() -> object:
        out = layer(x)
        return torch.autograd.grad(out, (layer.weight, layer.bias), torch.ones_like(out))
    return train


def main() -> None:
    rounds = start(__doc__.splitlines()[0])
    print(f"{'layer':24s} {'case':12s} {'oneDNN (ms)':>12s} {'im2col-GEMM (ms)':>17s} "
          f"{'ratio':>7s}")
    for channels, side, padding in SHAPES:
        for width in WIDTHS:
            conv = nn.Conv2d(channels, width, 3, padding=padding)
            gemm = ImageConv(conv)
            for mode, batch in CASES:
                x = torch.randn(batch, channels, side, side)
                best = fastest([per_call(step(conv, x, mode)), per_call(step(gemm, x, mode))],
                               rounds)
                print(f"{channels}->{width}, {side}x{side} pad {padding:<4d} "
                      f"{mode + ' ' + str(batch):12s} {1e3 * best[0]:12.3f} "
                      f"{1e3 * best[1]:17.3f} {best[0] / best[1]:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
