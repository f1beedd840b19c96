"""ConvNet's instance norm -> ReLU -> 2x2 average pool as one compiled CPU op (``normpool.c``).

``fused_convnet(module)`` gives a copy of a ConvNet whose blocks run that tail through the
kernel, forward and backward, and whose image layer (a convolution of one channel) runs
PyTorch's im2col-GEMM convolution, with the same parameter names, so
``functional_call`` and the converge evaluator use it as they would the module. It serves
plain training and testing (no gradient of the gradient) of one net at a time, float32 on
the CPU; other tensors run the block's PyTorch ops, and stacked nets (vmap) are not supported.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..convnets import ConvNet
from . import FLOAT, INT, INT64, POINTER, call, float32_on_cpu, load

_SIGNATURES = {
    "normpool_forward": [POINTER, INT64, INT, INT, INT, POINTER, POINTER, FLOAT, POINTER, POINTER,
                         POINTER, INT],
    "normpool_backward": [POINTER, POINTER, INT64, INT, INT, INT, *[POINTER] * 7, INT],
}


def _call(name: str, *args: Tensor | int | float) -> None:
    """Call a normpool kernel function (``kernels.call``)."""
    call("normpool", name, _SIGNATURES[name], *args)


class _NormReluPool(torch.autograd.Function):
    """relu(group_norm(x, C, weight, bias, eps)) average-pooled 2x2, on (B, C, H, W) float32."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        x = x.contiguous()
        batch, channels, h, w = x.shape
        weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
        z = x.new_empty(batch, channels, h // 2, w // 2)
        mean, rstd = x.new_empty(batch * channels), x.new_empty(batch * channels)
        _call("normpool_forward", x, batch * channels, channels, h, w, weight, bias, eps, z,
              mean, rstd)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dz: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, None]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        batch, channels, h, w = x.shape
        dx = torch.empty_like(x)
        dweight, dbias = x.new_empty(batch, channels), x.new_empty(batch, channels)
        _call("normpool_backward", dz.to(torch.float32).contiguous(), x, batch * channels,
              channels, h, w, weight, bias, mean, rstd, dx, dweight, dbias)
        _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        return (dx, dweight.sum(0) if needs_weight else None, dbias.sum(0) if needs_bias else None,
                None)


class NormReluPool(nn.Module):
    """``GroupNorm(C, C)`` (instance norm, affine), ReLU and ``AvgPool2d(2)`` in one op; its
    parameters are the norm's (``weight``, ``bias``). float32 on the CPU runs the kernel (a
    bfloat16 input under autocast as its float32 copy), any other tensor the three PyTorch
    ops."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != self.weight.dtype and torch.is_autocast_enabled(x.device.type):
            x = x.to(self.weight.dtype)  # autocast's bfloat16 convolution: the norm in float32
        if self._kernel_runs(x):
            return _NormReluPool.apply(x, self.weight, self.bias, self.eps)
        normed = F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        return F.avg_pool2d(normed.relu(), 2)

    def _kernel_runs(self, x: Tensor) -> bool:
        """float32 maps of at least 2 x 2 on the CPU, parameters alike, the kernel built."""
        return (x.dim() == 4 and min(x.shape[2:]) >= 2
                and float32_on_cpu(x, self.weight, self.bias)
                and load("normpool") is not None)


class ImageConv(nn.Module):
    """A convolution of one input channel (an image layer) through PyTorch's im2col-GEMM
    convolution (``thnn_conv2d``) for float32 on the CPU, where oneDNN's is slow for that
    shape (benchmarks/bench_image_conv.py). Its parameters are the convolution's
    (``weight``, ``bias``); any other input (or a channels-last one) runs ``F.conv2d``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding

    def forward(self, x: Tensor) -> Tensor:
        # its backward refuses channels-last inputs ("grad_weight must be contiguous")
        if float32_on_cpu(x, self.weight) and x.is_contiguous():
            return torch._C._nn.thnn_conv2d(x, self.weight, self.kernel_size, self.bias,
                                            self.stride, self.padding)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def _image_conv(layer: nn.Module) -> bool:
    """Whether ``layer`` is a plain convolution of one input channel (for three the GEMM
    path was faster for some shapes and slower for others)."""
    return (type(layer) is nn.Conv2d and layer.in_channels == 1 and layer.groups == 1
            and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
            and isinstance(layer.padding, tuple))


def _fusable(layers: list[nn.Module]) -> bool:
    """Whether four layers are the tail the kernel fuses: conv, instance norm, ReLU, 2x2
    average pool."""
    conv, norm, act, pool = layers
    return (isinstance(conv, nn.Conv2d) and type(norm) is nn.GroupNorm and norm.affine
            and norm.num_groups == norm.num_channels and type(act) is nn.ReLU
            and type(pool) is nn.AvgPool2d and pool.kernel_size in (2, (2, 2))
            and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0)) and not pool.ceil_mode
            and pool.divisor_override is None)


def fused_convnet(module: nn.Module) -> nn.Module | None:
    """A copy of ``module`` with every fusable block tail as one ``NormReluPool`` and its image
    layer as an ``ImageConv`` (same parameter names), or None: not a ConvNet, nothing to
    fuse, or no C compiler."""
    if type(module) is not ConvNet:
        return None
    layers = list(module.features)
    starts = [i for i in range(len(layers) - 3) if _fusable(layers[i:i + 4])]
    if not starts or load("normpool") is None:
        return None
    fused = copy.deepcopy(module)
    if _image_conv(fused.features[0]):
        fused.features[0] = ImageConv(fused.features[0])
    for i in starts:
        fused.features[i + 1] = NormReluPool(fused.features[i + 1])
        fused.features[i + 2] = fused.features[i + 3] = nn.Identity()
    return fused
