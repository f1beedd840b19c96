"""What a distillation method is: a loss of the distilled state on real data, and how it
samples that data.

Algorithm 1's outer loop (``distill.py``) knows nothing of any one method. Each
meta-iteration it draws nets from p(θ0), takes the method's next real batch, asks the method
for the per-net loss of the distilled state on it (the gradient of the nets' mean
accumulated on the learnable tensors), then all-reduces, steps the outer optimiser,
evaluates and checkpoints (with the method's own ``state``). A method is registered
under a name (``METHODS``), chosen by ``--method NAME`` and listed by ``datadistill list``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator

import torch
from torch import Tensor

from ..data import Dataset, crop_flip
from ..errors import DistillError
from ..functional import FunctionalModel, Params
from ..state import DistilledSteps

# settings of the paper's unrolled inner steps, which the matching methods have no use for
# (they refuse them): flag -> its neutral value
UNROLL_ONLY = {"window": 0, "minibatch": 0, "momentum": 0.0, "backward": "full",
               "labels": "fixed", "objective": "task", "eval_every": 0, "validation": 0}


def refuse_unrolled_settings(config: Any, method: str, reason: str,
                             allowed: tuple[str, ...] = ()) -> None:
    """One line for a setting of the unrolled inner steps given to a method without them
    (but those ``allowed``)."""
    if config.backend == "compiled":
        raise DistillError(f"--backend compiled insists on the LeNet kernel of the unrolled "
                           f"steps, which --method {method} does not run; use auto or pytorch")
    for name, neutral in UNROLL_ONLY.items():
        value = getattr(config, name)
        if name in allowed:
            continue
        if value != neutral:
            flag = "--" + name.replace("_", "-")
            raise DistillError(f"--method {method} {reason}, so {flag} {value} would be "
                               f"ignored; drop {flag} (evaluate its sets with `datadistill "
                               "evaluate RUN --protocol converge`)")


class Method(ABC):
    """One way to distil. Subclasses set ``name`` and ``summary``, implement ``loss``, and
    may refuse settings they cannot honour (``check``) or sample real data their own way
    (``batches``)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    inner_steps: ClassVar[bool] = True  # its sets carry learned lrs
    final_checks: ClassVar[str] = "few-step"  # what --final-checks auto runs after it

    def __init__(self, config: Any, fmodel: FunctionalModel, steps: DistilledSteps,
                 data: Dataset, probe: Params) -> None:
        """``config``: the run's DistillConfig; ``probe``: one net's initial weights, for a
        method that picks its backend from their shapes."""
        self.config = config
        self.fmodel = fmodel

    @classmethod
    def settle(cls, config: Any) -> Any:
        """The run's config as this method runs it (e.g. ``dsa`` turns DSA on); stored."""
        return config

    @classmethod
    def check(cls, config: Any) -> None:
        """Raise a one-line DistillError for a setting this method would ignore or cannot
        run, before any data is loaded."""

    @property
    def backend(self) -> str:
        """What runs the loss, recorded in ``meta.json``."""
        return "pytorch"

    def iterations_per_epoch(self, data: Dataset) -> int:
        """Meta-iterations per pass over the real training set."""
        return math.ceil(data.train_images.shape[0] / self.config.batch_size)

    def batches(self, data: Dataset, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """The real (images, labels) of one epoch's meta-iterations: a random order in
        ``--batch-size`` chunks (cropped and flipped where the dataset says so)."""
        order = torch.randperm(data.train_images.shape[0], generator=generator)
        order = order.to(data.train_images.device)
        for it in range(self.iterations_per_epoch(data)):
            batch = order[it * self.config.batch_size:(it + 1) * self.config.batch_size]
            images = data.train_images[batch]
            if data.augment:
                images = crop_flip(images, generator)
            yield images, data.train_labels[batch]

    @abstractmethod
    def loss(self, params: Params, steps: DistilledSteps, real_images: Tensor,
             real_labels: Tensor, generator: torch.Generator) -> Tensor:
        """The loss of each of the N nets ``params`` (shape (N,)); the gradient of their
        mean is accumulated into the learnable tensors' ``.grad``. Per-iteration draws come
        from ``generator``."""

    def state(self) -> dict[str, Tensor]:
        """What the method carries between meta-iterations, for the checkpoint (none)."""
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore what ``state`` gave."""


class ClassBalanced(Method):
    """A method whose real batches hold ``--batch-size`` / classes images of every class
    (the matching methods compare real and synthetic images class by class)."""

    def iterations_per_epoch(self, data: Dataset) -> int:
        return math.ceil(data.train_images.shape[0] / self._per_class(data) / data.num_classes)

    def _per_class(self, data: Dataset) -> int:
        return max(1, self.config.batch_size // data.num_classes)

    def batches(self, data: Dataset, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """Every class's images in a random order; iteration i takes the i-th run of
        ``--batch-size`` / classes of each (going round a class that runs out)."""
        labels = data.train_labels.cpu()
        members = [torch.nonzero(labels == c).flatten() for c in range(data.num_classes)]
        orders = [m[torch.randperm(len(m), generator=generator)] for m in members]
        per_class = self._per_class(data)
        for it in range(self.iterations_per_epoch(data)):
            picks = torch.cat([order[torch.arange(it * per_class, (it + 1) * per_class)
                                     % len(order)] for order in orders if len(order)])
            picks = picks.to(data.train_images.device)
            yield data.train_images[picks], data.train_labels[picks]


class Matching(ClassBalanced):
    """A matching method (DM, DC): no inner steps with learned lrs, so no few-step figures;
    the unrolled method's settings refused, saying ``why``."""

    inner_steps = False
    final_checks = "none"  # its sets are for the converge protocol, which takes long
    why: ClassVar[str]

    @classmethod
    def check(cls, config: Any) -> None:
        refuse_unrolled_settings(config, cls.name, cls.why)


def augmented(images: Tensor, steps: DistilledSteps, seed: int, siamese: bool = True) -> Tensor:
    """``images`` (B, C, H, W) through the steps' DSA drawn from ``seed``: with ``siamese``
    one transform for the whole batch, so a class's real and synthetic images augmented from
    one seed get the same one (DSA's siamese augmentation); else each image its own. As they
    are without DSA."""
    if steps.augment is None:
        return images
    draws = torch.Generator().manual_seed(seed)
    return steps.augment(images.unsqueeze(0), draws, siamese=siamese)[0]


def draw_seed(generator: torch.Generator) -> int:
    """A seed for one siamese augmentation."""
    return int(torch.randint(2**62, (1,), generator=generator))
