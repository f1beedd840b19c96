"""LeNet on the CPU through the compiled conv blocks (``lenet.c``); dense layers in PyTorch.

Two users: evaluation's test pass (``lenet_logits_fn``: logits of N nets on shared images) and
the meta-gradient (``lenet_meta_gradient_fn``: the unrolled GD steps, the outer gradient and
the back-gradient reverse pass, with Hessian-vector products by Pearlmutter's R-operator).
Both return None where the kernel does not apply, and callers then use plain PyTorch.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import Params
from ..models import LeNet
from . import load

if TYPE_CHECKING:
    from ..inner_loop import DistilledSteps

LANES, SIDE, FEATURES, MAX_CHANNELS = 8, 32, 16 * 5 * 5, 4
CONV = ("features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias")
DENSE = tuple((f"classifier.{i}.weight", f"classifier.{i}.bias") for i in (1, 3, 5))

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "lenet_features": [_P, _I64, _INT, _P, _I64, _I64, _P, _INT],
    "lenet_forward": [_P, _INT, _I64, _I64, _P, _I64, *[_P] * 4, _INT],
    "lenet_rforward": [_P, _INT, _I64, _I64, _P, _P, _I64, *[_P] * 6, _INT],
    "lenet_backward": [_P, _INT, _I64, _I64, _P, _P, _I64, *[_P] * 10, _INT],
}


def _call(name: str, *args: Tensor | int | None) -> None:
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
            or any(t.device.type != "cpu" or t.dtype != torch.float32
                   for t in (images, *params.values()))):
        return None
    return pad


class _Flat:
    """Each net's parameters as one row of an (N, P) tensor, in ``named_parameters()`` order
    (the kernel reads the conv weights from the start of each row)."""

    def __init__(self, params: Params) -> None:
        self.shapes = {k: v.shape[1:] for k, v in params.items()}
        sizes = [v[0].numel() for v in params.values()]
        self.offsets = dict(zip(params, [sum(sizes[:i]) for i in range(len(sizes))]))
        self.sizes = dict(zip(params, sizes))
        self.conv_size = sum(self.sizes[k] for k in CONV)

    def flatten(self, params: Params) -> Tensor:
        return torch.cat([v.reshape(v.shape[0], -1) for v in params.values()], 1)

    def views(self, flat: Tensor) -> Params:
        return {k: flat[:, o:o + self.sizes[k]].view(-1, *self.shapes[k])
                for k, o in self.offsets.items()}


def lenet_logits_fn(module: nn.Module, params: Params,
                    images: Tensor) -> Callable[[Tensor], Tensor] | None:
    """``x -> logits (N, B, classes)`` of the N stacked LeNets in ``params``, or None where the
    compiled kernel does not apply (another module, not float32 on the CPU, no C compiler)."""
    pad = _padding(module, params, images)
    if pad is None:
        return None
    theta = _Flat(params).flatten(params)
    nets = theta.shape[0]

    def logits(x: Tensor) -> Tensor:
        x = F.pad(x, (pad,) * 4).contiguous()
        features = x.new_empty(nets, x.shape[0], FEATURES)
        _call("lenet_features", x, x.shape[0], x.shape[1], theta, theta.shape[1], nets, features)
        return _dense_forward(params, features)[-1]

    return logits


def _dense_forward(params: Params, features: Tensor) -> list[Tensor]:
    """The inputs of the three dense layers, then the logits (N, B, classes)."""
    outputs = [features]
    for i, (weight, bias) in enumerate(DENSE):
        z = torch.baddbmm(params[bias].unsqueeze(1), outputs[-1], params[weight].mT)
        outputs.append(z.relu_() if i < len(DENSE) - 1 else z)
    return outputs


def _to_lanes(images: Tensor, pad: int) -> Tensor:
    """(B, C, H, W) -> (blocks, C, 32, 32, 8): padded, 8 images per vector (zeros fill the last)."""
    blocks = -(-images.shape[0] // LANES)
    x = F.pad(images, (pad,) * 4 + (0, 0, 0, blocks * LANES - images.shape[0]))
    return x.view(blocks, LANES, *x.shape[1:]).permute(0, 2, 3, 4, 1).contiguous()


def _from_lanes(h: Tensor, batch: int) -> Tensor:
    """(N, blocks, F, 8) -> (N, B, F)."""
    return h.transpose(2, 3).reshape(h.shape[0], -1, h.shape[2])[:, :batch]


def _lanes_of(d: Tensor, blocks: int) -> Tensor:
    """(N, B, F) -> (N, blocks, F, 8), zeros for the lanes past B."""
    d = F.pad(d, (0, 0, 0, blocks * LANES - d.shape[1]))
    return d.view(d.shape[0], blocks, LANES, -1).transpose(2, 3).contiguous()


@dataclass
class _Forward:
    """One forward pass of N nets on a batch: what the gradient and R passes reuse."""

    theta: Tensor  # (N, P)
    params: Params  # views of theta
    x: Tensor  # (blocks, C, 32, 32, 8)
    batch: int
    maps: list[Tensor]  # h1, idx1, h2, idx2 of the conv blocks, image-last
    dense: list[Tensor]  # the dense layers' inputs, then the logits


def _forward(flat: _Flat, theta: Tensor, x: Tensor, batch: int) -> _Forward:
    nets, blocks = theta.shape[0], x.shape[0]
    h1 = x.new_empty(nets, blocks, 6 * 14 * 14, LANES)
    h2 = x.new_empty(nets, blocks, FEATURES, LANES)
    idx1, idx2 = torch.empty_like(h1, dtype=torch.int32), torch.empty_like(h2, dtype=torch.int32)
    _call("lenet_forward", x, x.shape[1], blocks, nets, theta, theta.shape[1], h1, idx1, h2, idx2)
    params = flat.views(theta)
    return _Forward(theta, params, x, batch, [h1, idx1, h2, idx2],
                    _dense_forward(params, _from_lanes(h2, batch)))


def _gradients(flat: _Flat, fwd: _Forward, d: Tensor, u: Tensor | None = None,
               rd: Tensor | None = None, r_dense: list[Tensor] | None = None,
               r_h1: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The loss gradient (N, P) from its gradient ``d`` at the logits; with a direction u (N, P)
    and the R-forward's outputs, also R{gradient} = H u and R{input gradient}."""
    second = u is not None
    u_params = flat.views(u) if second else None
    parts: list[Tensor] = []
    r_parts: list[Tensor] = []
    for i in reversed(range(len(DENSE))):
        weight, _ = DENSE[i]
        inputs, w = fwd.dense[i], fwd.params[weight]
        parts[:0] = [torch.bmm(d.mT, inputs).flatten(1), d.sum(1)]
        if second:
            r_parts[:0] = [(torch.bmm(rd.mT, inputs) + torch.bmm(d.mT, r_dense[i])).flatten(1),
                           rd.sum(1)]
            rd = torch.bmm(rd, w) + torch.bmm(d, u_params[weight])
        d = torch.bmm(d, w)
        if i > 0:  # through the ReLU that made this layer's input
            d = _relu_backward(d, inputs)
            rd = _relu_backward(rd, inputs) if second else None
    nets, blocks, channels = d.shape[0], fwd.x.shape[0], fwd.x.shape[1]
    conv = d.new_empty(nets, blocks, flat.conv_size)
    r_conv = torch.empty_like(conv) if second else None
    r_dx = d.new_empty(nets, blocks, *fwd.x.shape[1:]) if second else None
    _call("lenet_backward", fwd.x, channels, blocks, nets, fwd.theta, u, fwd.theta.shape[1],
          *fwd.maps, _lanes_of(d, blocks), conv, r_h1,
          _lanes_of(rd, blocks) if second else None, r_conv, r_dx)
    grad = torch.cat([conv.sum(1), *parts], 1)
    if not second:
        return grad, None, None
    return grad, torch.cat([r_conv.sum(1), *r_parts], 1), r_dx


