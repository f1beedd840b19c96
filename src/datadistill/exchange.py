"""Distilled sets as plain tensors that other tools read, and sets made elsewhere read in.

The exchange layout (docs/exchange.md) is a safetensors file of
``images`` (N, C, H, W) float32, in the normalised space of ``mean`` and ``std`` (C,), not
clamped; ``labels`` (N,) int64 class indices or (N, K) float32 targets; and, for a set
made for the paper's few-step protocol, ``lrs`` (T,) float32, the images being the steps'
batches in order (string metadata ``images_per_step``). A set is read from such a file
(made by any tool) or from a ``.pt`` file read with ``torch.load(weights_only=True)``: a dict
or pair of ours, DC/DSA/DM's results file or MTT's images/labels files, whose images are
moved out of the normalisation those repositories apply.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
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
ACCEPTED = ("a dict with images and labels tensors, an (images, labels) pair, DC/DSA/DM's "
            "res_*.pt {'data': [[images, labels], ...]}, or MTT's images_<it>.pt beside "
            "labels_<it>.pt (docs/exchange.md)")
# The normalisation (mean, std) that the DC/DSA/DM repository (VICO-UoE/DatasetCondensation,
# utils.py get_dataset) and MTT's (GeorgeCazenavette/mtt-distillation, utils.py get_dataset,
# CIFAR-10 only of these) apply before distilling: the images they save are in it.
PUBLISHED_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist-5k": ((0.1307,), (0.3081,)),  # MNIST's own images
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
# DC's results file also holds its accuracies, NumPy float64 scalars: rebuilding one is data
# only (a dtype and its bytes), under NumPy 2's module name and NumPy 1's.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # NumPy 2's name, else NumPy 1's
_NUMPY_SCALARS = [_NUMPY_CORE.multiarray.scalar, (_NUMPY_CORE.multiarray.scalar,
                                                  "numpy.core.multiarray.scalar"), np.dtype,
                  *(type(np.dtype(code)) for code in ("f4", "f8", "i4", "i8"))]


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
    """Tensors and string metadata of a set file (safetensors, or a ``.pt`` file of one of
    the layouts of ``ACCEPTED``; metadata ``layout`` names a foreign one), checked for the
    exchange layout."""
    path = Path(path)
    if path.suffix not in SUFFIXES or not path.is_file():
        raise DistillError(f"{path} is not a set file; pass a .safetensors or .pt file "
                           "(docs/exchange.md gives the layout)")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        try:
            tensors = load_file(path)
            with safe_open(path, "pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise _unreadable(path, exc) from None
    else:
        tensors, metadata = _tensors_of(_load_pt(path), path)
    _check_layout(tensors, path)
    check_finite(tensors, path, "replace them (e.g. torch.nan_to_num) or make the set again")
    return tensors, metadata


def _load_pt(path: Path) -> Any:
    """What a ``.pt`` file holds, read with ``torch.load(weights_only=True)``: tensors, plain
    containers and numbers, nothing else unpickled."""
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALARS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DistillError(f"{path} cannot be read as a set: it holds objects other than "
                           "tensors, which are never unpickled; save plain tensors "
                           "(docs/exchange.md)") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> DistillError:
    return DistillError(f"{path} cannot be read as a set ({' '.join(str(exc).split())[:200]}); "
                        "pass plain tensors (docs/exchange.md)")


def _tensors_of(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The images/labels/mean/std/lrs of what a ``.pt`` file held, and its ``layout`` when
    it is DC's or MTT's (their images are in the normalisation of ``PUBLISHED_STATS``)."""
    if isinstance(obj, dict) and isinstance(obj.get("data"), (list, tuple)) and obj["data"]:
        return _pair(obj["data"][0], path), {"layout": "dc"}  # the first experiment's set
    if isinstance(obj, Tensor):
        return _mtt_set(obj, path)
    if isinstance(obj, (list, tuple)):
        return _pair(obj, path), {}
    if isinstance(obj, dict) and {"images", "labels"} & set(obj):
        return {k: v for k, v in obj.items() if isinstance(v, Tensor)}, {}
    raise _unexpected(path, obj)


