"""Baselines as artifacts: the same files as a distillation run, so evaluate/show apply."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..artifacts import GRID_FILE, Distilled, load, run_meta
from ..config import DistillConfig
from ..data import load_dataset
from ..evaluate import context_for
from ..functional import FunctionalModel
from ..init_distributions import RandomInit
from ..models import build_model
from ..runtime import resolve_device
from .run import run_baseline


def baseline_artifact(method: str, out: str | Path, like: str | Path | None = None,
                      nets: int = 200, search_nets: int = 20, sets: int = 10,
                      settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a baseline and write its artifact into ``out``; returns the report."""
    if like is not None:
        reference = load(like)
        config = DistillConfig.from_dict(reference.meta["config"])
        root = (settings or {}).get("data_root") or config.data_root
        data, fmodel, init = context_for(reference, root, (settings or {}).get("device", "auto"),
                                         pool=(settings or {}).get("pool"))
        learned = reference.lrs
        model_meta = reference.meta["model"]
    else:
        config = DistillConfig(**(settings or {}))
        config.validate()
        data = load_dataset(config.dataset, config.data_root).to(resolve_device(config.device))
        module = build_model(config.model or data.default_model, data.image_shape,
                             data.num_classes).to(data.train_images.device)
        fmodel, init, learned = FunctionalModel(module), RandomInit(module, config.init_scheme), None
        model_meta = {"name": config.model or data.default_model, "class": type(module).__name__}
    images, labels, lrs, report = run_baseline(
        method, data, fmodel, init, config.steps, config.images_per_class, learned,
        nets=nets, search_nets=search_nets, sets=sets, seed=config.seed, attack=config.attack)
    meta = run_meta(config.to_dict(), data, model_meta,
                    {"final": report["final"], "baseline": report}, baseline=method)
    artifact = Distilled(images.cpu(), labels.cpu(), torch.tensor(lrs, dtype=torch.float32),
                         None, meta)
    artifact.save(out)
    if artifact.num_steps:
        from ..plots import save_grid

        save_grid(artifact, Path(out) / GRID_FILE, data.mean, data.std, data.class_names)
    return report
