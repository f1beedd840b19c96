"""Run a baseline with the paper's protocol: best of the lr × epochs grid on held-out nets."""
from __future__ import annotations

import itertools
import statistics
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..config import BASELINE_METHODS as METHODS  # noqa: F401 (`baseline --method` names)
from ..data import Dataset, relabel
from ..errors import DistillError
from ..evaluate import GRID_EPOCHS, EvalResult, best_of_grid, schedule, schedule_evaluator
from ..functional import FunctionalModel
from ..init_distributions import InitDistribution
from ..progress import phase_bar
from ..runtime import generator
from ..selectors import baseline_images
from .knn import knn_accuracy

# the DistillConfig fields a baseline takes as flags when not --like a run
SETTINGS = ("dataset", "data_root", "model", "init_scheme", "pool", "steps", "distill_epochs",
            "images_per_class", "downscale", "minibatch", "seed", "device", "backend")
Chooser = Callable[..., tuple[Tensor, Tensor]]  # (method, generator=) -> images, labels


def run_baseline(
    method: str,
    data: Dataset,
    fmodel: FunctionalModel,
    init: InitDistribution,
    steps: int,
    images_per_class: int,
    learned_lrs: Tensor | None = None,
    nets: int = 200,
    search_nets: int = 20,
    sets: int = 10,
    seed: int = 0,
    attack: tuple[int, int] | None = None,
    minibatch: int = 0,
    epochs: Sequence[int] = GRID_EPOCHS,
    momentum: float = 0.0,
    downscale: int = 1,
) -> tuple[Tensor, Tensor, list[float], dict[str, Any]]:
    """Images, labels, chosen lrs and a report (best grid cell, all cells, final mean ± std).

    The lr × epochs grid is searched on ``search_nets`` held-out nets; the best cell is then
    evaluated on ``nets`` other held-out nets. ``optimized`` draws ``sets`` random real sets,
    keeps the best 20 % by accuracy on training data, and evaluates those; the k-NN methods
    report the best of l1/l2 × K∈{1,3}, mean ± std over ``sets`` draws. With an ``attack``
    (K, T) the chosen real images of class K are labelled T (label flipping), and cells are
    ranked by accuracy w.r.t. the modified labels. ``minibatch``: images per inner step, as
    the distillation run trained with (0: each step's whole batch); ``epochs``: the passes
    the grid tries (``evaluate.grid_epochs`` of a run's setting); ``momentum``: the inner
    steps' heavy-ball β, as the run trained with; ``downscale`` F: F x F times as many real
    images per class, each stored at 1/F of its side and enlarged back (a multi-formed run's
    floor, IDC's multi-formation).
    """
    choose = partial(baseline_images, data=data, steps=steps, images_per_class=images_per_class,
                     downscale=downscale)
    if method.startswith("knn-"):
        if attack is not None:
            raise DistillError("k-NN baselines take no GD step, so they do not apply to an attack")
        return _knn(method, choose, data, sets, seed)
    gen = generator(seed, f"baseline-{method}")
    images, labels = choose("random" if method == "optimized" else method, generator=gen)
    labels = relabel(labels, attack)

    def on_test(imgs: Tensor, lbls: Tensor, n: int, purpose: str):
        return schedule_evaluator(fmodel, init, imgs, lbls, data.test_images, data.test_labels,
                                  n, seed, purpose, attack, minibatch, momentum)

    # an attack is one GD step (Figure 6), so only the lrs are searched there
    best, grid = best_of_grid(on_test(images, labels, search_nets, "held-out-search"), learned_lrs,
                              epochs=(1,) if attack else epochs)
    lr = learned_lrs if best["lr"] == "learned" else float(best["lr"])
    report: dict[str, Any] = {"method": method, "best": {"lr": best["lr"], "epochs": best["epochs"]},
                              "grid": grid, "search_nets": search_nets}
    if method == "optimized":
        images, labels, final = _optimized(data, fmodel, init, choose, lr, best["epochs"], nets,
                                           search_nets, sets, gen, seed, attack, minibatch,
                                           momentum)
        report["sets"] = sets
    else:
        with phase_bar(1, f"evaluation on {nets} held-out nets", "run"):
            final = on_test(images, labels, nets, "held-out")(lr, best["epochs"])
    report["final"] = final.summary()
    lrs = [step[2] for step in schedule(images, labels, lr, best["epochs"])]
    return images, labels, lrs, report


def _optimized(data, fmodel, init, choose: Chooser, lr, n_epochs, nets, search_nets, sets, gen,
               seed, attack, minibatch, momentum):
    """Best 20 % of random real sets by training-set accuracy, evaluated on the test set
    (trained with the run's minibatches and momentum)."""
    score_gen = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(data.train_labels), generator=score_gen)[:5000]
    subset = subset.to(data.train_images.device)
    candidates = []
    bar = phase_bar(sets, f"optimized real: scoring {sets} random sets", "set")
    for _ in range(sets):
        images, labels = choose("random", generator=gen)
        labels = relabel(labels, attack)
        summary = schedule_evaluator(fmodel, init, images, labels, data.train_images[subset],
                                     data.train_labels[subset], search_nets, seed,
                                     "optimized-score", attack, minibatch,
                                     momentum)(lr, n_epochs).summary()
        score = summary.get("modified_accuracy_mean", summary["accuracy_mean"])
        candidates.append((score, images, labels))
        bar.update()
    bar.close()
    candidates.sort(key=lambda c: c[0], reverse=True)
    kept = candidates[: max(1, round(0.2 * sets))]
    per_set = max(1, nets // len(kept))
    results = [schedule_evaluator(fmodel, init, imgs, lbls, data.test_images, data.test_labels,
                                  per_set, seed, f"held-out-{i}", attack, minibatch,
                                  momentum)(lr, n_epochs)
               for i, (_, imgs, lbls) in enumerate(kept)]
    return kept[0][1], kept[0][2], EvalResult.cat(results)


def _knn(method: str, choose: Chooser, data: Dataset, sets: int, seed: int):
    gen = generator(seed, f"baseline-{method}")
    draws = [choose(method.removeprefix("knn-"), generator=gen) for _ in range(sets)]
    cells = []
    for k, metric in itertools.product((1, 3), ("l1", "l2")):
        accs = [knn_accuracy(imgs.flatten(0, 1), lbls, data.test_images, data.test_labels, k, metric)
                for imgs, lbls in draws]
        cells.append({"k": k, "metric": metric, "accuracy_mean": statistics.mean(accs),
                      "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                      "draws": len(accs)})
    best = max(cells, key=lambda c: c["accuracy_mean"])
    report = {"method": method, "best": {"k": best["k"], "metric": best["metric"]},
              "grid": cells, "final": best}
    images, labels = draws[0]
    return images, labels, [], report  # k-NN takes no GD steps