def _pair(obj: Any, path: Path) -> dict[str, Tensor]:
    """An ``(images, labels)`` pair of tensors."""
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2
            and all(isinstance(t, Tensor) for t in obj)):
        raise _unexpected(path, obj)
    return {"images": obj[0], "labels": obj[1]}


def _mtt_set(images: Tensor, path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """MTT's ``images_<it>.pt`` (in its normalisation) or ``images_zca_<it>.pt`` (ZCA undone:
    pixels), each with ``labels_<it>.pt`` beside it."""
    name = re.fullmatch(r"images_(zca_)?(.+)", path.stem)
    labels_path = path.with_name(f"labels_{name[2]}{path.suffix}") if name else None
    if labels_path is None or not labels_path.is_file():
        raise DistillError(f"{path} holds {_described(images)} and no labels_<it>{path.suffix} "
                           f"lies beside it; a .pt set is {ACCEPTED}")
    labels = _load_pt(labels_path)
    if not isinstance(labels, Tensor):
        raise _unexpected(labels_path, labels)
    return {"images": images, "labels": labels}, {"layout": "mtt-zca" if name[1] else "mtt"}


def _unexpected(path: Path, obj: Any) -> DistillError:
    return DistillError(f"{path} holds {_described(obj)}; a .pt set is {ACCEPTED}")


def _described(obj: Any) -> str:
    """A few words on what a ``.pt`` file held."""
    if isinstance(obj, Tensor):
        return f"a tensor {tuple(obj.shape)}"
    if isinstance(obj, dict):
        keys = ", ".join(map(repr, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
        return f"a dict of {keys or 'nothing'}"
    if isinstance(obj, (list, tuple)):
        kinds = ", ".join(sorted({type(item).__name__ for item in obj}))
        return f"a {type(obj).__name__} of {len(obj)} ({kinds or 'nothing'})"
    return f"a {type(obj).__name__}"


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

    Images given with their ``mean`` and ``std`` (or, in DC's or MTT's layout, in those
    repositories' normalisation) are moved into the dataset's normalisation; without them
    they are taken to be in it already.
    """
    tensors, metadata = read_set(path)
    data = data or load_dataset(dataset, data_root)
    if tuple(tensors["images"].shape[1:]) != data.image_shape:
        raise DistillError(f"{path}: images are {tuple(tensors['images'].shape[1:])}, "
                           f"{data.name} has {data.image_shape}; pass the --dataset the set "
                           "was made for")
    tensors = {**tensors, **_source_normalisation(metadata.get("layout", ""), data, path)}
    images = _renormalised(tensors, data).float()
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
                          run_meta(config, data, model_meta, {}, imported=str(path),
                                   imported_layout=metadata.get("layout", "datadistill")))
    distilled.save(out)
    return distilled


def _source_normalisation(layout: str, data: Dataset, path: Path) -> dict[str, Tensor]:
    """The ``mean`` and ``std`` the images of a foreign ``layout`` are in (none for ours)."""
    if not layout:
        return {}
    channels = data.image_shape[0]
    if layout == "mtt-zca":  # ZCA undone: pixels
        return {"mean": torch.zeros(channels), "std": torch.ones(channels)}
    if data.name not in PUBLISHED_STATS:
        raise DistillError(f"{path} is a {layout.upper()} set; the normalisation of "
                           f"{data.name!r} there is not known here (known: "
                           f"{', '.join(PUBLISHED_STATS)}); save it as a dict of images, "
                           "labels, mean and std")
    mean, std = PUBLISHED_STATS[data.name]
    return {"mean": torch.tensor(mean), "std": torch.tensor(std)}


def _renormalised(tensors: dict[str, Tensor], data: Dataset) -> Tensor:
    images = tensors["images"].float()
    if "mean" not in tensors or (
            torch.allclose(tensors["mean"].float(), torch.tensor(data.mean))
            and torch.allclose(tensors["std"].float(), torch.tensor(data.std))):
        return images  # already in the dataset's normalisation
    shape = (1, -1, 1, 1)
    pixels = images * tensors["std"].float().view(shape) + tensors["mean"].float().view(shape)
    return (pixels - torch.tensor(data.mean).view(shape)) / torch.tensor(data.std).view(shape)
