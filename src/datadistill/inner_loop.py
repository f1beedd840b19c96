"""The differentiable core: unrolled GD on distilled steps and its reverse pass.

Both reverse modes start from ``g = dL/dθ_T`` (the meta-loss gradient at the final
weights) and accumulate ``.grad`` into the distilled images and the raw learning rates:

* ``full``: every inner step keeps its graph (``create_graph=True``) and one backward
  call runs through all of them.
* ``backgrad``: the forward pass keeps only the weights θ_t (every ``keep_every``-th;
  the rest recomputed); the reverse pass walks the steps backwards with
  Hessian-vector products (Maclaurin et al., 2015), one step's graph at a time.

The inner steps are plain GD (the paper), or with ``steps.momentum`` β heavy-ball momentum
(``torch.optim.SGD``'s: v ← β v + ∇ℓ, θ ← θ - η v, v_0 = 0); the state then carries v.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor

from .functional import FunctionalModel, Params
from .recompute import states_in_reverse, unroll_keeping
from .state import DistilledSteps


# the inner state: weights θ and, with momentum, the velocity v (None for plain GD)
Inner = tuple[Params, "Params | None"]


def _gradient(fmodel: FunctionalModel, params: Params, images: Tensor, labels: Tensor,
              create_graph: bool) -> tuple[Params, tuple[Tensor, ...]]:
    """The params (detached leaves unless ``create_graph``) and their loss gradient."""
    if not create_graph:
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = fmodel.losses(params, images, labels, train=True).sum()
    return params, torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)


def gd_step(
    fmodel: FunctionalModel, params: Params, images: Tensor, labels: Tensor, lr: Tensor,
    create_graph: bool,
) -> Params:
    """One plain GD step of every net on the same distilled batch (nets in train mode)."""
    params, grads = _gradient(fmodel, params, images, labels, create_graph)
    return {k: p - lr * g for (k, p), g in zip(params.items(), grads)}


def momentum_step(
    fmodel: FunctionalModel, params: Params, velocity: Params, images: Tensor, labels: Tensor,
    lr: Tensor, momentum: float, create_graph: bool,
) -> Inner:
    """One heavy-ball step: v ← β v + ∇ℓ, θ ← θ - η v; returns (θ, v)."""
    params, grads = _gradient(fmodel, params, images, labels, create_graph)
    velocity = {k: momentum * velocity[k] + g for k, g in zip(params, grads)}
    return {k: p - lr * velocity[k] for k, p in params.items()}, velocity


def start(params: Params, momentum: float) -> Inner:
    """The inner state before step 0: θ_0, and v_0 = 0 with momentum."""
    return params, ({k: torch.zeros_like(v) for k, v in params.items()} if momentum else None)


def inner_step(fmodel: FunctionalModel, state: Inner, steps: DistilledSteps, t: int,
               create_graph: bool) -> Inner:
    """Inner step t of ``steps`` from ``state``: plain GD, or heavy-ball with a velocity."""
    params, velocity = state
    if velocity is None:
        return gd_step(fmodel, params, *steps.step(t), create_graph), None
    return momentum_step(fmodel, params, velocity, *steps.step(t), steps.momentum, create_graph)


def unroll(fmodel: FunctionalModel, state: Inner, steps: DistilledSteps,
           window: range) -> Params:
    """θ after the ``window`` steps from ``state``, a differentiable function of the
    learnable tensors (full backpropagation)."""
    state = _detach(state, leaves=True)
    for t in window:
        state = inner_step(fmodel, state, steps, t, create_graph=True)
    return state[0]


def _detach(state: Inner, leaves: bool = False) -> Inner:
    def cut(p: Params) -> Params:
        return {k: v.detach().requires_grad_(leaves) for k, v in p.items()}

    return cut(state[0]), None if state[1] is None else cut(state[1])


def _detached_step(fmodel: FunctionalModel, state: Inner, steps: DistilledSteps, t: int) -> Inner:
    detached = replace(steps, images=steps.images.detach(), labels=steps.labels.detach(),
                       raw_lrs=steps.raw_lrs.detach())
    with torch.enable_grad():
        return _detach(inner_step(fmodel, state, detached, t, create_graph=False))


def unroll_detached(
    fmodel: FunctionalModel, state: Inner, steps: DistilledSteps, window: range,
    keep_every: int = 1,
) -> tuple[Inner, dict[int, Inner]]:
    """The state after the ``window`` steps with no graph, and the kept states {t: state_t},
    every ``keep_every``-th t of the window."""
    return unroll_keeping(lambda p, t: _detached_step(fmodel, p, steps, t), _detach(state),
                          window, keep_every)


def backgrad(
    fmodel: FunctionalModel, steps: DistilledSteps, kept: dict[int, Inner], final: Inner,
    grad_final: Params, window: range, keep_every: int = 1,
) -> None:
    """Reverse pass by Hessian-vector products through the ``window`` steps; accumulates
    ``.grad`` of the learnable tensors.

    For step t, with g = dL/dθ_{t+1} held constant, s = <g, θ_t - η_t ∇ℓ(x_t, θ_t)> has
    ∂s/∂x_t, ∂s/∂η_t and ∂s/∂θ_t equal to the step's backpropagated gradients. With momentum
    and h = dL/dv_{t+1}, s = <h, ∇ℓ> - η_t <g, β v_t + ∇ℓ> (v_t constant), and dL/dv_t =
    β (h - η_t g).
    """
    g, h = grad_final, None if final[1] is None else {k: torch.zeros_like(v)
                                                        for k, v in grad_final.items()}
    states = states_in_reverse(lambda p, t: _detached_step(fmodel, p, steps, t), kept,
                               window, keep_every)
    for t, (theta, velocity) in states:
        theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
        images, targets, lr = steps.step(t)
        loss = fmodel.losses(theta, images, targets, train=True).sum()
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        if h is None:
            s = -lr * sum((gk * dk).sum() for gk, dk in zip(g.values(), grads))
        else:
            s = sum(((h[k] - lr * g[k]) * d - lr * steps.momentum * g[k] * velocity[k]).sum()
                    for k, d in zip(g, grads))
            h = {k: steps.momentum * (h[k] - lr.detach() * g[k]) for k in g}
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
    return unrolled_gradient(
        fmodel, params, steps,
        lambda theta: outer_gradient(fmodel, theta, real_images, real_labels, chunk_size),
        mode, keep_every, window)


FinalLoss = Callable[[Params], tuple[Tensor, Params]]  # θ_T -> (losses (N,), d mean / dθ_T)


def unrolled_gradient(
    fmodel: FunctionalModel, params: Params, steps: DistilledSteps, final_loss: FinalLoss,
    mode: str = "full", keep_every: int = 1, window: range | None = None,
) -> Tensor:
    """``final_loss`` of θ after the unrolled steps from ``params``, per net (N,); its
    gradient is carried back through the ``window`` of steps (full backpropagation or the
    back-gradient walk) into the learnable tensors' ``.grad``. ``meta_gradient``'s final loss
    is the real data's; trajectory matching's is the distance to an expert's weights."""
    if mode not in ("full", "backgrad"):
        raise ValueError(f"unknown backward mode {mode!r}")
    window = window or range(steps.num_steps)
    state = start(params, steps.momentum)
    for t in range(window.start):  # before a truncated window: no graph
        state = _detached_step(fmodel, state, steps, t)
    if mode == "full":
        final = unroll(fmodel, state, steps, window)
        losses, grad_final = final_loss(final)
        torch.autograd.backward(list(final.values()), list(grad_final.values()))
    else:
        end, kept = unroll_detached(fmodel, state, steps, window, keep_every)
        losses, grad_final = final_loss(end[0])
        backgrad(fmodel, steps, kept, end, grad_final, window, keep_every)
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