def _relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """``grad`` where the ReLU's output is positive, else 0 (as autograd's ReLU backward)."""
    return torch.ops.aten.threshold_backward(grad, output, 0.0)


def _loss_gradient(logits: Tensor, labels: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy per net (N,) and ``scale`` × its gradient at the logits."""
    log_p = logits.log_softmax(-1)
    one_hot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    losses = -(log_p * one_hot).sum((1, 2))
    return losses, (log_p.exp_() - one_hot).mul_(scale)


def _step_gradients(flat: _Flat, theta: Tensor, x: Tensor, one_hot: Tensor, u: Tensor | None = None
                    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """∇ℓ of each net's mean loss on one distilled batch (labels as ``one_hot``, (n, classes));
    with a direction u, also H u and R{∇_x ℓ}."""
    batch = one_hot.shape[0]
    fwd = _forward(flat, theta, x, batch)
    logits = fwd.dense[-1]
    d = (logits.softmax(-1) - one_hot).mul_(1.0 / batch)
    if u is None:
        return _gradients(flat, fwd, d)
    r_h1, r_h2 = torch.empty_like(fwd.maps[0]), torch.empty_like(fwd.maps[2])
    _call("lenet_rforward", x, x.shape[1], x.shape[0], theta.shape[0], theta, u, theta.shape[1],
          *fwd.maps, r_h1, r_h2)
    u_params = flat.views(u)
    r = _from_lanes(r_h2, fwd.batch)
    r_dense = [r]
    for i, (weight, bias) in enumerate(DENSE):
        r = torch.baddbmm(torch.baddbmm(u_params[bias].unsqueeze(1), r, fwd.params[weight].mT),
                          fwd.dense[i], u_params[weight].mT)
        if i < len(DENSE) - 1:
            r = _relu_backward(r, fwd.dense[i + 1])
        r_dense.append(r)
    p = logits.softmax(-1)
    r_d = (p * r - p * (p * r).sum(-1, keepdim=True)) / batch
    return _gradients(flat, fwd, d, u, r_d, r_dense, r_h1)


def lenet_meta_gradient_fn(module: nn.Module, params: Params, images: Tensor):
    """The meta-gradient of ``inner_loop.meta_gradient`` through the kernel, or None where it
    does not apply. Call it as ``fn(params, steps, real_images, real_labels, keep_every,
    chunk_size) -> losses (N,)``; it accumulates ``.grad`` of the images and raw lrs."""
    pad = _padding(module, params, images)
    if pad is None:
        return None

    def meta_gradient(params: Params, steps: DistilledSteps, real_images: Tensor,
                      real_labels: Tensor, keep_every: int, chunk_size: int) -> Tensor:
        with torch.no_grad():
            return _meta_gradient(pad, params, steps, real_images, real_labels, keep_every,
                                  chunk_size)

    return meta_gradient


def _meta_gradient(pad: int, params: Params, steps: DistilledSteps, real_images: Tensor,
                   real_labels: Tensor, keep_every: int, chunk_size: int) -> Tensor:
    flat = _Flat(params)
    lanes = [_to_lanes(batch.detach(), pad) for batch in steps.images]
    classes = flat.shapes[DENSE[-1][1]][0]
    one_hots = F.one_hot(steps.labels, classes).to(steps.images.dtype)
    raw_lrs = steps.raw_lrs.detach()
    lrs = F.softplus(raw_lrs).tolist()

    def step(theta: Tensor, t: int) -> Tensor:
        s = t % len(lanes)
        return theta.add(_step_gradients(flat, theta, lanes[s], one_hots[s])[0], alpha=-lrs[t])

    theta = flat.flatten({k: v.detach() for k, v in params.items()})
    kept: dict[int, Tensor] = {}
    for t in range(steps.num_steps):
        if t % keep_every == 0:
            kept[t] = theta
        theta = step(theta, t)

    nets, total = theta.shape[0], real_images.shape[0]
    losses = real_images.new_zeros(nets)
    g = torch.zeros_like(theta)
    for start in range(0, total, chunk_size):
        x, y = real_images[start:start + chunk_size], real_labels[start:start + chunk_size]
        fwd = _forward(flat, theta, _to_lanes(x, pad), x.shape[0])
        chunk_losses, d = _loss_gradient(fwd.dense[-1], y, 1.0 / (total * nets))
        losses += chunk_losses / total
        g += _gradients(flat, fwd, d)[0]

    image_grad = torch.zeros_like(steps.images)
    lr_grad = torch.zeros_like(raw_lrs)
    sigmoid = torch.sigmoid(raw_lrs)
    n_images = steps.labels.shape[1]
    segment: dict[int, Tensor] = {}
    for t in reversed(range(steps.num_steps)):
        if t not in segment:  # recompute the weights of this segment from its kept start
            start = t - t % keep_every
            segment = {start: kept[start]}
            for u in range(start, t):
                segment[u + 1] = step(segment[u], u)
        s = t % len(lanes)
        grad, hvp, r_dx = _step_gradients(flat, segment.pop(t), lanes[s], one_hots[s], g)
        lr_grad[t] = -torch.dot(g.flatten(), grad.flatten()) * sigmoid[t]
        r_dx = r_dx.sum(0).permute(0, 4, 1, 2, 3).flatten(0, 1)[:n_images]
        image_grad[s] -= lrs[t] * r_dx[:, :, pad:SIDE - pad, pad:SIDE - pad]
        g = g.add(hvp, alpha=-lrs[t])

    for leaf, grad in ((steps.images, image_grad), (steps.raw_lrs, lr_grad)):
        leaf.grad = grad if leaf.grad is None else leaf.grad + grad
    return losses
