"""Image baselines: random real, average real, k-means centroids, herding."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..data import Dataset
from ..errors import DistillError
from ..registry import Registry

ImageBaseline = Callable[[Dataset, int, int, torch.Generator], tuple[Tensor, Tensor]]
IMAGE_BASELINES: Registry[ImageBaseline] = Registry("baseline")


def _class_images(data: Dataset, c: int) -> Tensor:
    return data.train_images[data.train_labels == c]


def _arrange(per_class: list[Tensor], steps: int, ipc: int, data: Dataset) -> tuple[Tensor, Tensor]:
    """Per-class stacks of steps*ipc images -> (steps, classes*ipc, ...) with class-major steps."""
    stacked = torch.stack([imgs.reshape(steps, ipc, *imgs.shape[1:]) for imgs in per_class], 1)
    images = stacked.reshape(steps, len(per_class) * ipc, *stacked.shape[3:])
    labels = torch.arange(len(per_class)).repeat_interleave(ipc).repeat(steps, 1)
    return images.contiguous(), labels.to(images.device)


def _each_class(data: Dataset, steps: int, ipc: int,
                select: Callable[[Tensor, int], Tensor]) -> tuple[Tensor, Tensor]:
    """Apply ``select(class_images, steps * ipc)`` to every class; arrange like distilled steps."""
    per_class = [select(_class_images(data, c), steps * ipc) for c in range(data.num_classes)]
    return _arrange(per_class, steps, ipc, data)


def check_real_images_suffice(data: Dataset, per_class: int) -> None:
    """Refuse a size that asks for more real images of a class than the training set holds
    (real starting images, the random-real comparison and the image baselines need them)."""
    counts = torch.bincount(data.train_labels.cpu(), minlength=data.num_classes)
    fewest = int(counts.argmin())
    if per_class > int(counts[fewest]):
        raise DistillError(
            f"--steps x --images-per-class asks for {per_class} images per class, but "
            f"{data.name} has only {int(counts[fewest])} training images of class "
            f"{data.class_names[fewest]}; lower --steps or --images-per-class")


@IMAGE_BASELINES.register("random")
def random_real(data: Dataset, steps: int, ipc: int, generator: torch.Generator):
    """The same number of random real training images per class."""
    def select(members: Tensor, k: int) -> Tensor:
        pick = torch.randperm(len(members), generator=generator)[:k]
        return members[pick.to(members.device)]

    return _each_class(data, steps, ipc, select)


@IMAGE_BASELINES.register("average")
def average_real(data: Dataset, steps: int, ipc: int, generator: torch.Generator):
    """The per-class mean image, reused in every step (and slot)."""
    return _each_class(data, steps, ipc,
                       lambda members, k: members.mean(0, keepdim=True).expand(k, -1, -1, -1))


@IMAGE_BASELINES.register("kmeans")
def kmeans_centroids(data: Dataset, steps: int, ipc: int, generator: torch.Generator):
    """Per class, k = steps*ipc k-means centroids (scikit-learn) as images."""
    from sklearn.cluster import KMeans

    def select(members: Tensor, k: int) -> Tensor:
        flat = members.reshape(len(members), -1).cpu().numpy().astype(np.float64)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(flat)
        centroids = torch.as_tensor(model.cluster_centers_, dtype=members.dtype)
        return centroids.view(-1, *members.shape[1:]).to(members.device)

    return _each_class(data, steps, ipc, select)


@IMAGE_BASELINES.register("herding")
def herding(data: Dataset, steps: int, ipc: int, generator: torch.Generator):
    """Per class, greedily pick real images whose running mean tracks the class mean (pixels)."""
    def select(members: Tensor, count: int) -> Tensor:
        flat = members.reshape(len(members), -1).double()
        target = flat.mean(0)
        chosen: list[int] = []
        running = torch.zeros_like(target)
        available = torch.ones(len(flat), dtype=torch.bool, device=flat.device)
        for k in range(1, count + 1):
            gaps = ((running * (k - 1) + flat) / k - target).norm(dim=1)
            gaps[~available] = float("inf")
            best = int(gaps.argmin())
            chosen.append(best)
            available[best] = False
            running = (running * (k - 1) + flat[best]) / k
        return members[torch.tensor(chosen, device=members.device)]

    return _each_class(data, steps, ipc, select)
