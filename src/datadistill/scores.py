"""DD-Ranking's scores of a distilled set, and the test split's majority-class rate.

DD-Ranking (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation", 2025,
github.com/NUS-HPC-AI-Lab/DD-Ranking) separates what a set's images hold from what its labels
and augmentation add. Accuracies here are fractions in [0, 1], so the exponents below lie in
[-1, 1] and both scores in [0, 1]:

    HLR = acc(full training set, hard labels) - acc(set, hard labels)     hard-label recovery
    IOR = acc(set, its own evaluation) - acc(random real, same evaluation) improvement over random
    LRS = (exp(w * IOR - (1 - w) * HLR) - exp(-1)) / (e - exp(-1)),      w = 0.5
    ARS = (exp(g * gap_aug + (1 - g) * gap_plain) - exp(-1)) / (e - exp(-1)), g = 0.5
          gap = acc(set) - acc(random real), with and without augmentation.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

LRS_WEIGHT = 0.5  # DD-Ranking's lrs_lambda: IOR and HLR weigh the same
ARS_WEIGHT = 0.5  # DD-Ranking's ars_lambda: with and without augmentation weigh the same


def majority_class_rate(labels: Tensor) -> float:
    """The fraction of the most common label: what always answering that class scores."""
    return float(torch.bincount(labels.flatten().cpu()).max()) / labels.numel()


def normalised(exponent: float) -> float:
    """DD-Ranking's map of an exponent in [-1, 1] onto [0, 1]."""
    return (math.exp(exponent) - math.exp(-1)) / (math.e - math.exp(-1))


def label_robust_score(ior: float, hlr: float, weight: float = LRS_WEIGHT) -> float:
    """LRS from the improvement over random and the hard-label recovery."""
    return normalised(weight * ior - (1 - weight) * hlr)


def augmentation_robust_score(gap_augmented: float, gap_plain: float,
                              weight: float = ARS_WEIGHT) -> float:
    """ARS from the set-minus-random gaps with and without augmentation."""
    return normalised(weight * gap_augmented + (1 - weight) * gap_plain)


def dd_ranking(accuracy: float, hard: float, floor: float, full_data: float | None,
               gaps: tuple[float, float] | None) -> dict[str, Any]:
    """HLR, IOR, LRS and ARS from the figures of one evaluation: the set's ``accuracy`` (its
    own labels and augmentation), its ``hard``-label one, the random-real ``floor`` (same
    evaluation), the full training set's (None: unknown) and, where augmentation can be
    switched, the set-minus-floor ``gaps`` (with augmentation, without). A score that cannot
    be computed is None, with its reason."""
    ior = accuracy - floor
    scores: dict[str, Any] = {"ior": ior, "hlr": None, "lrs": None, "ars": None,
                              "lrs_weight": LRS_WEIGHT, "ars_weight": ARS_WEIGHT}
    if full_data is None:
        scores["lrs_unavailable"] = ("no full-data accuracy: pass --full-data-accuracy X "
                                     "(or --full-data under --protocol converge)")
    else:
        scores["hlr"] = full_data - hard
        scores["lrs"] = label_robust_score(ior, scores["hlr"])
    if gaps is None:
        scores["ars_unavailable"] = "the few-step protocol trains without augmentation"
    else:
        scores["ars"] = augmentation_robust_score(*gaps)
    return scores
