"""Real-image baselines arranged like distilled steps (same steps, images per class)."""
from __future__ import annotations

import torch
from torch import Tensor

from .data import Dataset


def random_real_images(
    dataset: Dataset, steps: int, images_per_class: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random real training images: (steps, classes x ipc, C, H, W) and their labels."""
    labels_cpu = dataset.train_labels.cpu()
    picks = []
    for c in range(dataset.num_classes):
        members = torch.nonzero(labels_cpu == c).squeeze(1)
        order = torch.randperm(len(members), generator=generator)[: steps * images_per_class]
        picks.append(members[order].view(steps, images_per_class))
    index = torch.stack(picks, dim=1).reshape(steps, -1)  # class-major within each step
    images = dataset.train_images[index.to(dataset.train_images.device)]
    return images, dataset.train_labels[index.to(dataset.train_labels.device)]
