"""Where the meta-gradient runs, chosen once above the differentiable core.

``pytorch`` runs any module on any device (``inner_loop.meta_gradient``: full backprop or the
back-gradient walk, outer gradient in chunks). ``compiled-lenet`` runs a float32 LeNet on the
CPU through the C kernel (``kernels.lenet``): the same gradient by the back-gradient walk,
every θ_t kept for ``full``. The choice is recorded in each artifact's ``meta.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .errors import DistillError
from .functional import FunctionalModel, Params
from .inner_loop import meta_gradient
from .kernels.lenet import SeenGrads, lenet_meta_gradient_fn
from .state import DistilledSteps

@dataclass
class MetaGradient:
    """``run(params, steps, real_images, real_labels, window=None) -> losses (N,)``,
    accumulating the learnable tensors' ``.grad`` (through the ``window`` of steps only, when
    given); ``name`` says which backend runs it."""

    name: str
    run: Callable[..., Tensor]


def choose_meta_gradient(fmodel: FunctionalModel, params: Params, steps: DistilledSteps,
                         real_images: Tensor, mode: str = "full", keep_every: int = 1,
                         chunk_size: int = 512) -> MetaGradient:
    """The meta-gradient for these nets, steps and real images under the model's backend:
    ``auto`` takes the compiled one where it applies, ``compiled`` insists on it, ``pytorch``
    never takes it."""
    if mode not in ("full", "backgrad"):
        raise DistillError(f"--backward must be full or backgrad, got {mode!r}")
    # it reads the images as a net sees them, unaugmented
    kernel_may_run = fmodel.kernels and steps.augment is None
    compiled = lenet_meta_gradient_fn(fmodel.module, params, real_images,
                                      steps.full_images()[0]) if kernel_may_run else None
    if compiled is not None:
        kept = keep_every if mode == "backgrad" else 1
        return MetaGradient("compiled-lenet", lambda p, s, x, y, window=None:
                            _through_the_state(compiled, p, s, x, y, kept,
                                               window or range(s.num_steps)))
    if fmodel.backend == "compiled":
        raise DistillError("--backend compiled runs only the registered LeNet in float32 on the "
                           "CPU with a working C compiler, without --dsa; use --backend auto or "
                           "pytorch")
    return MetaGradient("pytorch", lambda p, s, x, y, window=None: meta_gradient(
        fmodel, p, s, x, y, mode, keep_every, chunk_size, window))


def _through_the_state(compiled: Callable[..., tuple[Tensor, SeenGrads]], params: Params,
                       steps: DistilledSteps, real_images: Tensor, real_labels: Tensor,
                       keep_every: int, window: range) -> Tensor:
    """The kernel's meta-gradient: it returns plain gradients of what the steps read (images
    as a net sees them, targets, per-step lrs: ``steps.seen()``), and one autograd call
    carries them into the learnable tensors, through the resize of images stored smaller,
    the label softmax and the lrs' softplus (and the expand of one shared lr)."""
    seen = steps.seen()
    losses, grads = compiled(params, steps, [t.detach() for t in seen], real_images,
                             real_labels, keep_every, window)
    pairs = [(t, grad) for t, grad in zip(seen, grads) if grad is not None]  # none: classes
    torch.autograd.backward([t for t, _ in pairs], [grad for _, grad in pairs])
    return losses
