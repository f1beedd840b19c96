"""LeNet on the CPU through the compiled kernel ``lenet.c``.

Two users: evaluation's test pass (``lenet_logits_fn``: the conv blocks compiled, the dense
layers as batched matrix multiplies) and the meta-gradient (``lenet_meta_gradient_fn``: the
unrolled GD steps, the outer gradient and the back-gradient reverse pass, each step one call
that runs the whole net and, for the reverse pass, Pearlmutter's R-operator for the
Hessian-vector products).
Both return None where the kernel does not apply, and callers then use plain PyTorch.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import Params
from ..models import LeNet
from . import load

if TYPE_CHECKING:
    from ..inner_loop import DistilledSteps

LANES, SIDE, FEATURES, MAX_CHANNELS, MAX_CLASSES = 8, 32, 16 * 5 * 5, 4, 128
DENSE = tuple((f"classifier.{i}.weight", f"classifier.{i}.bias") for i in (1, 3, 5))

_P, _I64, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "lenet_features": [_P, _I64, _INT, _P, _I64, _I64, _P, _INT],
    "lenet_step": [_P, _P, _INT, _INT, _I64, _I64, _I64, _P, _P, _I64, _FLOAT, *[_P] * 5, _INT],
}


def _call(name: str, *args: Tensor | int | float | None) -> None:
    """Call a kernel: tensors go as pointers, None as NULL; the thread count comes last."""
    function = getattr(load("lenet"), name)
    function.argtypes, function.restype = _SIGNATURES[name], None
    function(*(a.data_ptr() if isinstance(a, Tensor) else a for a in args), torch.get_num_threads())


def _padding(module: nn.Module, params: Params, images: Tensor) -> int | None:
    """The first conv's padding where the kernel applies to this module and data, else None."""
    if type(module) is not LeNet or load("lenet") is None:
        return None
    pad = module.features[0].padding[0]
    if (images.shape[-1] + 2 * pad != SIDE or images.shape[1] > MAX_CHANNELS
            or params[DENSE[-1][1]].shape[1] > MAX_CLASSES
            or any(t.device.type != "cpu" or t.dtype != torch.float32
                   for t in (images, *params.values()))):
        return None
    return pad


def _flatten(params: Params) -> Tensor:
    """Each net's parameters as one row of an (N, P) tensor, in ``named_parameters()`` order
    (the kernel finds each layer at its offset in the row)."""
    return torch.cat([v.reshape(v.shape[0], -1) for v in params.values()], 1)


def lenet_logits_fn(module: nn.Module, params: Params,
                    images: Tensor) -> Callable[[Tensor], Tensor] | None:
    """``x -> logits (N, B, classes)`` of the N stacked LeNets in ``params``, or None where the
    compiled kernel does not apply (another module, not float32 on the CPU, no C compiler)."""
    pad = _padding(module, params, images)
    if pad is None:
        return None
    theta = _flatten(params)
    nets = theta.shape[0]

    def logits(x: Tensor) -> Tensor:
        x = F.pad(x, (pad,) * 4).contiguous()
        features = x.new_empty(nets, x.shape[0], FEATURES)
        _call("lenet_features", x, x.shape[0], x.shape[1], theta, theta.shape[1], nets, features)
        for i, (weight, bias) in enumerate(DENSE):
            features = torch.baddbmm(params[bias].unsqueeze(1), features, params[weight].mT)
            if i < len(DENSE) - 1:
                features = features.relu_()
        return features

    return logits


