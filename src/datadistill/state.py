"""The learnable distilled state: images, labels and learning rates, and how steps read them.

The only place that knows that inner step t uses batch ``t % S``, that learning rates pass
through a softplus, and how learned labels become soft targets: the softmax of label logits
(``learned``), or the learned label vectors themselves, unconstrained (``direct``, as
Sucholutsky & Schonlau and RaT-BPTT learn them).
The optimiser, the all-reduce and the checkpoint iterate over ``learnable()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import DSA
from .resize import resize_images


def inverse_softplus(value: float) -> float:
    """The raw value whose softplus is ``value`` (stable for large values)."""
    return value + math.log(-math.expm1(-value))


@dataclass
class DistilledSteps:
    """Images (S, n, C, H, W), labels, raw lrs (T,); step t uses batch ``t % S``.

    With ``shared_lr_steps`` T set, raw lrs is (1,): one learned lr for all T steps.

    Labels are either fixed class indices (S, n) (int64, the paper) or learnable (S, n, K)
    (float): label logits whose softmax is each image's soft target, or with ``direct`` the
    targets themselves (any real values; the cross-entropy -Σ_k y_k log p_k). With ``order``
    (T, b) set (``with_minibatches``), step t uses only the images ``order[t]`` of its batch:
    a flat set (S = 1) trained on minibatches. With ``full_size`` (H, W) set, the images
    are stored smaller and every step enlarges its own to that size (``--downscale``).
    """

    images: Tensor
    labels: Tensor
    raw_lrs: Tensor
    order: Tensor | None = None
    direct: bool = False
    momentum: float = 0.0  # the inner steps' heavy-ball momentum β (0: plain GD, the paper)
    augment: DSA | None = None  # DSA of each step's images, differentiable (None: none)
    augment_seed: int = 0  # step t draws its augmentation from seed + t (``with_augmentation``)
    shared_lr_steps: int = 0  # T when one raw lr (1,) serves every step; 0: one lr per step
    full_size: tuple[int, int] | None = None  # the side a net sees; None: as stored

    @property
    def num_steps(self) -> int:
        return self.shared_lr_steps or self.raw_lrs.shape[0]

    def lr_index(self, t: int) -> int:
        """The entry of ``raw_lrs`` that step t uses."""
        return 0 if self.shared_lr_steps else t

    @property
    def num_batches(self) -> int:
        return self.images.shape[0]

    @property
    def learns_labels(self) -> bool:
        return self.labels.is_floating_point()

    def learnable(self) -> dict[str, Tensor]:
        """The tensors the outer loop optimises, by name (the names of checkpoints)."""
        tensors = {"images": self.images, "raw_lrs": self.raw_lrs}
        if self.learns_labels:
            tensors["label_targets" if self.direct else "label_logits"] = self.labels
        return tensors

    def with_tensors(self, tensors: dict[str, Tensor]) -> DistilledSteps:
        """These steps with other values of the learnable tensors (``learnable()``'s names)."""
        labels = tensors.get("label_targets", tensors.get("label_logits", self.labels))
        return replace(self, images=tensors["images"], labels=labels, raw_lrs=tensors["raw_lrs"])

    def batch_of(self, t: int) -> int:
        return t % self.num_batches

    def targets(self, s: int) -> Tensor:
        """Batch s's targets: class indices (n,), or soft targets (n, K) for learned labels."""
        return self._as_targets(self.labels[s])

    def all_targets(self) -> Tensor:
        """Every batch's targets, detached: (S, n) classes or (S, n, K) probabilities."""
        return self._as_targets(self.labels.detach())

    def _as_targets(self, labels: Tensor) -> Tensor:
        return F.softmax(labels, -1) if self.learns_labels and not self.direct else labels

    def lrs(self) -> Tensor:
        """Every step's learning rate (T,), differentiable w.r.t. the raw lrs."""
        return F.softplus(self.raw_lrs).expand(self.num_steps).contiguous()

    def picked(self, t: int) -> Tensor | None:
        """The indices of step t's minibatch within its batch, or None (the whole batch)."""
        return None if self.order is None else self.order[t]

    def step(self, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """(images, targets, lr) of inner step t, differentiable w.r.t. the learnable tensors."""
        s, picked = self.batch_of(t), self.picked(t)
        images, targets = self.images[s], self.targets(s)
        if picked is not None:
            images, targets = images[picked], targets[picked]
        images = self.enlarged(images)
        if self.augment is not None:  # the same draw each time step t is run or recomputed
            draws = torch.Generator().manual_seed(self.augment_seed + t)
            images = self.augment(images.unsqueeze(0), draws).squeeze(0)
        return images, targets, F.softplus(self.raw_lrs[self.lr_index(t)])

    def seen(self) -> tuple[Tensor, Tensor, Tensor]:
        """(images, targets, lrs) as the steps read them, unaugmented: every batch's images as
        a net sees them (S, n, C, H, W), targets ((S, n) classes or (S, n, K)) and every
        step's lr (T,), differentiable w.r.t. the learnable tensors. A kernel reads them
        detached and returns their gradients, which one autograd call carries back."""
        return self.enlarged(self.images), self._as_targets(self.labels), self.lrs()

    def full_images(self) -> Tensor:
        """Every batch's images as a net sees them, detached: (S, n, C, H, W) at full size."""
        return self.enlarged(self.images.detach())

    def enlarged(self, images: Tensor) -> Tensor:
        """``images`` stored smaller, enlarged to ``full_size`` (differentiably); else as they are."""
        return images if self.full_size is None else resize_images(images, self.full_size)

    def with_augmentation(self, generator: torch.Generator) -> DistilledSteps:
        """These steps with a new augmentation for every step (drawn once per
        meta-iteration); the same learnable tensors."""
        if self.augment is None:
            return self
        return replace(self, augment_seed=int(torch.randint(2**62, (1,), generator=generator)))

    def with_minibatches(self, size: int, generator: torch.Generator) -> DistilledSteps:
        """These steps with each step's minibatch of ``size`` of its batch's images, drawn
        anew (no repeats within a step); ``size`` 0 or the whole batch: every step sees its
        whole batch. The same learnable tensors."""
        n = self.images.shape[1]
        if not 0 < size < n:
            return replace(self, order=None)
        order = torch.stack([torch.randperm(n, generator=generator)[:size]
                             for _ in range(self.num_steps)])
        return replace(self, order=order.to(self.images.device))


def window_of(num_steps: int, window: int, at_end: bool,
              generator: torch.Generator) -> tuple[int, int]:
    """The steps [first, last) that keep a graph: the last ``window`` steps before an end
    drawn uniformly from [window, T] (random-start truncation), or at T (``at_end``); all T
    steps when ``window`` is 0 or at least T."""
    if not 0 < window < num_steps:
        return 0, num_steps
    last = num_steps if at_end else int(torch.randint(window, num_steps + 1, (1,),
                                                      generator=generator))
    return last - window, last



LABELS = ("fixed", "learned", "direct")


def new_steps(images: Tensor, labels: Tensor, num_steps: int, lr: float, num_classes: int,
              kind: str = "fixed", label_confidence: float = 0.9,
              momentum: float = 0.0, augment: DSA | None = None,
              lr_per_step: bool = True,
              full_size: tuple[int, int] | None = None) -> DistilledSteps:
    """Learnable steps from starting images and class labels, every lr at ``lr`` (one lr
    per step, or one shared by all unless ``lr_per_step``); labels of a ``kind`` in
    ``LABELS``. Learned labels start as logits whose softmax gives each image's class
    ``label_confidence`` and spreads the rest evenly over the other classes; direct labels
    start one-hot. ``momentum``: the inner steps' heavy-ball β; ``augment``: DSA of
    each step's images; ``full_size``: the side images stored smaller are enlarged to."""
    images = images.detach().clone().requires_grad_()
    if kind != "fixed":
        one_hot = F.one_hot(labels, num_classes).to(images.dtype)
        scale = 1.0 if kind == "direct" else math.log(
            label_confidence * (num_classes - 1) / (1 - label_confidence))
        labels = (scale * one_hot).requires_grad_()
    raw_lrs = torch.full((num_steps if lr_per_step else 1,), inverse_softplus(lr),
                         dtype=images.dtype, device=images.device, requires_grad=True)
    return DistilledSteps(images, labels, raw_lrs, direct=kind == "direct", momentum=momentum,
                          augment=augment, shared_lr_steps=0 if lr_per_step else num_steps,
                          full_size=full_size)
