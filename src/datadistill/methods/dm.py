"""Distribution matching (DM, Zhao & Bilen, WACV 2023): per class, the squared distance
between the mean embeddings of real and synthetic images under randomly initialised
networks, with the same DSA draw on both sides; no inner training, so no learned lrs.

The embedding is the input of the network's last linear layer (``FunctionalModel.features``),
so any ``nn.Module`` ending in one works. Real batches are class-balanced: each
meta-iteration takes ``--batch-size`` / classes images of every class.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor

from ..data import Dataset
from ..errors import DistillError
from ..functional import Params
from ..state import DistilledSteps
from .base import Method

# settings of the unrolled inner steps that DM has no use for: flag -> its neutral value
UNROLL_ONLY = {"window": 0, "minibatch": 0, "momentum": 0.0, "backward": "full",
               "labels": "fixed", "objective": "task", "eval_every": 0, "validation": 0}


class DistributionMatching(Method):
    name = "dm"
    summary = ("distribution matching (Zhao & Bilen 2023): per-class mean embeddings of real "
               "and synthetic images under random nets")
    inner_steps = False

    @classmethod
    def check(cls, config: Any) -> None:
        for name, neutral in UNROLL_ONLY.items():
            if getattr(config, name) != neutral:
                flag = "--" + name.replace("_", "-")
                raise DistillError(f"--method dm has no inner steps, so {flag} "
                                   f"{getattr(config, name)} would be ignored; drop {flag} "
                                   "(evaluate dm sets with `datadistill evaluate RUN "
                                   "--protocol converge`)")

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

    def loss(self, params: Params, steps: DistilledSteps, real_images: Tensor,
             real_labels: Tensor, generator: torch.Generator) -> Tensor:
        synthetic = steps.enlarged(steps.images).flatten(0, 1)
        classes = steps.labels.flatten(0, 1)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        total = real_images.new_zeros(len(next(iter(params.values()))))
        for c in classes.unique().tolist():
            with torch.no_grad():
                real = self._mean_embedding(params, real_images[real_labels == c], steps, seed)
            fake = self._mean_embedding(params, synthetic[classes == c], steps, seed)
            total = total + (real - fake).pow(2).sum(-1)
        total.sum().backward()
        return total.detach()

    def _mean_embedding(self, params: Params, images: Tensor, steps: DistilledSteps,
                        seed: int) -> Tensor:
        """(N, F): each net's mean embedding of ``images``, augmented by ``steps``' DSA
        drawn from ``seed`` (the same draw for real and synthetic images)."""
        if steps.augment is not None:
            images = steps.augment(images.unsqueeze(0), torch.Generator().manual_seed(seed))[0]
        return self.fmodel.features(params, images, train=True).mean(1)
