"""What a distillation method is: a loss of the distilled state on real data, and how it
samples that data.

Algorithm 1's outer loop (``distill.py``) knows nothing of any one method. Each
meta-iteration it draws nets from p(θ0), takes the method's next real batch, asks the method
for the per-net loss of the distilled state on it (``.grad`` accumulated on the learnable
tensors), then all-reduces, steps Adam, evaluates and checkpoints. A method is registered
under a name (``METHODS``), chosen by ``--method NAME`` and listed by ``datadistill list``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator

import torch
from torch import Tensor

from ..data import Dataset, crop_flip
from ..functional import FunctionalModel, Params
from ..state import DistilledSteps


class Method(ABC):
    """One way to distil. Subclasses set ``name`` and ``summary``, implement ``loss``, and
    may refuse settings they cannot honour (``check``) or sample real data their own way
    (``batches``)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    inner_steps: ClassVar[bool] = True  # its sets carry learned lrs for the few-step protocol

    def __init__(self, config: Any, fmodel: FunctionalModel, steps: DistilledSteps,
                 data: Dataset, probe: Params) -> None:
        """``config``: the run's DistillConfig; ``probe``: one net's initial weights, for a
        method that picks its backend from their shapes."""
        self.config = config
        self.fmodel = fmodel

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
        """The loss of each of the N nets ``params`` (shape (N,)), its gradient accumulated
        into the learnable tensors' ``.grad``; per-iteration draws come from ``generator``."""
