"""Baselines as artifacts: the same files as a distillation run, so evaluate/show apply."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..artifacts import Distilled, after_saving, check_out_folder, load, run_meta
from ..config import DistillConfig
from ..errors import DistillError
from ..evaluate import build_context, context_for, grid_epochs
from .run import run_baseline


def baseline_artifact(method: str, out: str | Path, like: str | Path | None = None,
                      nets: int = 200, search_nets: int = 20, sets: int = 10,
                      settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a baseline and write its artifact into ``out``; returns the report.

    The setting is a distillation run's (``like``) or ``settings`` (DistillConfig fields), and
    the grid's passes are ``grid_epochs`` of it (inner steps around T for a flat set); a
    ``pool`` there evaluates on its held-out models (pretrained-random) and, with ``like``,
    replaces the run's pool folder.
    """
    for name, value in (("--nets", nets), ("--search-nets", search_nets), ("--sets", sets)):
        if value < 1:
            raise DistillError(f"{name} must be at least 1, got {value}")
    check_out_folder(Path(out))
    settings = dict(settings or {})
    if like is not None:
        reference = load(like)
        config = DistillConfig.from_dict(reference.meta["config"])
        data, fmodel, init = context_for(reference, settings.get("data_root"),
                                         settings.get("device", "auto"), pool=settings.get("pool"))
        learned = reference.lrs
        model_meta = reference.meta["model"]
    else:
        if settings.get("pool"):
            settings["init"] = "pretrained-random"
        config = DistillConfig(**settings)
        config.validate()
        data, fmodel, init = build_context(config.to_dict(), config.dataset, config.model, None,
                                           None, config.device, None, None, None)
        learned = None
        model_meta = {"name": config.model or data.default_model,
                      "class": type(fmodel.module).__name__}
    images, labels, lrs, report = run_baseline(
        method, data, fmodel, init, config.steps, config.images_per_class, learned,
        nets=nets, search_nets=search_nets, sets=sets, seed=config.seed, attack=config.attack,
        minibatch=config.minibatch, epochs=grid_epochs(config.steps, config.distill_epochs),
        momentum=config.momentum)
    meta = run_meta(config.to_dict(), data, model_meta,
                    {"final": report["final"], "baseline": report}, baseline=method)
    artifact = Distilled(images.cpu(), labels.cpu(), torch.tensor(lrs, dtype=torch.float32),
                         None, meta)
    artifact.save(out)
    if artifact.num_steps:
        from ..plots import save_picture

        after_saving(report, "picture", lambda: save_picture(artifact, data, out).name)
    return report
