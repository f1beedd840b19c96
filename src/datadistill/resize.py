"""Image sizes and resizing: what multi-formation (``--downscale``) does to tensors."""
from __future__ import annotations

import torch
from torch import Tensor


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Images (..., C, H, W) resized bilinearly to ``size`` (antialiased when shrinking);
    the images themselves when already that size. Differentiable."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    flat = images.reshape(-1, *images.shape[-3:])
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    resized = torch.nn.functional.interpolate(flat, size=tuple(size), mode="bilinear",
                                              align_corners=False, antialias=shrinking)
    return resized.reshape(*images.shape[:-2], *size)


def shrunk_size(image_shape: tuple[int, ...], factor: int) -> tuple[int, int]:
    """The side lengths of an image of ``image_shape`` (C, H, W) stored at 1/``factor``."""
    return image_shape[-2] // factor, image_shape[-1] // factor


def stored_count(count: int, factor: int) -> int:
    """Images stored in place of ``count`` full-size ones at 1/``factor`` of their side: the
    same pixels, ``factor`` x ``factor`` times as many."""
    return count * factor ** 2


def multi_formed(images: Tensor, factor: int) -> Tensor:
    """Images (..., C, H, W) stored at 1/``factor`` of their side and enlarged back: what
    a net trains on from a multi-formed set (IDC); unchanged for ``factor`` 1."""
    full = tuple(images.shape[-2:])
    return resize_images(resize_images(images, shrunk_size(images.shape, factor)), full)
