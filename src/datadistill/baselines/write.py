"""Baselines as artifacts: the same files as a distillation run, so evaluate/show apply."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..artifacts import META_FILE, Distilled, after_saving, atomic_write, load, run_meta
from ..config import DistillConfig
from ..converge import ConvergeSettings
from ..errors import DistillError
from ..evaluate import build_context, context_for, converge_report, grid_epochs
from ..floor import few_step_floor, random_real_set
from ..nets import schedule
from ..runfolder import writes_run_folder
from ..runtime import generator
from ..selectors import baseline_images
from .run import run_baseline


@writes_run_folder
def baseline_artifact(method: str, out: str | Path, like: str | Path | None = None,
                      nets: int = 200, search_nets: int = 20, sets: int = 10,
                      settings: dict[str, Any] | None = None,
                      stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a baseline and write its artifact into ``out``; returns the report.

    The setting is a distillation run's (``like``) or ``settings`` (DistillConfig fields), and
    the grid's passes are ``grid_epochs`` of it (inner steps around T for a flat set); a
    ``pool`` there evaluates on its held-out models (pretrained-random) and, with ``like``,
    replaces the run's pool folder. ``stored``: the command's settings (``BaselineConfig``),
    kept in meta.json as "baseline_config".
    """
    for name, value in (("--nets", nets), ("--search-nets", search_nets), ("--sets", sets)):
        if value < 1:
            raise DistillError(f"{name} must be at least 1, got {value}")
    settings = dict(settings or {})
    if like is not None:
        reference = load(like)
        if reference.num_steps == 0:
            raise DistillError(f"--like {like} holds no learning rates (a matching or "
                               "kernel-regression set, a converge-protocol baseline or an "
                               "imported set), so it has no few-step setting to copy; "
                               f"`datadistill evaluate {like} --protocol converge` reports "
                               "its random-real floor")
        config = DistillConfig.from_dict(reference.meta["config"])
        data, fmodel, init = context_for(reference, settings.get("data_root"),
                                         settings.get("device", "auto"), pool=settings.get("pool"),
                                         backend=settings.get("backend", "auto"))
        learned = reference.lrs
        model_meta = reference.meta["model"]
    else:
        if settings.get("pool"):
            settings["init"] = "pretrained-random"
        config = DistillConfig(**settings)
        config.validate()
        data, fmodel, init = build_context(config.to_dict(), config.dataset, config.model, None,
                                           None, config.device, None, None, None,
                                           config.backend)
        learned = None
        model_meta = {"name": config.model or data.default_model,
                      "class": type(fmodel.module).__name__}
    if method == "random" and like is not None:  # the run's own floor, as distill drew it
        images, labels, lrs, report = _floor_like(reference, data, fmodel, init, config, nets)
    else:
        images, labels, lrs, report = run_baseline(
            method, data, fmodel, init, config.steps, config.images_per_class, learned,
            nets=nets, search_nets=search_nets, sets=sets, seed=config.seed,
            attack=config.attack, minibatch=config.minibatch,
            epochs=grid_epochs(config.steps, config.distill_epochs), momentum=config.momentum,
            downscale=config.downscale)
    meta = run_meta(config.to_dict(), data, model_meta,
                    {"final": report["final"], "baseline": report}, baseline=method,
                    **_stored(stored))
    artifact = Distilled(images.cpu(), labels.cpu(), torch.tensor(lrs, dtype=torch.float32),
                         None, meta)
    artifact.save(out)
    if artifact.num_steps:
        from ..plots import save_picture

        after_saving(report, "picture", lambda: save_picture(artifact, data, out).name)
    return report


def _stored(stored: dict[str, Any] | None) -> dict[str, Any]:
    """meta.json's record of the command's settings, when given."""
    return {} if stored is None else {"baseline_config": stored}


def _floor_like(reference: Distilled, data, fmodel, init, config: DistillConfig, nets: int):
    """A run's random-real floor (``floor.py``): the images distill's final check draws,
    scored on ``nets`` nets of the same draw as its (the same figure when ``nets`` is the
    run's --eval-nets); images, labels, the chosen lrs and the report."""
    images, labels = random_real_set(data, reference.labels.to(data.train_images.device),
                                     config.seed, config.downscale)
    best, grid = few_step_floor(fmodel, init, data, images, labels, nets, config.seed,
                                "evaluation", reference.lrs, config.distill_epochs,
                                config.minibatch, config.momentum, config.attack)
    lr = reference.lrs if best["lr"] == "learned" else float(best["lr"])
    report = {"method": "random", "best": {"lr": best["lr"], "epochs": best["epochs"]},
              "grid": grid, "floor": "the run's random-real floor (datadistill.floor)",
              "final": {k: v for k, v in best.items() if k not in ("lr", "epochs")}}
    lrs = [step[2] for step in schedule(images, labels, lr, best["epochs"])]
    return images, labels, lrs, report


@writes_run_folder
def converge_baseline(method: str, out: str | Path, settings: dict[str, Any],
                      converge: ConvergeSettings, nets: int = 5, dsa: bool = False,
                      dsa_ops: str = "", stored: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """A floor or ceiling under the converge protocol: fresh nets trained to convergence on
    ``method``'s real images (steps x images-per-class per class, one flat set) or, for
    ``full``, on the whole training set. Writes the images (not for ``full``) and meta.json
    into ``out``; returns the report. With ``downscale`` F in the settings: F x F times as
    many real images per class, each stored at 1/F of its side and enlarged back (IDC's
    multi-formed floors); ``stored`` as for ``baseline_artifact``."""
    if nets < 1:
        raise DistillError(f"--nets must be at least 1, got {nets}")
    if method.startswith("knn-") or method == "optimized":
        raise DistillError(f"--method {method} has no converge-protocol form; choose random, "
                           "kmeans, herding, average or full")
    converge.check()
    config = DistillConfig(**settings)
    config.validate()
    if method == "full" and config.downscale > 1:
        raise DistillError("--method full trains on the whole training set as it is: drop "
                           "--downscale")
    data, fmodel, init = build_context(config.to_dict(), config.dataset, config.model, None,
                                       None, config.device, None, None, None,
                                           config.backend)
    if method == "full":
        images, labels = data.train_images, data.train_labels
    else:
        images, labels = baseline_images(method, data, config.steps, config.images_per_class,
                                         generator(config.seed, f"baseline-{method}"),
                                         config.downscale)
    model = config.model or data.default_model
    report = converge_report(data, fmodel, init, images.reshape(-1, *data.image_shape),
                             labels.reshape(-1), nets, converge, dsa, dsa_ops, config.seed, model)
    meta = run_meta(config.to_dict(), data, {"name": model, "class": type(fmodel.module).__name__},
                    {"final": report["after"], "converge": report}, baseline=method,
                    **_stored(stored))
    if method == "full":
        atomic_write(Path(out) / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    else:
        Distilled(images.cpu(), labels.cpu(), torch.zeros(0), None, meta).save(out)
    return report
