"""What `evaluate` reports beside a set's accuracy: the set with hard labels, with and
without augmentation, its random-real floor (``floor.py``) under the same evaluation,
DD-Ranking's scores (``scores.py``) and, under the converge protocol, an optional lr search
on held-out training images."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .data import Dataset, hold_out
from .errors import DistillError
from .evaluate import (HELD_OUT, ConvergeSetting, FewStepSetting, attack_of, converge_setting,
                       few_step_record, few_step_setting)
from .floor import few_step_floor, hard_labels, random_real_set
from .runtime import generator
from .scores import dd_ranking, majority_class_rate

LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # the lr search's grid, around the settings' lr
SEARCH_IMAGES = 1000  # at most this many training images held out to score the lr search


@dataclass(frozen=True)
class Scoring:
    """Which figures an evaluation adds to the set's accuracy."""

    plain: bool = False  # only the accuracy and the majority-class rate
    full_data_accuracy: float | None = None  # the full training set's accuracy, for HLR/LRS
    full_data: bool = False  # converge: compute that accuracy (nets on the whole training set)
    lr_search: bool = False  # converge: pick the lr on held-out training images

    def check(self, protocol: str) -> None:
        """One-line refusals of combinations that cannot work."""
        given = self.full_data_accuracy
        if given is not None and not 0 < given <= 1:
            raise DistillError(f"--full-data-accuracy is a fraction in (0, 1], got {given}; "
                               "e.g. 0.99 for 99 %")
        if self.plain and (given is not None or self.full_data):
            raise DistillError("--plain skips the scores that the full-data accuracy feeds; "
                               "drop --plain or the full-data flag")
        if given is not None and self.full_data:
            raise DistillError("--full-data computes what --full-data-accuracy gives; pass one")
        if protocol != "converge":
            for flag, value in (("--full-data", self.full_data), ("--lr-search", self.lr_search)):
                if value:
                    raise DistillError(f"{flag} belongs to the converge protocol; add "
                                       "--protocol converge")


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """Accuracy mean, std and nets of a result's summary."""
    return {key: summary[key] for key in ("accuracy_mean", "accuracy_std", "nets")}


# --------------------------------------------------------------------------- few-step
def few_step_scored(run: str | Path, scoring: Scoring = Scoring(),
                    **options: Any) -> dict[str, Any]:
    """``evaluate``'s record (``options`` are its arguments) with the figures ``scoring``
    asks for; the wall time covers them all."""
    start = time.perf_counter()
    scoring.check("few-step")
    setting = few_step_setting(run, **options)
    record = {"run": str(run), **few_step_record(setting, options.get("backend", "auto"))}
    if not scoring.plain:
        record.update(few_step_extras(setting, record["after"], scoring))
    return {**record, "wall_time_s": time.perf_counter() - start}


def few_step_extras(setting: FewStepSetting, after: dict[str, Any],
                    scoring: Scoring) -> dict[str, Any]:
    """Hard labels, the (absent) augmentation, the random-real floor and the scores."""
    if setting.labels.is_floating_point():
        hard = brief(setting.figure(hard_labels(setting.labels)).after.summary())
    else:
        hard = {**brief(after), "same_as_main": "the set's labels are hard"}
    config = setting.config
    images, labels = random_real_set(setting.data, setting.labels, config["seed"],
                                     config.get("downscale", 1))
    best, _ = few_step_floor(setting.fmodel, setting.init, setting.data, images, labels,
                             setting.nets, config["seed"], HELD_OUT, setting.lrs,
                             setting.epochs, config.get("minibatch", 0),
                             config.get("momentum", 0.0), attack_of(config))
    floor = {**brief(best), "images": labels.numel(), "seed": config["seed"], "lr": best["lr"],
             "epochs": best["epochs"]}
    full = _given_full_data(scoring)
    return {"hard_labels": hard,
            "no_augmentation": {**brief(after), "same_as_main":
                                "the few-step protocol trains without augmentation"},
            "random_real": floor, "full_data": full,
            "scores": dd_ranking(after["accuracy_mean"], hard["accuracy_mean"],
                                 floor["accuracy_mean"], _accuracy(full), None)}


