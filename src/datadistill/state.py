"""The learnable distilled state: images, labels and learning rates, and how steps read them.

The only place that knows that inner step t uses batch ``t % S``, that learning rates pass
through a softplus, and that learned labels are soft targets (the softmax of label logits).
The optimiser, the all-reduce and the checkpoint iterate over ``learnable()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def inverse_softplus(value: float) -> float:
    """The raw value whose softplus is ``value`` (stable for large values)."""
    return value + math.log(-math.expm1(-value))


@dataclass
class DistilledSteps:
    """Images (S, n, C, H, W), labels, raw lrs (T,); step t uses batch ``t % S``.

    Labels are either fixed class indices (S, n) (int64, the paper) or learnable label
    logits (S, n, K) (float), whose softmax is each image's soft target.
    """

    images: Tensor
    labels: Tensor
    raw_lrs: Tensor

    @property
    def num_steps(self) -> int:
        return self.raw_lrs.shape[0]

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
            tensors["label_logits"] = self.labels
        return tensors

    def batch_of(self, t: int) -> int:
        return t % self.num_batches

    def targets(self, s: int) -> Tensor:
        """Batch s's targets: class indices (n,), or soft targets (n, K) for learned labels."""
        return F.softmax(self.labels[s], -1) if self.learns_labels else self.labels[s]

    def all_targets(self) -> Tensor:
        """Every batch's targets, detached: (S, n) classes or (S, n, K) probabilities."""
        labels = self.labels.detach()
        return F.softmax(labels, -1) if self.learns_labels else labels

    def lrs(self) -> Tensor:
        """Every step's learning rate (T,), differentiable w.r.t. the raw lrs."""
        return F.softplus(self.raw_lrs)

    def step(self, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """(images, targets, lr) of inner step t, differentiable w.r.t. the learnable tensors."""
        s = self.batch_of(t)
        return self.images[s], self.targets(s), F.softplus(self.raw_lrs[t])

    def detached(self) -> "DistilledSteps":
        return DistilledSteps(self.images.detach(), self.labels.detach(), self.raw_lrs.detach())

    def hard_labels(self) -> Tensor:
        """Each image's class (S, n): the label, or the argmax of its label logits."""
        return self.labels.argmax(-1) if self.learns_labels else self.labels


def new_steps(images: Tensor, labels: Tensor, num_steps: int, lr: float, num_classes: int,
              learn_labels: bool, label_confidence: float = 0.9) -> DistilledSteps:
    """Learnable steps from starting images and class labels, every lr at ``lr``. Learned
    labels start as logits whose softmax gives each image's class ``label_confidence`` and
    spreads the rest evenly over the other classes."""
    images = images.detach().clone().requires_grad_()
    if learn_labels:
        scale = math.log(label_confidence * (num_classes - 1) / (1 - label_confidence))
        logits = scale * F.one_hot(labels, num_classes).to(images.dtype)
        labels = logits.requires_grad_()
    raw_lrs = torch.full((num_steps,), inverse_softplus(lr), dtype=images.dtype,
                         device=images.device, requires_grad=True)
    return DistilledSteps(images, labels, raw_lrs)
