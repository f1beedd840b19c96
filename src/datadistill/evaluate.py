"""Held-out evaluation: fresh networks drawn, trained on the distilled data and tested.

Two protocols. The paper's (few-step, the default): K held-out nets from the initialization
distribution, trained on the steps with the learned (or a constant) lr for some epochs,
tested on the full test set; mean ± std over the nets. Baselines take the best of an
lr × epochs grid. The modern one (converge, ``converge``): fresh nets of any registered
architecture trained to convergence on the steps' images as one flat set.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .artifacts import ARTIFACT_FILE, Distilled, atomic_write, load
from .augment import dsa_for
from .converge import ConvergeSettings, evaluate_converged
from .data import Dataset, is_known_dataset, load_dataset
from .distributed import World, current
from .errors import DistillError
from .functional import FunctionalModel, Params
from .init_distributions import FixedInit, InitDistribution, PooledInit
from .models import build_model
from .nets import EvalResult, Step, schedule, test_nets, train_nets
from .pools import initial_weights
from .progress import phase_bar
from .runtime import generator, resolve_device
from .scores import majority_class_rate

GRID_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)  # the paper's constant lrs for baselines
GRID_EPOCHS = (1, 3, 5)
EVALUATIONS = "evaluations"  # RUN/evaluations/NAME.json: the saved reports of evaluate


def grid_epochs(steps: int, distill_epochs: int) -> tuple[int, ...]:
    """The passes a baseline's grid tries in a run's setting: the paper's 1, 3 and 5 over
    per-step batches; for a flat set (one batch, a pass is one inner step) T/4, T/2, T and 2T
    inner steps around the run's own T = ``distill_epochs``."""
    if steps > 1 or distill_epochs <= max(GRID_EPOCHS):
        return GRID_EPOCHS
    return tuple(sorted({max(1, distill_epochs // 4), max(1, distill_epochs // 2),
                         distill_epochs, 2 * distill_epochs}))


@dataclass
class Evaluation:
    """Held-out nets after training on the steps, and (optionally) before it and on a
    second test set (the same trained nets; not in ``summary``)."""

    after: EvalResult
    before: EvalResult | None = None
    also: EvalResult | None = None

    def summary(self) -> dict[str, Any]:
        out = {"after": self.after.summary()}
        if self.before is not None:
            out["before"] = self.before.summary()
        return out


def evaluate_steps(
    fmodel: FunctionalModel,
    init: InitDistribution,
    steps: Sequence[Step],
    test_images: Tensor,
    test_labels: Tensor,
    nets: int,
    generator: torch.Generator,
    nets_per_batch: int = 25,
    test_before: bool = False,
    attack: tuple[int, int] | None = None,
    momentum: float = 0.0,
    also_test: tuple[Tensor, Tensor] | None = None,
) -> Evaluation:
    """Sample ``nets`` initial weights, train each on ``steps`` (heavy-ball ``momentum``
    when above 0), and test them (and the same trained nets on ``also_test``'s images and
    labels, when given).

    From a pool of trained models, each model is taken once, in order (at most ``nets``); a
    fixed init is one net, whatever ``nets`` says (every copy would train alike). Under torchrun each rank trains and tests its share of the nets; every rank gets all
    results. The nets drawn do not depend on the number of ranks.
    """
    finite = isinstance(init, PooledInit)
    if finite:
        nets = min(nets, len(init))
    elif isinstance(init, FixedInit):
        nets = 1
    world = current()
    mine = world.share(nets)
    parts: dict[str, list[EvalResult]] = {"after": [], "before": [], "also": []}
    for start in range(0, nets, nets_per_batch):
        n = min(nets_per_batch, nets - start)
        drawn = init.take(start, n) if finite else init.sample(n, generator)
        lo, hi = max(start, mine.start), min(start + n, mine.stop)
        if lo >= hi:
            continue  # none of this batch is ours (the draw above keeps the generator in step)
        params = {k: v[lo - start:hi - start].to(test_images.device) for k, v in drawn.items()}
        if test_before:
            parts["before"].append(test_nets(fmodel, params, test_images, test_labels))
        trained = train_nets(fmodel, params, steps, momentum)
        parts["after"].append(test_nets(fmodel, trained, test_images, test_labels))
        if also_test is not None:
            parts["also"].append(test_nets(fmodel, trained, *also_test))
    classes = _num_outputs(fmodel, init, test_images)

    def gathered(part: str, wanted: bool) -> EvalResult | None:
        return _gather(parts[part], mine, nets, classes, world, attack) if wanted else None

    return Evaluation(gathered("after", True), gathered("before", test_before),
                      gathered("also", also_test is not None))


def _num_outputs(fmodel: FunctionalModel, init: InitDistribution, images: Tensor) -> int:
    """The number of classes the model outputs (from one forward of one image)."""
    one = init.take(0, 1) if isinstance(init, PooledInit) else init.sample(1, torch.Generator())
    with torch.no_grad():
        return fmodel.logits({k: v.to(images.device) for k, v in one.items()},
                             images[:1], train=False).shape[-1]


def _gather(parts: list[EvalResult], mine: range, nets: int, classes: int, world: World,
            attack: tuple[int, int] | None) -> EvalResult:
    """All ranks' results in net order (this rank's parts fill ``mine``; a sum joins them)."""
    losses = torch.zeros(nets)
    confusion = torch.zeros(nets, classes, classes, dtype=torch.long)
    if parts:
        losses[mine.start:mine.stop] = torch.cat([p.losses for p in parts])
        confusion[mine.start:mine.stop] = torch.cat([p.confusion for p in parts])
    return EvalResult(world.sum_(losses), world.sum_(confusion), attack)


def schedule_evaluator(
    fmodel: FunctionalModel, init: InitDistribution, images: Tensor, labels: Tensor,
    test_images: Tensor, test_labels: Tensor, nets: int, seed: int, purpose: str,
    attack: tuple[int, int] | None = None, minibatch: int = 0, momentum: float = 0.0,
) -> Callable[[Tensor | float, int], EvalResult]:
    """``(lr, epochs) -> EvalResult`` for fixed images, the same ``nets`` held-out nets each call."""
    def run(lr: Tensor | float, epochs: int) -> EvalResult:
        return evaluate_steps(fmodel, init, schedule(images, labels, lr, epochs, minibatch),
                              test_images,
                              test_labels, nets, generator(seed, purpose), attack=attack,
                              momentum=momentum).after

    return run


def best_of_grid(
    evaluate_schedule: Callable[[Tensor | float, int], EvalResult],
    learned_lrs: Tensor | None,
    lrs: Sequence[float] = GRID_LRS,
    epochs: Sequence[int] = GRID_EPOCHS,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Try every lr (the learned ones first, when given) × epochs; return the best and all rows.

    The best is the highest accuracy, or for an attack the accuracy w.r.t. modified labels.
    """
    options: list[tuple[str, Tensor | float]] = [("learned", learned_lrs)] if learned_lrs is not None else []
    options += [(str(lr), lr) for lr in lrs]
    rows = []
    with phase_bar(len(options) * len(epochs), "grid search (lr x epochs)", "cell") as bar:
        for name, lr in options:
            for n_epochs in epochs:
                result = evaluate_schedule(lr, n_epochs)
                rows.append({"lr": name, "epochs": n_epochs, **result.summary()})
                bar.update()
    best = max(rows, key=lambda row: row.get("modified_accuracy_mean", row["accuracy_mean"]))
    return best, rows


def context_for(distilled: Distilled, data_root: str | None = None, device: str = "auto",
                data: Dataset | None = None, pool: str | None = None,
                module: nn.Module | None = None, backend: str = "auto",
                ) -> tuple[Dataset, FunctionalModel, InitDistribution]:
    """The dataset, model and held-out initial-weight distribution an artifact was made for.

    A fixed init (random or pretrained) is its stored weights; a pretrained-random artifact is
    evaluated on the held-out models of its pool (``pool`` overrides the stored path). An
    artifact made for a module the user brought needs that module passed again.
    """
    meta = distilled.meta
    if module is None and meta["model"].get("name") is None:
        raise DistillError(
            f"this artifact was distilled for your own module ({meta['model']['class']}), which "
            "cannot be rebuilt from the file; evaluate it from Python: "
            "datadistill.evaluate(RUN, module=YourModule(), data=...)")
    dataset = meta["dataset"]["name"]
    if data is None and not is_known_dataset(dataset):
        raise DistillError(f"this artifact was distilled on a dataset of your own ({dataset!r}); "
                           "evaluate it from Python: datadistill.evaluate(RUN, data=your_dataset)")
    return build_context(meta["config"], dataset, meta["model"].get("name"),
                         distilled.init, data_root, device, data, pool, module, backend)


def build_context(config: dict[str, Any], dataset: str, model: str | None,
                  fixed: Params | None, data_root: str | None, device: str,
                  data: Dataset | None, pool: str | None, module: nn.Module | None,
                  backend: str = "auto") -> tuple[Dataset, FunctionalModel, InitDistribution]:
    """Dataset, model (run by ``backend``) and held-out p(θ0) of a setting: ``fixed``
    weights, the held-out models of a pool (pretrained-random), or fresh random draws."""
    dev = resolve_device(device)
    data = (data or load_dataset(dataset, data_root or config["data_root"])).to(dev)
    module = (module or build_model(model or data.default_model, data.image_shape,
                                    data.num_classes)).to(dev)
    _, init, _ = initial_weights(config, module, data, generator(config["seed"], "init"), fixed,
                                 pool)
    return data, FunctionalModel(module, backend), init


def attack_of(config: dict[str, Any]) -> tuple[int, int] | None:
    if config.get("objective") == "attack":
        return config["attack_class"], config["target_class"]
    return None


@dataclass
class FewStepSetting:
    """A run's few-step evaluation: its context, the steps' images and labels, the lrs
    (learned, or a constant) and epochs, and the held-out nets; ``figure`` trains and tests
    them on other images or labels in the same way (hard labels, the random-real floor)."""

    data: Dataset
    fmodel: FunctionalModel
    init: InitDistribution
    images: Tensor  # (S, n, C, H, W)
    labels: Tensor  # (S, n) classes or (S, n, K) learned labels
    lrs: Tensor | float
    epochs: int
    nets: int
    config: dict[str, Any]

    def figure(self, labels: Tensor | None = None, test_before: bool = False) -> Evaluation:
        """The held-out nets trained on the steps (with ``labels`` instead of the set's)."""
        test = self.data.test_images
        steps = schedule(self.images, self.labels if labels is None else labels.to(test.device),
                         self.lrs, self.epochs, self.config.get("minibatch", 0))
        return evaluate_steps(self.fmodel, self.init, steps, test, self.data.test_labels,
                              self.nets, generator(self.config["seed"], HELD_OUT),
                              test_before=test_before, attack=attack_of(self.config),
                              momentum=self.config.get("momentum", 0.0))


HELD_OUT = "held-out"  # the generator purpose of evaluate's held-out nets


def few_step_setting(run: str | Path, nets: int = 200, lr: float | None = None,
                     epochs: int | None = None, data_root: str | None = None,
                     device: str = "auto", pool: str | None = None,
                     module: nn.Module | None = None, data: Dataset | None = None,
                     backend: str = "auto") -> FewStepSetting:
    """The few-step evaluation of a run folder, checked and loaded (see ``evaluate``)."""
    check_evaluation_settings(nets, lr, epochs)
    distilled = load(run)
    if distilled.num_steps == 0 and None in (lr, epochs):
        raise DistillError(f"{run} holds no learning rates (a k-NN baseline, a converge-protocol "
                           "baseline, an imported set or a dm/dc/dsa set); evaluate it with --protocol converge, "
                           "or give --lr and --epochs")
    data, fmodel, init = context_for(distilled, data_root, device, data, pool, module, backend)
    dev = data.test_images.device
    return FewStepSetting(data, fmodel, init, distilled.images.to(dev), distilled.labels.to(dev),
                          distilled.lrs if lr is None else lr,
                          epochs or distilled.num_steps // distilled.images.shape[0],
                          1 if distilled.init is not None else nets, distilled.meta["config"])


def evaluate(run: str | Path, nets: int = 200, lr: float | None = None, epochs: int | None = None,
             data_root: str | None = None, device: str = "auto", pool: str | None = None,
             module: nn.Module | None = None, data: Dataset | None = None,
             backend: str = "auto") -> dict[str, Any]:
    """Held-out evaluation of a run folder: ``nets`` fresh nets from its init distribution.

    The steps are applied with the learned lrs (or the constant ``lr``) for the distilled
    number of epochs (or ``epochs``). Nets of a random-init artifact are drawn with seeds
    disjoint from distillation's; a fixed-init artifact is evaluated on its stored weights, a
    pretrained-random one on the held-out models of its pool (at most ``nets``). ``module``
    and ``data`` stand in for the registered model and dataset (required for an artifact
    distilled with a module of your own).
    """
    start = time.perf_counter()
    setting = few_step_setting(run, nets, lr, epochs, data_root, device, pool, module, data,
                               backend)
    return {"run": str(run), **few_step_record(setting, backend),
            "wall_time_s": time.perf_counter() - start}


def few_step_record(setting: FewStepSetting, backend: str) -> dict[str, Any]:
    """The few-step figure of a setting (before and after training) and the test split's
    majority-class rate."""
    result = setting.figure(test_before=True)
    lr = setting.lrs
    return {"protocol": "few-step", "dataset": setting.data.name,
            "lr": "learned" if isinstance(lr, Tensor) else lr, "epochs": setting.epochs,
            "backend": backend, **result.summary(),
            "majority_class_rate": majority_class_rate(setting.data.test_labels)}


def check_evaluation_settings(nets: int, lr: float | None, epochs: int | None) -> None:
    """One-line errors for held-out evaluation settings that cannot work."""
    if nets < 1:
        raise DistillError(f"--nets must be at least 1, got {nets}")
    if lr is not None and not lr > 0:
        raise DistillError(f"--lr must be positive, got {lr}")
    if epochs is not None and epochs < 1:
        raise DistillError(f"--epochs must be at least 1, got {epochs}")


@dataclass
class ConvergeSetting:
    """A run's converge-protocol evaluation: its context, the set's images and labels as one
    flat set, and the nets and settings; ``report`` trains and tests in the same way on
    other images, labels, augmentation, settings or test data."""

    data: Dataset
    fmodel: FunctionalModel
    init: InitDistribution
    images: Tensor  # (N, C, H, W)
    labels: Tensor  # (N,) classes or (N, K) learned labels
    nets: int
    settings: ConvergeSettings
    dsa: bool
    dsa_ops: str
    seed: int
    model: str
    downscale: int = 1  # the set's --downscale: its random-real floor is multi-formed alike

    def report(self, images: Tensor | None = None, labels: Tensor | None = None,
               dsa: bool | None = None, data: Dataset | None = None) -> dict[str, Any]:
        """``converge_report`` of the setting, with the given parts replaced."""
        return converge_report(data or self.data, self.fmodel, self.init,
                               self.images if images is None else images,
                               self.labels if labels is None else labels, self.nets,
                               self.settings, self.dsa if dsa is None else dsa, self.dsa_ops,
                               self.seed, self.model)


def converge_setting(run: str | Path, nets: int = 5, model: str | None = None,
                     settings: ConvergeSettings = ConvergeSettings(), dsa: bool = False,
                     dsa_ops: str = "", init_scheme: str = "default",
                     data_root: str | None = None, device: str = "auto",
                     data: Dataset | None = None, backend: str = "auto") -> ConvergeSetting:
    """The converge-protocol evaluation of a run folder, checked and loaded (see
    ``evaluate_converge``)."""
    check_evaluation_settings(nets, None, None)
    settings.check()
    distilled = load(run)
    meta = distilled.meta
    name = model or meta["model"].get("name")
    if name is None:
        raise DistillError(f"{run} was distilled for your own module; pass --model NAME "
                           "(a registered architecture) to evaluate it")
    data, fmodel, init = build_context({**meta["config"], "init": "random",
                                        "init_scheme": init_scheme},
                                       meta["dataset"]["name"], name, None, data_root, device,
                                       data, None, None, backend)
    return ConvergeSetting(data, fmodel, init, distilled.images.flatten(0, 1),
                           distilled.labels.flatten(0, 1), nets, settings, dsa, dsa_ops,
                           meta["config"]["seed"], name, meta["config"].get("downscale", 1))


def evaluate_converge(run: str | Path, nets: int = 5, model: str | None = None,
                      settings: ConvergeSettings = ConvergeSettings(), dsa: bool = False,
                      dsa_ops: str = "", init_scheme: str = "default",
                      data_root: str | None = None, device: str = "auto",
                      data: Dataset | None = None, backend: str = "auto") -> dict[str, Any]:
    """The converge protocol on a run folder: ``nets`` fresh nets of ``model`` (default: the
    one it was distilled with, run by ``backend``) trained to convergence on its images as one flat set, with
    DSA when ``dsa``; mean ± std, per-class accuracy, the learning curve and the test
    split's majority-class rate."""
    start = time.perf_counter()
    setting = converge_setting(run, nets, model, settings, dsa, dsa_ops, init_scheme, data_root,
                               device, data, backend)
    return {"run": str(run), **setting.report(),
            "majority_class_rate": majority_class_rate(setting.data.test_labels),
            "wall_time_s": time.perf_counter() - start}


def converge_report(data: Dataset, fmodel: FunctionalModel, init: InitDistribution,
                    images: Tensor, labels: Tensor, nets: int, settings: ConvergeSettings,
                    dsa: bool, dsa_ops: str, seed: int, model: str) -> dict[str, Any]:
    """Nets trained to convergence on the flat set ``images`` and tested: the report."""
    augment = dsa_for(data.class_names, dsa_ops) if dsa else None
    dev = data.test_images.device
    converged = evaluate_converged(fmodel, init, images.to(dev), labels.to(dev),
                                   data.test_images, data.test_labels, nets, settings, augment,
                                   generator(seed, "converge"))
    return {"protocol": "converge", "dataset": data.name, "images": int(images.shape[0]),
            "model": model, "settings": asdict(settings), "backend": fmodel.backend,
            "runner": converged.runner,
            "dsa": list(augment.ops) if augment else [], "after": converged.result.summary(),
            "curve": converged.curve.summary()}


def evaluation_name(protocol: str, model: str | None = None, dsa: bool = False,
                    lr: float | None = None, epochs: int | None = None,
                    lr_search: bool = False, plain: bool = False) -> str:
    """The file stem of a saved evaluation: the protocol and the settings given, e.g.
    ``few-step``, ``few-step-lr0.01-e5``, ``converge-convnet-dsa``, ``converge-lr-search``;
    ``-plain`` for one without the extra figures (so it never replaces a full one)."""
    parts = [protocol, model, "dsa" if dsa else None,
             None if lr is None else f"lr{lr:g}", "lr-search" if lr_search else None,
             None if epochs is None else f"e{epochs}", "plain" if plain else None]
    return "-".join(part for part in parts if part)


def _folder(run: str | Path) -> Path:
    """The run folder of ``run`` (a folder, or its artifact file)."""
    return Path(run) if Path(run).is_dir() else Path(run).parent


def check_writable(run: str | Path) -> None:
    """Refuse, before any training, a run folder whose evaluations cannot be saved."""
    if not Path(run).exists():
        return  # load() names the missing run
    folder = _folder(run) / EVALUATIONS
    target = folder if folder.exists() else _folder(run)
    if not (target.is_dir() and os.access(target, os.W_OK | os.X_OK)):
        raise DistillError(f"cannot write into {target}; pass --no-save to evaluate a "
                           "read-only run folder")


def artifact_digest(run: str | Path) -> str:
    """SHA-256 of a run's artifact file: which images a saved evaluation scored."""
    return hashlib.sha256((_folder(run) / ARTIFACT_FILE).read_bytes()).hexdigest()


def save_evaluation(run: str | Path, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` with the digest of the artifact it scored to RUN/evaluations/NAME.json
    (atomically); returns what was written."""
    record = {**record, "artifact_sha256": artifact_digest(run)}
    atomic_write(_folder(run) / EVALUATIONS / f"{name}.json",
                 (json.dumps(record, indent=2) + "\n").encode())
    return record
