"""The differentiable core: unrolled GD on distilled steps and its reverse pass.

Both reverse modes start from ``g = dL/dθ_T`` (the meta-loss gradient at the final
weights) and accumulate ``.grad`` into the distilled images and the raw learning rates:

* ``full``: every inner step keeps its graph (``create_graph=True``) and one backward
  call runs through all of them.
* ``backgrad``: the forward pass keeps only the weights θ_t (every ``keep_every``-th;
  the rest recomputed); the reverse pass walks the steps backwards with
  Hessian-vector products (Maclaurin et al., 2015), one step's graph at a time.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .functional import FunctionalModel, Params
from .recompute import states_in_reverse, unroll_keeping
from .state import DistilledSteps


def gd_step(
    fmodel: FunctionalModel, params: Params, images: Tensor, labels: Tensor, lr: Tensor,
    create_graph: bool,
) -> Params:
    """One plain GD step of every net on the same distilled batch (nets in train mode)."""
    if not create_graph:
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = fmodel.losses(params, images, labels, train=True).sum()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {k: p - lr * g for (k, p), g in zip(params.items(), grads)}


def unroll(fmodel: FunctionalModel, params: Params, steps: DistilledSteps,
           window: range) -> Params:
    """θ after the ``window`` steps from ``params``, a differentiable function of the
    learnable tensors (full backpropagation)."""
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    for t in window:
        params = gd_step(fmodel, params, *steps.step(t), create_graph=True)
    return params


def _detached_step(fmodel: FunctionalModel, params: Params, steps: DistilledSteps, t: int) -> Params:
    images, targets, lr = steps.step(t)
    with torch.enable_grad():
        new = gd_step(fmodel, params, images.detach(), targets.detach(), lr.detach(),
                      create_graph=False)
    return {k: v.detach() for k, v in new.items()}


def unroll_detached(
    fmodel: FunctionalModel, params: Params, steps: DistilledSteps, window: range,
    keep_every: int = 1,
) -> tuple[Params, dict[int, Params]]:
    """θ after the ``window`` steps with no graph, and the kept weights {t: θ_t}, every
    ``keep_every``-th t of the window."""
    return unroll_keeping(lambda p, t: _detached_step(fmodel, p, steps, t),
                          {k: v.detach() for k, v in params.items()}, window, keep_every)


def backgrad(
    fmodel: FunctionalModel, steps: DistilledSteps, kept: dict[int, Params],
    grad_final: Params, window: range, keep_every: int = 1,
) -> None:
    """Reverse pass by Hessian-vector products through the ``window`` steps; accumulates
    ``.grad`` of the learnable tensors.

    For step t, with g = dL/dθ_{t+1} held constant, s = <g, θ_t - η_t ∇ℓ(x_t, θ_t)> has
    ∂s/∂x_t, ∂s/∂η_t and ∂s/∂θ_t equal to the step's backpropagated gradients.
    """
    g = grad_final
    weights = states_in_reverse(lambda p, t: _detached_step(fmodel, p, steps, t), kept,
                                window, keep_every)
    for t, theta in weights:
        theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
        images, targets, lr = steps.step(t)
        loss = fmodel.losses(theta, images, targets, train=True).sum()
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        s = -lr * sum((gk * dk).sum() for gk, dk in zip(g.values(), grads))
        inputs = [*steps.learnable().values(), *theta.values()]
        torch.autograd.backward(s, inputs=inputs)
        g = {k: g[k] + theta[k].grad for k in g}


def meta_gradient(
    fmodel: FunctionalModel,
    params: Params,
    steps: DistilledSteps,
    real_images: Tensor,
    real_labels: Tensor,
    mode: str = "full",
    keep_every: int = 1,
    chunk_size: int = 512,
    window: range | None = None,
) -> Tensor:
    """Meta-loss per net (N,) after the unrolled steps; accumulates ``.grad`` on the steps.

    The meta-loss is the mean cross-entropy on the real batch (nets in eval mode),
    averaged over the N nets. Its gradient w.r.t. θ is taken in chunks of
    ``chunk_size`` real images, then propagated through the inner steps (plain PyTorch, any
    module; ``backends`` chooses between this and the compiled LeNet). With a ``window``
    [first, last) of steps, the steps before it run without a graph and the meta-loss is
    taken at θ_last (truncated backpropagation).
    """
    if mode not in ("full", "backgrad"):
        raise ValueError(f"unknown backward mode {mode!r}")
    window = window or range(steps.num_steps)
    for t in range(window.start):  # before a truncated window: no graph
        params = _detached_step(fmodel, params, steps, t)
    if mode == "full":
        final = unroll(fmodel, params, steps, window)
        kept: dict[int, Params] = {}
    else:
        final, kept = unroll_detached(fmodel, params, steps, window, keep_every)

    losses, grad_final = outer_gradient(fmodel, final, real_images, real_labels, chunk_size)
    if mode == "full":
        torch.autograd.backward(list(final.values()), list(grad_final.values()))
    else:
        backgrad(fmodel, steps, kept, grad_final, window, keep_every)
    return losses


def outer_gradient(
    fmodel: FunctionalModel, params: Params, images: Tensor, labels: Tensor, chunk_size: int
) -> tuple[Tensor, Params]:
    """Per-net mean loss on (images, labels) and the gradient of its net-average w.r.t. params."""
    leaf = {k: v.detach().requires_grad_() for k, v in params.items()}
    n_nets, total = next(iter(leaf.values())).shape[0], images.shape[0]
    losses = torch.zeros(n_nets, dtype=images.dtype, device=images.device)
    for start in range(0, total, chunk_size):
        x, y = images[start:start + chunk_size], labels[start:start + chunk_size]
        chunk_losses = fmodel.losses(leaf, x, y, train=False) * (x.shape[0] / total)
        (chunk_losses.sum() / n_nets).backward()
        losses += chunk_losses.detach()
    return losses, {k: v.grad for k, v in leaf.items()}
