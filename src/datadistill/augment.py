"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021) with torch ops.

As in DSA's single mode, each call draws one operation for a batch (colour, crop, cutout,
flip, scale or rotate) and every image its own parameters, or (``siamese``) one set of
parameters for the whole batch, so that two batches augmented from the same seed (a class's
real and synthetic images, as the matching methods compare them) get the same transform;
``colour`` is brightness, then saturation, then contrast. The published ranges are the defaults. Images are in the
dataset's normalised space; pixels moved in from outside the image are 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import DIGIT_NAMES
from .errors import DistillError

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSA:
    """DSA's operations and ranges; ``__call__`` augments stacked batches (N, B, C, H, W)."""

    ops: tuple[str, ...] = DSA_OPS
    scale: float = 1.2  # zoom factor in [1/scale, scale], each axis
    rotate: float = 15.0  # degrees, either way
    crop: float = 0.125  # shift of up to this fraction of the side, zero-filled
    cutout: float = 0.5  # side of the zeroed square, as a fraction of the image side
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in DSA_OPS]
        if unknown or not self.ops:
            raise DistillError(f"unknown DSA operation {', '.join(unknown) or '(none given)'}; "
                               f"choose from {','.join(DSA_OPS)}")

    def __call__(self, images: Tensor, generator: torch.Generator,
                 siamese: bool = False) -> Tensor:
        """Each of the N batches gets one operation drawn from ``ops``; each image its own
        parameters, or with ``siamese`` each batch one set (the draws come from
        ``generator``, on the CPU)."""
        picks = torch.randint(len(self.ops), (images.shape[0],), generator=generator)
        share = images.shape[1] if siamese else 1  # images that share one draw
        out = images.clone()
        for k in picks.unique().tolist():
            rows = (picks == k).nonzero().squeeze(1).to(images.device)
            batch = images[rows]
            done = self._op(self.ops[k])(batch.flatten(0, 1), _Draws(generator, share))
            out[rows] = done.view_as(batch)
        return out

    def _op(self, name: str) -> Callable[[Tensor, "_Draws"], Tensor]:
        return getattr(self, f"_{name}")

    def _color(self, x: Tensor, g: "_Draws") -> Tensor:
        x = x + (_rand(x, g) - 0.5) * self.brightness
        mean = x.mean(1, keepdim=True)
        x = (x - mean) * (_rand(x, g) * self.saturation) + mean
        mean = x.mean((1, 2, 3), keepdim=True)
        return (x - mean) * (_rand(x, g) + self.contrast) + mean

    def _flip(self, x: Tensor, g: "_Draws") -> Tensor:
        return torch.where(_rand(x, g) < 0.5, x.flip(3), x)

    def _crop(self, x: Tensor, g: "_Draws") -> Tensor:
        """Integer shifts of up to ``crop`` x side in each direction, zero-filled."""
        size = x.shape[-1]
        shift = int(size * self.crop + 0.5)
        moves = g.randint(-shift, shift + 1, (x.shape[0], 2)).to(x)
        theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, :, 2] = moves * 2 / (size - 1)  # exact pixel shifts with align_corners
        return _warp(x, theta)

    def _cutout(self, x: Tensor, g: "_Draws") -> Tensor:
        """A square of side ``cutout`` x side set to 0, centred anywhere in the image."""
        n, _, height, width = x.shape
        rows = _span(height, int(height * self.cutout + 0.5), n, g).to(x.device)
        cols = _span(width, int(width * self.cutout + 0.5), n, g).to(x.device)
        box = rows[:, :, None] & cols[:, None, :]  # (n, H, W)
        return x * (~box).unsqueeze(1).to(x.dtype)

    def _scale(self, x: Tensor, g: "_Draws") -> Tensor:
        low = 1 / self.scale
        factors = g.rand((x.shape[0], 2)).to(x) * (self.scale - low) + low
        theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1] = factors[:, 0], factors[:, 1]
        return _warp(x, theta)

    def _rotate(self, x: Tensor, g: "_Draws") -> Tensor:
        angle = (g.rand((x.shape[0],)).to(x) - 0.5) * 2 * math.radians(self.rotate)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos, sin, torch.zeros_like(cos)], 1),
                             torch.stack([-sin, cos, torch.zeros_like(cos)], 1)], 1)
        return _warp(x, theta)


@dataclass(frozen=True)
class _Draws:
    """Random draws for a flattened batch whose images share a draw ``share`` at a time (1:
    every image its own); every shape's first dimension counts images."""

    generator: torch.Generator
    share: int = 1

    def rand(self, shape: tuple[int, ...]) -> Tensor:
        return self._spread(torch.rand(self._fewer(shape), generator=self.generator))

    def randint(self, low: int, high: int, shape: tuple[int, ...]) -> Tensor:
        return self._spread(torch.randint(low, high, self._fewer(shape), generator=self.generator))

    def _fewer(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0] // self.share, *shape[1:])

    def _spread(self, values: Tensor) -> Tensor:
        return values.repeat_interleave(self.share, 0)


def _rand(x: Tensor, g: _Draws) -> Tensor:
    """One uniform draw per image, shaped to broadcast over (C, H, W)."""
    return g.rand((x.shape[0], 1, 1, 1)).to(x)


def _span(extent: int, cut: int, n: int, g: _Draws) -> Tensor:
    """(n, extent) masks of ``cut`` consecutive indices around a random centre (clipped)."""
    centre = g.randint(0, extent + 1 - cut % 2, (n, 1))
    index = torch.arange(extent)
    return (index >= centre - cut // 2) & (index < centre - cut // 2 + cut)


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def dsa_for(class_names: tuple[str, ...], ops: str = "") -> DSA:
    """DSA with ``ops`` (comma-separated), or all of them but flips for digits (a flipped
    digit is another digit or none)."""
    if ops:
        return DSA(tuple(op.strip() for op in ops.split(",")))
    digits = tuple(class_names) == DIGIT_NAMES
    return DSA(tuple(op for op in DSA_OPS if not (digits and op == "flip")))