# --------------------------------------------------------------------------- converge
def converge_scored(run: str | Path, scoring: Scoring = Scoring(),
                    **options: Any) -> dict[str, Any]:
    """``evaluate_converge``'s record (``options`` are its arguments) with the figures
    ``scoring`` asks for (the lr search first: its lr is then every figure's)."""
    start = time.perf_counter()
    scoring.check("converge")
    setting = converge_setting(run, **options)
    search = lr_search(setting) if scoring.lr_search else None
    if search is not None:
        setting = setting_with_lr(setting, search["chosen_lr"])
    record = {"run": str(run), **setting.report(),
              "majority_class_rate": majority_class_rate(setting.data.test_labels)}
    if search is not None:
        record["lr_search"] = search
    if not scoring.plain:
        record.update(converge_extras(setting, record["after"], scoring))
    return {**record, "wall_time_s": time.perf_counter() - start}


def converge_extras(setting: ConvergeSetting, after: dict[str, Any],
                    scoring: Scoring) -> dict[str, Any]:
    """Hard labels, the other augmentation setting, the floor under both, the scores."""
    other = setting.report(dsa=not setting.dsa)["after"]
    augmented, plain = (after, other) if setting.dsa else (other, after)
    if setting.labels.is_floating_point():
        hard = brief(setting.report(labels=hard_labels(setting.labels))["after"])
    else:
        hard = {**brief(after), "same_as_main": "the set's labels are hard"}
    images, labels = random_real_set(setting.data, setting.labels, setting.seed,
                                     setting.downscale)
    floor_augmented = setting.report(images, labels, dsa=True)["after"]
    floor_plain = setting.report(images, labels, dsa=False)["after"]
    floor_same = floor_augmented if setting.dsa else floor_plain
    full = _given_full_data(scoring) or (_computed_full_data(setting) if scoring.full_data
                                         else None)
    gaps = (augmented["accuracy_mean"] - floor_augmented["accuracy_mean"],
            plain["accuracy_mean"] - floor_plain["accuracy_mean"])
    return {"hard_labels": hard, "with_augmentation": brief(augmented),
            "no_augmentation": brief(plain),
            "random_real": {**brief(floor_same), "images": labels.numel(), "seed": setting.seed,
                            "with_augmentation": brief(floor_augmented),
                            "no_augmentation": brief(floor_plain)},
            "full_data": full,
            "scores": dd_ranking(after["accuracy_mean"], hard["accuracy_mean"],
                                 floor_same["accuracy_mean"], _accuracy(full), gaps)}


def _computed_full_data(setting: ConvergeSetting) -> dict[str, Any]:
    """The setting's nets trained on the whole training set (its hard labels)."""
    data = setting.data
    result = setting.report(data.train_images, data.train_labels)["after"]
    return {**brief(result), "source": "computed: the whole training set, the same settings"}


def _given_full_data(scoring: Scoring) -> dict[str, Any] | None:
    if scoring.full_data_accuracy is None:
        return None
    return {"accuracy_mean": scoring.full_data_accuracy, "source": "--full-data-accuracy"}


def _accuracy(full: dict[str, Any] | None) -> float | None:
    return None if full is None else full["accuracy_mean"]


def lr_search(setting: ConvergeSetting) -> dict[str, Any]:
    """Each lr of ``LR_FACTORS`` x the settings' lr scored by the setting's nets on held-out
    TRAINING images (never the test split); the best is ``chosen_lr`` (of tied ones, the
    nearest to the settings' lr)."""
    held = search_split(setting.data, setting.seed)
    grid = [setting.settings.lr * factor for factor in LR_FACTORS]
    scores = [setting_with_lr(setting, lr).report(data=held)["after"]["accuracy_mean"]
              for lr in grid]
    best = max(range(len(grid)), key=lambda i: (scores[i], -abs(math.log(LR_FACTORS[i]))))
    return {"lrs": grid, "held_out_accuracy": scores, "chosen_lr": grid[best],
            "held_out_images": int(held.test_labels.numel())}


def setting_with_lr(setting: ConvergeSetting, lr: float) -> ConvergeSetting:
    return replace(setting, settings=replace(setting.settings, lr=lr))


def search_split(data: Dataset, seed: int) -> Dataset:
    """Held-out training images as the test split of a dataset (the real test split gone)."""
    count = min(SEARCH_IMAGES, max(1, len(data.train_labels) // 10))
    _, held = hold_out(data, count, generator(seed, "lr-search"))
    return held
