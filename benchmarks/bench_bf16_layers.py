"""The converge evaluator's layers in float32 and under bfloat16 autocast, and its SGD update
in foreach and fused form, one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bf16_layers.py --rounds 5

Layers: ``convnet-w32``'s and ``convnet``'s inner convolutions (C to C channels, 3 x 3, at
16 x 16 and 8 x 8) and the one-channel image layer (28 x 28 padded by 3; float32 through
``ImageConv``, the evaluator's path, against ``F.conv2d`` under autocast). A training step
is the forward and the gradients of input, weight and bias (the image layer: weight and
bias); a test chunk is a forward without graph. The SGD update is the recipe's (momentum
0.9, weight decay 5e-4) over ``convnet-w32``'s 14 parameter tensors. Variants run
interleaved; each figure is the fastest round's mean time per call.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from datadistill.kernels.normpool import ImageConv
from datadistill.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_image_conv import fastest, per_call, start  # noqa: E402

INNER = [(32, 16), (32, 8), (128, 16), (128, 8)]  # channels, side
CASES = [("train", 10), ("train", 64), ("test", 64)]


def step(layer: nn.Module, x: torch.Tensor, mode: str, bfloat16: bool) -> Callable[[], object]:
    """One training step or test chunk of ``layer`` on ``x``, under autocast if asked."""
    precision = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bfloat16
                 else contextlib.nullcontext)
    wanted = [t for t in (x, layer.weight, layer.bias) if t.requires_grad]

    def run() -> object:
        if mode == "test":
            with torch.no_grad(), precision():
                return layer(x)
        with precision():
            out = layer(x)
        return torch.autograd.grad(out, wanted, torch.ones_like(out))
    return run


def sgd_update(kind: str) -> Callable[[], object]:
    """One SGD step of the recipe over ``convnet-w32``'s parameters with fixed gradients."""
    leaves = [p.detach().clone().requires_grad_()
              for p in build_model("convnet-w32", (1, 28, 28), 10).parameters()]
    for leaf in leaves:
        leaf.grad = torch.randn_like(leaf)
    sgd = torch.optim.SGD(leaves, lr=0.01, momentum=0.9, weight_decay=5e-4, **{kind: True})
    return sgd.step


def main() -> None:
    rounds = start(__doc__.splitlines()[0])
    print(f"{'layer':28s} {'case':10s} {'float32 (ms)':>13s} {'bfloat16 (ms)':>14s} "
          f"{'speed-up':>9s}")
    layers = [(f"{c}->{c}, {side}x{side}", nn.Conv2d(c, c, 3, padding=1), c, side)
              for c, side in INNER]
    image = nn.Conv2d(1, 32, 3, padding=3)
    layers.append(("image 1->32, 28x28 pad 3", image, 1, 28))
    for name, conv, channels, side in layers:
        float32_layer = ImageConv(conv) if channels == 1 else conv
        for mode, batch in CASES:
            x = torch.randn(batch, channels, side, side, requires_grad=channels > 1)
            best = fastest([per_call(step(float32_layer, x, mode, False)),
                            per_call(step(conv, x, mode, True))], rounds)
            print(f"{name:28s} {mode + ' ' + str(batch):10s} {1e3 * best[0]:13.3f} "
                  f"{1e3 * best[1]:14.3f} {best[0] / best[1]:8.2f}x", flush=True)
    best = fastest([per_call(sgd_update("foreach")), per_call(sgd_update("fused"))], rounds)
    print(f"SGD update, convnet-w32: foreach {1e3 * best[0]:.3f} ms, fused {1e3 * best[1]:.3f} "
          f"ms ({best[0] / best[1]:.2f}x)")


if __name__ == "__main__":
    main()
