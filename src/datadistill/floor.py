"""The random-real floor: one definition, used by distill's final check, evaluate's floor
and ``baseline --method random --like RUN``.

The floor of a set is as many random real training images as the set holds, class for
class as the set's hard labels (the argmax of learned labels), in the set's layout, drawn
with the run's seed (purpose ``random-real``); with ``--downscale F`` each is stored at 1/F
of its side and enlarged back, as the set's images are. Under the few-step protocol it is
trained on the same held-out nets and epochs as the set's figure, and the best of the set's
own lrs and the paper's constant lrs is kept (lrs learned for synthetic images need not
suit real ones; DD-Ranking likewise searches the random subset's lr). Under the converge
protocol it is trained with the set's own settings.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .data import Dataset, relabel
from .evaluate import GRID_LRS, best_of_grid, schedule_evaluator
from .functional import FunctionalModel
from .init_distributions import InitDistribution
from .runtime import generator
from .selectors import check_real_images_suffice, images_for


def hard_labels(labels: Tensor) -> Tensor:
    """Class indices: the labels themselves, or the argmax of learned (..., K) labels."""
    return labels.argmax(-1) if labels.is_floating_point() else labels


def random_real_set(data: Dataset, labels: Tensor, seed: int,
                    downscale: int = 1) -> tuple[Tensor, Tensor]:
    """Random real training images (labels' layout, C, H, W), one per slot of ``labels``'
    hard class, and those hard labels."""
    hard = hard_labels(labels).to(data.train_images.device)
    counts = torch.bincount(hard.flatten().cpu(), minlength=data.num_classes)
    check_real_images_suffice(data, int(counts.max()))
    images = images_for("random", data, hard, generator(seed, "random-real"), downscale)
    return images, hard


def few_step_floor(fmodel: FunctionalModel, init: InitDistribution, data: Dataset,
                   images: Tensor, labels: Tensor, nets: int, seed: int, purpose: str,
                   lrs: Tensor | float, epochs: int, minibatch: int = 0, momentum: float = 0.0,
                   attack: tuple[int, int] | None = None,
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The floor's few-step figure: the best (and every) cell of the set's ``lrs`` (learned,
    or a constant) and the paper's constant lrs at the set's ``epochs``, on the ``nets``
    held-out nets that ``purpose`` draws (the set's own figure's)."""
    run = schedule_evaluator(fmodel, init, images, relabel(labels, attack), data.test_images,
                             data.test_labels, nets, seed, purpose, attack=attack,
                             minibatch=minibatch, momentum=momentum)
    if isinstance(lrs, Tensor):
        return best_of_grid(run, lrs.detach(), GRID_LRS, (epochs,))
    return best_of_grid(run, None, tuple(dict.fromkeys((lrs, *GRID_LRS))), (epochs,))
