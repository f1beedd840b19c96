"""Distribution matching (DM, Zhao & Bilen, WACV 2023): per class, the squared distance
between the mean embeddings of real and synthetic images under randomly initialised
networks, with the same DSA draw on both sides; no inner training, so no learned lrs.

The embedding is the input of the network's last linear layer (``FunctionalModel.features``),
so any ``nn.Module`` ending in one works. Real batches are class-balanced: each
meta-iteration takes ``--batch-size`` / classes images of every class.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..functional import Params
from ..state import DistilledSteps
from .base import Matching, augmented, draw_seed


class DistributionMatching(Matching):
    name = "dm"
    summary = ("distribution matching (Zhao & Bilen 2023): per-class mean embeddings of real "
               "and synthetic images under random nets")
    why = "has no inner steps"

    def loss(self, params: Params, steps: DistilledSteps, real_images: Tensor,
             real_labels: Tensor, generator: torch.Generator) -> Tensor:
        synthetic = steps.enlarged(steps.images).flatten(0, 1)
        classes = steps.labels.flatten(0, 1)
        total = real_images.new_zeros(len(next(iter(params.values()))))
        for c in classes.unique().tolist():
            seed = draw_seed(generator)  # one transform for the class's real and synthetic
            with torch.no_grad():
                real = self._mean_embedding(params, real_images[real_labels == c], steps, seed)
            fake = self._mean_embedding(params, synthetic[classes == c], steps, seed)
            total = total + (real - fake).pow(2).sum(-1)
        total.mean().backward()
        return total.detach()

    def _mean_embedding(self, params: Params, images: Tensor, steps: DistilledSteps,
                        seed: int) -> Tensor:
        """(N, F): each net's mean embedding of ``images``, augmented by ``steps``' DSA
        drawn from ``seed`` (the same draw for real and synthetic images)."""
        return self.fmodel.features(params, augmented(images, steps, seed), train=True).mean(1)
