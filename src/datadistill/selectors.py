"""Image baselines: random real, average real, k-means centroids, herding.

Each is a per-class selector ``(class images, count, generator) -> count images``; placed by
a class layout (which class each slot of each step holds) they give baseline steps, and
starting images for distillation (``--image-init``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .data import Dataset, check_downscale
from .resize import multi_formed, stored_count
from .errors import DistillError
from .registry import Registry

Selector = Callable[[Tensor, int, torch.Generator], Tensor]
IMAGE_BASELINES: Registry[Selector] = Registry("baseline")


def class_layout(steps: int, classes: int, images_per_class: int = 1,
                 images_per_step: int = 0) -> Tensor:
    """The class of every slot (steps, n): each step ``images_per_class`` of every class in
    class order, or, with ``images_per_step``, that many slots whose classes go round the
    classes from step to step."""
    if images_per_step:
        slots = torch.arange(steps * images_per_step) % classes
        return slots.view(steps, images_per_step)
    return torch.arange(classes).repeat_interleave(images_per_class).repeat(steps, 1)


def images_for(method: str, data: Dataset, labels: Tensor, generator: torch.Generator,
               downscale: int = 1) -> Tensor:
    """Images (steps, n, C, H, W) for a class layout, chosen per class by the ``method``
    baseline (each class's images go to its slots in step order); ``downscale`` F: each
    stored at 1/F of its side and enlarged back (IDC's multi-formation)."""
    select = IMAGE_BASELINES.get(method)
    flat = labels.flatten().cpu()
    images = data.train_images.new_empty(len(flat), *data.image_shape)
    for c in range(data.num_classes):
        slots = (flat == c).nonzero().squeeze(1)
        if len(slots):
            members = data.train_images[data.train_labels == c]
            images[slots.to(images.device)] = select(members, len(slots), generator)
    return multi_formed(images.view(*labels.shape, *data.image_shape), downscale)


def baseline_images(method: str, data: Dataset, steps: int, images_per_class: int,
                    generator: torch.Generator, downscale: int = 1) -> tuple[Tensor, Tensor]:
    """A baseline in the distilled layout: images (steps, classes × ipc, ...) and labels.

    ``downscale`` F: F x F times as many images per class, each stored at 1/F of its side
    and enlarged back (the floor of a multi-formed set, IDC's multi-formation)."""
    per_class = stored_count(images_per_class, downscale)
    check_downscale(data, downscale)
    check_real_images_suffice(data, steps * per_class)
    labels = class_layout(steps, data.num_classes, per_class)
    images = images_for(method, data, labels, generator, downscale)
    return images, labels.to(data.train_images.device)


def random_real(data: Dataset, steps: int, images_per_class: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same number of random real training images per class."""
    return baseline_images("random", data, steps, images_per_class, generator)


def check_real_images_suffice(data: Dataset, per_class: int) -> None:
    """Refuse a size that asks for more real images of a class than the training set holds
    (real starting images, the random-real comparison and the image baselines need them)."""
    counts = torch.bincount(data.train_labels.cpu(), minlength=data.num_classes)
    fewest = int(counts.argmin())
    if per_class > int(counts[fewest]):
        raise DistillError(
            f"--steps x --images-per-class (x F x F for --downscale F) asks for {per_class} "
            f"images per class, but {data.name} has only {int(counts[fewest])} training images "
            f"of class {data.class_names[fewest]}; lower --steps, --images-per-class or "
            "--downscale")


@IMAGE_BASELINES.register("random")
def _random(members: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Random real images of the class."""
    pick = torch.randperm(len(members), generator=generator)[:count]
    return members[pick.to(members.device)]


@IMAGE_BASELINES.register("average")
def _average(members: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """The class's mean image in every slot."""
    return members.mean(0, keepdim=True).expand(count, *members.shape[1:])


@IMAGE_BASELINES.register("kmeans")
def _kmeans(members: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` k-means centroids of the class (scikit-learn) as images."""
    from sklearn.cluster import KMeans

    flat = members.reshape(len(members), -1).cpu().numpy().astype(np.float64)
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    model = KMeans(n_clusters=count, n_init=3, random_state=seed).fit(flat)
    centroids = torch.as_tensor(model.cluster_centers_, dtype=members.dtype)
    return centroids.view(-1, *members.shape[1:]).to(members.device)


@IMAGE_BASELINES.register("herding")
def _herding(members: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Real images of the class picked greedily so their running mean tracks the class mean."""
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
