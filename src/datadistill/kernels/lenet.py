"""LeNet on the CPU through the compiled kernel ``lenet.c``.

Three users, each given a function or None where the kernel does not apply (another module,
not float32 on the CPU, no C compiler), in which case the caller runs plain PyTorch:
evaluation's test pass (``lenet_logits_fn``: the conv blocks compiled, the dense layers as
batched matrix multiplies), training held-out nets (``lenet_train_fn``) and the meta-gradient
(``lenet_meta_gradient_fn``: the unrolled GD steps, the outer gradient and the back-gradient
reverse pass, each step one call that runs the whole net and, in the reverse pass,
Pearlmutter's R-operator for the Hessian-vector products).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillError
from ..functional import Params
from ..models import LeNet
from ..recompute import states_in_reverse, unroll_keeping
from . import FLOAT, INT, INT64, POINTER, call, float32_on_cpu, load

if TYPE_CHECKING:
    from ..state import DistilledSteps

LANES, SIDE, FEATURES, MAX_CHANNELS, MAX_CLASSES = 8, 32, 16 * 5 * 5, 4, 128
DENSE = tuple((f"classifier.{i}.weight", f"classifier.{i}.bias") for i in (1, 3, 5))
# (images, labels, lr); labels: class indices (B,) or class probabilities (B, classes)
Steps = Sequence[tuple[Tensor, Tensor, "float | Tensor"]]

_SIGNATURES = {
    "lenet_features": [POINTER, INT64, INT, POINTER, INT64, INT64, POINTER, INT],
    "lenet_step": [POINTER, POINTER, INT, INT, INT64, INT64, INT64, POINTER, POINTER, INT64, FLOAT,
                   *[POINTER] * 6, INT],
}


def _call(name: str, *args: Tensor | int | float | None) -> None:
    """Call a LeNet kernel function (``kernels.call``)."""
    call("lenet", name, _SIGNATURES[name], *args)


@dataclass
class _Batch:
    """Images 8 to a vector (blocks, C, 32, 32, 8), their targets as class probabilities
    (blocks * 8, classes) (zeros past the last image) and the number of images."""

    x: Tensor
    targets: Tensor
    size: int


class _Net:
    """A LeNet as the kernel sees it: each net's parameters as one row of an (N, P) tensor in
    the module's ``named_parameters()`` order (the kernel finds each layer at its offset)."""

    def __init__(self, module: LeNet) -> None:
        self.pad = module.features[0].padding[0]
        self.image_shape = (module.features[0].in_channels, SIDE - 2 * self.pad, SIDE - 2 * self.pad)
        self.shapes = {name: p.shape for name, p in module.named_parameters()}
        self.classes = self.shapes[DENSE[-1][1]][0]

    @staticmethod
    def of(module: nn.Module, params: Params, *images: Tensor) -> "_Net | None":
        """The kernel's view of ``module``, or None where the kernel does not apply to it, to
        these stacked parameters or to these images."""
        if type(module) is not LeNet:
            return None
        net = _Net(module)
        # compiled last: only where it runs (a CUDA or float64 user never waits for cc)
        return net if net.fits(params, images) and load("lenet") is not None else None

    def fits(self, params: Params, images: Sequence[Tensor]) -> bool:
        """Whether the kernel runs these stacked parameters and images: float32 on the CPU,
        in the module's shapes, within the kernel's arrays."""
        return (self.image_shape[0] <= MAX_CHANNELS and self.classes <= MAX_CLASSES
                and params.keys() == self.shapes.keys()
                and all(params[k].shape[1:] == shape for k, shape in self.shapes.items())
                and all(x.shape[1:] == self.image_shape for x in images)
                and float32_on_cpu(*images, *params.values()))

    def flatten(self, params: Params) -> Tensor:
        return torch.cat([params[k].reshape(params[k].shape[0], -1) for k in self.shapes], 1)

    def unflatten(self, theta: Tensor) -> Params:
        parts = theta.split([shape.numel() for shape in self.shapes.values()], 1)
        return {k: part.reshape(-1, *shape) for (k, shape), part in zip(self.shapes.items(), parts)}

    def batch(self, images: Tensor, labels: Tensor) -> _Batch:
        """Images (B, C, H, W) and labels (class indices (B,) or class probabilities
        (B, classes)) laid out for the kernel, after the checks that keep it inside its arrays."""
        if images.shape[1:] != self.image_shape or images.dtype != torch.float32:
            raise DistillError(f"the compiled LeNet takes float32 images of shape "
                               f"{self.image_shape}, got {images.dtype} {tuple(images.shape[1:])}")
        targets = self.targets(labels, images.shape[0])
        blocks = -(-images.shape[0] // LANES)
        extra = blocks * LANES - images.shape[0]
        x = F.pad(images, (self.pad,) * 4 + (0, 0, 0, extra))
        x = x.view(blocks, LANES, *x.shape[1:]).permute(0, 2, 3, 4, 1).contiguous()
        return _Batch(x, F.pad(targets, (0, 0, 0, extra)).contiguous(), images.shape[0])

    def targets(self, labels: Tensor, size: int) -> Tensor:
        """``size`` labels as float32 class probabilities (size, classes): soft targets as
        they are, class indices one-hot."""
        if labels.is_floating_point():
            if labels.shape != (size, self.classes):
                raise DistillError(f"soft targets must have shape ({size}, {self.classes}) for "
                                   f"this LeNet, got {tuple(labels.shape)}")
            return labels.to(torch.float32)
        if labels.shape != (size,):
            raise DistillError(f"class labels must have shape ({size},), got {tuple(labels.shape)}")
        if size and not 0 <= int(labels.min()) <= int(labels.max()) < self.classes:
            raise DistillError(f"labels must lie in [0, {self.classes}) for this LeNet, got "
                               f"{int(labels.min())}..{int(labels.max())}")
        return F.one_hot(labels.long(), self.classes).to(torch.float32)

    def _step(self, theta: Tensor, batch: _Batch, scale: float, u: Tensor | None, out: Tensor,
              slopes: Tensor | None = None, r_dx: Tensor | None = None,
              r_logits: Tensor | None = None) -> Tensor:
        """One ``lenet_step`` call; returns the summed loss per net and part (N, parts)."""
        nets, parts = theta.shape[0], out.shape[1]
        losses = theta.new_empty(nets, parts)
        gradient, hessian = (None, out) if u is not None else (out, None)
        _call("lenet_step", batch.x, batch.targets, batch.x.shape[1], self.classes, batch.size,
              nets, parts, theta, u, theta.shape[1], scale, losses, gradient, hessian, r_dx,
              r_logits, slopes)
        return losses

    @staticmethod
    def _parts(theta: Tensor, batch: _Batch) -> int:
        """How many block ranges each net's batch is split into, so every thread works."""
        return min(batch.x.shape[0], max(1, torch.get_num_threads() // theta.shape[0]))

    def gradient(self, theta: Tensor, batch: _Batch, scale: float) -> tuple[Tensor, Tensor]:
        """Summed loss per net (N,) and ``scale`` × its gradient (N, P)."""
        grad = theta.new_empty(theta.shape[0], self._parts(theta, batch), theta.shape[1])
        losses = self._step(theta, batch, scale, None, grad)
        return losses.sum(1), grad.sum(1)

    def hessian_vector(self, theta: Tensor, batch: _Batch, scale: float, u: Tensor,
                       logits: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Along the direction u (N, P): the slope <u, gradient> (N,), H u (N, P), the
        derivative of the input gradient (B, C, 32, 32) and, if ``logits``, that of the
        logits less its mean under the softmax (B, classes) (minus the slope's derivative in
        the targets, over ``scale``), both summed over nets."""
        nets, parts = theta.shape[0], self._parts(theta, batch)
        hvp = theta.new_empty(nets, parts, theta.shape[1])
        slopes = theta.new_empty(nets, parts)
        r_dx = theta.new_empty(nets, *batch.x.shape)
        r_logits = theta.new_empty(nets, *batch.targets.shape) if logits else None
        self._step(theta, batch, scale, u, hvp, slopes, r_dx, r_logits)
        r_dx = r_dx.sum(0).permute(0, 4, 1, 2, 3).flatten(0, 1)[:batch.size]
        if r_logits is not None:
            r_logits = r_logits.sum(0)[:batch.size]
        return slopes.sum(1), hvp.sum(1), r_dx, r_logits

    def crop(self, padded: Tensor) -> Tensor:
        return padded[:, :, self.pad:SIDE - self.pad, self.pad:SIDE - self.pad]


def lenet_logits_fn(module: nn.Module, params: Params,
                    images: Tensor) -> Callable[[Tensor], Tensor] | None:
    """``x -> logits (N, B, classes)`` of the N stacked LeNets in ``params``, or None."""
    net = _Net.of(module, params, images)
    if net is None:
        return None
    theta = net.flatten(params)
    nets = theta.shape[0]

    def logits(x: Tensor) -> Tensor:
        x = F.pad(x, (net.pad,) * 4).contiguous()
        features = x.new_empty(nets, x.shape[0], FEATURES)
        _call("lenet_features", x, x.shape[0], x.shape[1], theta, theta.shape[1], nets, features)
        for i, (weight, bias) in enumerate(DENSE):
            features = torch.baddbmm(params[bias].unsqueeze(1), features, params[weight].mT)
            if i < len(DENSE) - 1:
                features = features.relu_()
        return features

    return logits


def lenet_train_fn(module: nn.Module, params: Params,
                   images: Tensor) -> Callable[[Params, Steps, float], Params] | None:
    """``(params, steps, momentum) -> params``: GD (heavy-ball with ``momentum`` β > 0) of the
    N stacked LeNets on the steps (images, labels, lr), labels class indices (B,) or soft
    targets (B, classes), as ``nets.train_nets`` does; or None."""
    net = _Net.of(module, params, images)
    if net is None:
        return None

    def train(params: Params, steps: Steps, momentum: float = 0.0) -> Params:
        with torch.no_grad():
            theta = net.flatten(params)
            velocity = torch.zeros_like(theta) if momentum else None
            for x, y, lr in steps:
                grad = net.gradient(theta, net.batch(x, y), 1.0 / y.shape[0])[1]
                if momentum:
                    grad = velocity = velocity.mul_(momentum).add_(grad)
                theta = theta.add(grad, alpha=-float(lr))
        return net.unflatten(theta)

    return train


# the gradients of the mean meta-loss w.r.t. the steps' (images, targets, lrs) (``seen()``)
SeenGrads = tuple[Tensor, "Tensor | None", Tensor]


def lenet_meta_gradient_fn(module: nn.Module, params: Params, *images: Tensor
                           ) -> Callable[..., tuple[Tensor, SeenGrads]] | None:
    """The meta-gradient of ``inner_loop.meta_gradient`` through the kernel, or None where it
    does not apply (``images``: the real and the distilled ones). Call it as ``fn(params,
    steps, seen, real_images, real_labels, keep_every, window) -> (losses (N,), grads)``,
    ``seen`` being ``steps.seen()`` detached: ``grads`` are the plain gradients of the images
    (as a net sees them), the targets (None for class indices) and the per-step lrs."""
    net = _Net.of(module, params, *images)
    if net is None:
        return None

    def meta_gradient(params: Params, steps: DistilledSteps, seen: Sequence[Tensor],
                      real_images: Tensor, real_labels: Tensor, keep_every: int,
                      window: range) -> tuple[Tensor, SeenGrads]:
        with torch.no_grad():
            return _meta_gradient(net, params, steps, seen, real_images, real_labels,
                                  keep_every, window)

    return meta_gradient


def _meta_gradient(net: _Net, params: Params, steps: DistilledSteps, seen: Sequence[Tensor],
                   real_images: Tensor, real_labels: Tensor, keep_every: int,
                   window: range) -> tuple[Tensor, SeenGrads]:
    """Run the steps before the ``window`` without keeping, unroll the window keeping every
    ``keep_every``-th θ_t, take the outer gradient g on the real batch, then walk back:
    dlr_t = -<g, ∇ℓ_t>, dx_t = -lr_t R_g{∇_x ℓ_t}, for soft targets
    dq_t = lr_t scale (R_g{z_t} - <p_t, R_g{z_t}>) (z_t the logits, p_t their softmax),
    g <- g - lr_t H_t g. With momentum β (state (θ, v), h = dL/dv) the direction is
    u = h - lr_t g instead of -lr_t g: dlr_t = -<g, v_{t+1}>, dx_t = R_u{∇_x ℓ_t},
    g <- g + H_t u, h <- β u."""
    images, targets, lrs = seen
    whole = [net.batch(x, q) for x, q in zip(images, targets)]
    lr_list = lrs.tolist()

    def batch(t: int) -> _Batch:
        s, picked = steps.batch_of(t), steps.picked(t)
        if picked is None:
            return whole[s]
        return net.batch(images[s, picked], targets[s][picked])

    def step(state: tuple[Tensor, Tensor | None], t: int) -> tuple[Tensor, Tensor | None]:
        theta, velocity = state
        current = batch(t)
        grad = net.gradient(theta, current, 1.0 / current.size)[1]
        if velocity is None:
            return theta.add(grad, alpha=-lr_list[t]), None
        velocity = velocity.mul(steps.momentum).add_(grad)
        return theta.add(velocity, alpha=-lr_list[t]), velocity

    theta = net.flatten({k: v.detach() for k, v in params.items()})
    state = theta, torch.zeros_like(theta) if steps.momentum else None
    for t in range(window.start):  # before a truncated window: nothing kept
        state = step(state, t)
    after, kept = unroll_keeping(step, state, window, keep_every)

    theta = after[0]
    nets, total = theta.shape[0], real_images.shape[0]
    losses, g = net.gradient(theta, net.batch(real_images, real_labels),
                             1.0 / (total * nets))  # g: gradient of the mean over nets

    image_grad, lr_grad = torch.zeros_like(images), torch.zeros_like(lrs)
    target_grad = torch.zeros_like(targets) if targets.is_floating_point() else None
    h = None if after[1] is None else torch.zeros_like(g)
    for t, (theta_t, velocity_t) in states_in_reverse(step, kept, window, keep_every):
        s, picked, current = steps.batch_of(t), steps.picked(t), batch(t)
        # the HVP direction and its weight: g and -lr_t (plain GD), or u = h - lr_t g and 1
        direction, weight = (g, -lr_list[t]) if h is None else (h.add(g, alpha=-lr_list[t]), 1.0)
        slopes, hvp, r_dx, r_logits = net.hessian_vector(theta_t, current, 1.0 / current.size,
                                                         direction, logits=target_grad is not None)
        lr_grad[t] = -(slopes.sum() if h is None else (g * after[1]).sum())
        _add_at(image_grad[s], picked, weight * net.crop(r_dx))
        if target_grad is not None:
            _add_at(target_grad[s], picked, -weight * (1.0 / current.size) * r_logits)
        g = g.add(hvp, alpha=weight)
        if h is not None:
            h = direction.mul_(steps.momentum)
        after = theta_t, velocity_t
    return losses / total, (image_grad, target_grad, lr_grad)


def _add_at(dest: Tensor, picked: Tensor | None, value: Tensor) -> None:
    """dest += value, at the rows ``picked`` (a minibatch) or everywhere."""
    if picked is None:
        dest.add_(value)
    else:
        dest.index_add_(0, picked, value)

