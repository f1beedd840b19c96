"""Distilled sets as plain tensors that other tools read, and sets made elsewhere read in.

The exchange layout (docs/exchange.md) is a safetensors file of
``images`` (N, C, H, W) float32, in the normalised space of ``mean`` and ``std`` (C,);
``labels`` (N,) int64 class indices or (N, K) float32 class probabilities; and, for a set
made for the paper's few-step protocol, ``lrs`` (T,) float32, the images being the steps'
batches in order (string metadata ``images_per_step``). A set is read from such a file
(made by any tool) or from a ``.pt`` file read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from .artifacts import Distilled, atomic_write, check_finite, load, run_meta
from .config import DistillConfig
from .data import Dataset, load_dataset
from .errors import DistillError
from .models import build_model
from .runfolder import writes_run_folder

SET_FORMAT = "datadistill-set/1"
SUFFIXES = (".safetensors", ".pt", ".pth")


def export_set(run: str | Path, out: str | Path) -> dict[str, Tensor]:
    """Write a run's distilled set to ``out`` in the exchange layout; returns the tensors."""
    distilled = load(run)
    dataset = distilled.meta["dataset"]
    per_step = distilled.images.shape[1]
    tensors = {"images": distilled.images.flatten(0, 1).float(),
               "labels": distilled.labels.flatten(0, 1),
               "mean": torch.tensor(dataset["mean"], dtype=torch.float32),
               "std": torch.tensor(dataset["std"], dtype=torch.float32)}
    if distilled.num_steps:
        tensors["lrs"] = distilled.lrs.float()
    metadata = {"format": SET_FORMAT, "dataset": dataset["name"],
                "class_names": json.dumps(dataset["class_names"]),
                "images_per_step": str(per_step),
                "downscale": str(distilled.meta.get("config", {}).get("downscale", 1))}
    atomic_write(Path(out), save({k: v.contiguous() for k, v in tensors.items()}, metadata))
    return tensors


def read_set(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and string metadata of a set file (safetensors, or a ``.pt`` file of a dict
    ``{"images", "labels", ...}``, an ``(images, labels)`` pair, or DC's ``{"data":
    [(images, labels), ...]}``), checked for the exchange layout."""
    path = Path(path)
    if path.suffix not in SUFFIXES or not path.is_file():
        raise DistillError(f"{path} is not a set file; pass a .safetensors or .pt file "
                           "(docs/exchange.md gives the layout)")
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(path)
            with safe_open(path, "pt") as handle:
                metadata = handle.metadata() or {}
        else:
            tensors = _tensors_of(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError:
        raise DistillError(f"{path} cannot be read as a set: it holds objects other than "
                           "tensors, which are never unpickled; save plain tensors "
                           "(docs/exchange.md)") from None
    except (SafetensorError, RuntimeError, OSError, EOFError) as exc:
        raise DistillError(f"{path} cannot be read as a set ({' '.join(str(exc).split())[:200]}); "
                           "pass plain tensors (docs/exchange.md)") from None
    _check_layout(tensors, path)
    check_finite(tensors, path, "replace them (e.g. torch.nan_to_num) or make the set again")
    return tensors, metadata


def _tensors_of(obj: Any) -> dict[str, Tensor]:
    """The images/labels/mean/std/lrs of what a ``.pt`` file held."""
    if isinstance(obj, dict) and isinstance(obj.get("data"), (list, tuple)) and obj["data"]:
        obj = obj["data"][0]  # DC's results file: [[images, labels], ...]
    if isinstance(obj, (list, tuple)) and len(obj) == 2:
        obj = {"images": obj[0], "labels": obj[1]}
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _check_layout(tensors: dict[str, Tensor], path: Path) -> None:
    missing = {"images", "labels"} - set(tensors)
    if missing:
        raise DistillError(f"{path} has no {' or '.join(sorted(missing))} tensor; a set needs "
                           "images (N, C, H, W) and labels (N,) or (N, K) (docs/exchange.md)")
    images, labels = tensors["images"], tensors["labels"]
    if images.dim() != 4 or labels.shape[0] != images.shape[0] or labels.dim() not in (1, 2):
        raise DistillError(f"{path}: images {tuple(images.shape)} and labels "
                           f"{tuple(labels.shape)} do not match the layout images (N, C, H, W), "
                           "labels (N,) or (N, K)")
    if ("mean" in tensors) != ("std" in tensors):
        raise DistillError(f"{path} holds one of mean and std; give both or neither")


@writes_run_folder
def import_set(path: str | Path, dataset: str, out: str | Path, model: str = "",
               data_root: str = "data", data: Dataset | None = None) -> Distilled:
    """Read a set made elsewhere and write it as a run folder that ``evaluate`` takes.

    Images given with their ``mean`` and ``std`` are moved into the dataset's normalisation;
    without them they are taken to be in it already.
    """
    tensors, metadata = read_set(path)
    data = data or load_dataset(dataset, data_root)
    images = _renormalised(tensors, data).float()
    if tuple(images.shape[1:]) != data.image_shape:
        raise DistillError(f"{path}: images are {tuple(images.shape[1:])}, {data.name} has "
                           f"{data.image_shape}; pass the --dataset the set was made for")
    labels = tensors["labels"]
    labels = labels.long() if labels.dim() == 1 else labels.float()
    if labels.dim() == 1 and not 0 <= int(labels.min()) <= int(labels.max()) < data.num_classes:
        raise DistillError(f"{path}: labels run from {int(labels.min())} to {int(labels.max())}, "
                           f"{data.name} has classes 0 to {data.num_classes - 1}")
    per_step = metadata.get("images_per_step", str(images.shape[0]))
    if not per_step.isdigit() or int(per_step) < 1 or images.shape[0] % int(per_step):
        raise DistillError(f"{path}: images_per_step {per_step!r} does not divide the "
                           f"{images.shape[0]} images; drop that metadata for a flat set")
    per_step = int(per_step)
    config = DistillConfig(dataset=data.name, data_root=data_root, model=model,
                           steps=images.shape[0] // per_step).to_dict()
    name = model or data.default_model
    model_meta = {"name": name, "class": type(build_model(name, data.image_shape,
                                                          data.num_classes)).__name__}
    lrs = tensors.get("lrs", torch.zeros(0)).float()
    distilled = Distilled(images.view(-1, per_step, *images.shape[1:]),
                          labels.view(-1, per_step, *labels.shape[1:]), lrs, None,
                          run_meta(config, data, model_meta, {}, imported=str(path)))
    distilled.save(out)
    return distilled


def _renormalised(tensors: dict[str, Tensor], data: Dataset) -> Tensor:
    images = tensors["images"].float()
    if "mean" not in tensors or (
            torch.allclose(tensors["mean"].float(), torch.tensor(data.mean))
            and torch.allclose(tensors["std"].float(), torch.tensor(data.std))):
        return images  # already in the dataset's normalisation
    shape = (1, -1, 1, 1)
    pixels = images * tensors["std"].float().view(shape) + tensors["mean"].float().view(shape)
    return (pixels - torch.tensor(data.mean).view(shape)) / torch.tensor(data.std).view(shape)