@dataclass
class _Batch:
    """Images 8 to a vector (blocks, C, 32, 32, 8) and their labels (-1 past the last image)."""

    x: Tensor
    labels: Tensor
    size: int

    @staticmethod
    def of(images: Tensor, labels: Tensor, pad: int) -> "_Batch":
        blocks = -(-images.shape[0] // LANES)
        extra = blocks * LANES - images.shape[0]
        x = F.pad(images, (pad,) * 4 + (0, 0, 0, extra))
        x = x.view(blocks, LANES, *x.shape[1:]).permute(0, 2, 3, 4, 1).contiguous()
        return _Batch(x, F.pad(labels.to(torch.int32), (0, extra), value=-1), images.shape[0])


def _run(theta: Tensor, batch: _Batch, classes: int, scale: float, u: Tensor | None
         ) -> tuple[Tensor, ...]:
    """One ``lenet_step`` call: without u, the summed loss per net (N,) and ``scale`` × its
    gradient (N, P); with a direction u (N, P), the slope <u, gradient> (N,), H u (N, P) and
    R{∇_x} (the input gradient's derivative along u, (B, C, 32, 32), summed over nets)."""
    nets, blocks, channels = theta.shape[0], batch.x.shape[0], batch.x.shape[1]
    parts = min(blocks, max(1, torch.get_num_threads() // nets))  # every thread busy
    losses = theta.new_empty(nets, parts)
    per_part = theta.new_empty(nets, parts, theta.shape[1])
    second = u is not None
    slopes = theta.new_empty(nets, parts) if second else None
    r_dx = theta.new_empty(nets, *batch.x.shape) if second else None
    _call("lenet_step", batch.x, batch.labels, channels, classes, blocks, nets, parts, theta, u,
          theta.shape[1], scale, losses, None if second else per_part,
          per_part if second else None, r_dx, slopes)
    if not second:
        return losses.sum(1), per_part.sum(1)
    r_dx = r_dx.sum(0).permute(0, 4, 1, 2, 3).flatten(0, 1)[:batch.size]
    return slopes.sum(1), per_part.sum(1), r_dx


def lenet_train_fn(module: nn.Module, params: Params, images: Tensor
                   ) -> Callable[[Params, Sequence[tuple[Tensor, Tensor, float | Tensor]]], Params] | None:
    """``(params, steps) -> params``: plain GD of the N stacked LeNets on the steps (images,
    labels, lr) through the kernel, as ``evaluate.train_nets``; None where it does not apply."""
    pad = _padding(module, params, images)
    if pad is None:
        return None

    def train(params: Params, steps: Sequence[tuple[Tensor, Tensor, float | Tensor]]) -> Params:
        classes = params[DENSE[-1][1]].shape[1]
        with torch.no_grad():
            theta = _flatten(params)
            for x, y, lr in steps:
                grad = _run(theta, _Batch.of(x, y, pad), classes, 1.0 / y.shape[0], None)[1]
                theta = theta.add(grad, alpha=-float(lr))
        sizes = [v[0].numel() for v in params.values()]
        return {k: part.reshape(v.shape) for (k, v), part in zip(params.items(), theta.split(sizes, 1))}

    return train


def lenet_meta_gradient_fn(module: nn.Module, params: Params, images: Tensor):
    """The meta-gradient of ``inner_loop.meta_gradient`` through the kernel, or None where it
    does not apply. Call it as ``fn(params, steps, real_images, real_labels, keep_every)
    -> losses (N,)``; it accumulates ``.grad`` of the images and raw lrs."""
    pad = _padding(module, params, images)
    if pad is None:
        return None

    def meta_gradient(params: Params, steps: DistilledSteps, real_images: Tensor,
                      real_labels: Tensor, keep_every: int) -> Tensor:
        with torch.no_grad():
            return _meta_gradient(pad, params, steps, real_images, real_labels, keep_every)

    return meta_gradient


def _meta_gradient(pad: int, params: Params, steps: DistilledSteps, real_images: Tensor,
                   real_labels: Tensor, keep_every: int) -> Tensor:
    classes = params[DENSE[-1][1]].shape[1]
    batches = [_Batch.of(x.detach(), y, pad) for x, y in zip(steps.images, steps.labels)]
    per_step = 1.0 / steps.labels.shape[1]  # each net's loss is the mean over its batch
    raw_lrs = steps.raw_lrs.detach()
    lrs = F.softplus(raw_lrs).tolist()

    def step(theta: Tensor, t: int) -> Tensor:
        grad = _run(theta, batches[t % len(batches)], classes, per_step, None)[1]
        return theta.add(grad, alpha=-lrs[t])

    theta = _flatten({k: v.detach() for k, v in params.items()})
    kept: dict[int, Tensor] = {}
    for t in range(steps.num_steps):
        if t % keep_every == 0:
            kept[t] = theta
        theta = step(theta, t)

    nets, total = theta.shape[0], real_images.shape[0]
    losses, g = _run(theta, _Batch.of(real_images, real_labels, pad), classes,
                     1.0 / (total * nets), None)  # g: gradient of the mean over nets

    image_grad = torch.zeros_like(steps.images)
    lr_grad = torch.zeros_like(raw_lrs)
    sigmoid = torch.sigmoid(raw_lrs)
    segment: dict[int, Tensor] = {}
    for t in reversed(range(steps.num_steps)):
        if t not in segment:  # recompute the weights of this segment from its kept start
            start = t - t % keep_every
            segment = {start: kept[start]}
            for u in range(start, t):
                segment[u + 1] = step(segment[u], u)
        s = t % len(batches)
        slopes, hvp, r_dx = _run(segment.pop(t), batches[s], classes, per_step, g)
        lr_grad[t] = -slopes.sum() * sigmoid[t]  # dL/dlr_t = -<g, ∇ℓ_t>
        image_grad[s] -= lrs[t] * r_dx[:, :, pad:SIDE - pad, pad:SIDE - pad]
        g = g.add(hvp, alpha=-lrs[t])

    for leaf, grad in ((steps.images, image_grad), (steps.raw_lrs, lr_grad)):
        leaf.grad = grad if leaf.grad is None else leaf.grad + grad
    return losses / total
