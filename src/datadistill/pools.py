"""Pools of trained models: train many at once, store, split, or bring your own.

A pool is a folder with ``pool.safetensors`` (every parameter stacked along a leading
model dimension) and ``manifest.json`` (architecture, dataset, per-model test accuracy,
seeds, and which models are for distilling and which are held out). Held-out models
are never drawn while distilling; evaluation uses them, each once.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .artifacts import atomic_write, load_tensors, save_tensors
from .data import Dataset, crop_flip, load_dataset
from .distributed import current
from .errors import DistillError
from .functional import FunctionalModel, Params, num_nets
from .init_distributions import (FixedInit, InitDistribution, PooledInit, RandomInit,
                                 initial_parameters)
from .models import build_model
from .nets import test_nets
from .runfolder import writes_run_folder
from .runtime import generator, resolve_device

POOL_FILE = "pool.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Schedule:
    """Adam training of pool models: epochs, lr, and ×``decay_factor`` every ``decay_epochs``."""

    epochs: int
    lr: float
    decay_epochs: int
    decay_factor: float = 0.1


# the schedules the paper's authors recommend for their pools (reference facts)
SCHEDULES = {"mnist": Schedule(40, 2e-4, 20), "usps": Schedule(130, 2e-4, 40),
             "svhn": Schedule(65, 2e-4, 20), "cifar10": Schedule(50, 1e-3, 7)}
DEFAULT_SCHEDULE = Schedule(20, 1e-3, 10)


@dataclass
class Pool:
    """Trained models of one architecture, stacked, with their manifest."""

    params: Params
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return num_nets(self.params)

    def split(self, part: str) -> PooledInit:
        """The ``distill`` or ``held_out`` models as an initial-weight distribution."""
        return PooledInit(self.params, self.manifest[part])

    def model(self, index: int) -> Params:
        """One model's parameters (no model dimension)."""
        return {k: v[index].clone() for k, v in self.params.items()}

    def save(self, out: str | Path) -> None:
        out = Path(out)
        save_tensors(out / POOL_FILE, self.params, {"manifest": self.manifest})
        atomic_write(out / MANIFEST_FILE, json.dumps(self.manifest, indent=2).encode())


def load_pool(path: str | Path) -> Pool:
    """Read a pool folder written by ``pretrain`` or ``import_pool``."""
    path = Path(path)
    if not (path / POOL_FILE).is_file():
        raise DistillError(f"no pool in {path}: create one with `datadistill pretrain --out {path}` "
                           "or `datadistill pool-import`")
    params, info = load_tensors(path / POOL_FILE)
    return Pool(params, info["manifest"])


def check_pool_fits(pool: Pool, data: Dataset, module: torch.nn.Module) -> None:
    """Refuse a pool whose models do not have ``module``'s parameters or ``data``'s shape."""
    names = {name: p.shape for name, p in module.named_parameters()}
    stored = {name: v.shape[1:] for name, v in pool.params.items()}
    if names != stored:
        raise DistillError(f"the pool's models ({pool.manifest['arch']}) do not match the model "
                           f"{type(module).__name__}; pass the --model the pool was trained as")
    if list(pool.manifest["image_shape"]) != list(data.image_shape):
        raise DistillError(f"the pool was trained on {pool.manifest['image_shape']} images but "
                           f"{data.name} has {list(data.image_shape)}; use a dataset of that shape")


def train_models(fmodel: FunctionalModel, params: Params, data: Dataset, schedule: Schedule,
                 batch_size: int, gen: torch.Generator, progress: bool = True) -> Params:
    """Train N stacked models together with Adam (one independent Adam per model).

    The loss is the sum of the models' mean losses, so each model gets its own gradient;
    Adam is elementwise, so one optimizer over the stacked tensors is N optimizers. All
    models see the same batches; they differ by their initial weights.
    """
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=schedule.lr)
    decay = torch.optim.lr_scheduler.StepLR(optimizer, schedule.decay_epochs, schedule.decay_factor)
    n_train = data.train_images.shape[0]
    per_epoch = math.ceil(n_train / batch_size)
    bar = tqdm(total=schedule.epochs * per_epoch, disable=not progress, unit="it",
               dynamic_ncols=True, desc=f"training {num_nets(params)} models")
    for _ in range(schedule.epochs):
        order = torch.randperm(n_train, generator=gen).to(data.train_images.device)
        for it in range(per_epoch):
            batch = order[it * batch_size:(it + 1) * batch_size]
            images = data.train_images[batch]
            if data.augment:
                images = crop_flip(images, gen)
            loss = fmodel.losses(params, images, data.train_labels[batch], train=True).sum()
            if not torch.isfinite(loss):
                raise DistillError(f"pool training diverged (loss {float(loss)}); lower --lr "
                                   f"(now {schedule.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
        decay.step()
    bar.close()
    return {k: v.detach() for k, v in params.items()}


def _split_indices(n: int, held_out: int | None) -> tuple[list[int], list[int]]:
    held = max(1, round(n / 11)) if held_out is None else held_out  # the paper: 2,000 + 200
    if not 0 < held < n:
        raise DistillError(f"--held-out must leave models on both sides: got {held} of {n} models")
    return list(range(n - held)), list(range(n - held, n))


def _accuracies(fmodel: FunctionalModel, params: Params, data: Dataset) -> list[float]:
    return test_nets(fmodel, params, data.test_images, data.test_labels).accuracies.tolist()


@writes_run_folder
def pretrain(dataset: str, models: int, out: str | Path, arch: str = "",
             schedule: Schedule | None = None, batch_size: int = 128, held_out: int | None = None,
             init_scheme: str = "xavier-normal", seed: int = 0, data_root: str | None = "data",
             device: str = "auto", group: int = 10, progress: bool = True,
             backend: str = "auto", settings: dict[str, Any] | None = None) -> Pool:
    """Train ``models`` networks on ``dataset`` (``group`` at a time, batched) into a pool,
    their test pass run by ``backend``; ``settings`` (the command's, ``PretrainConfig``) are
    stored in the manifest."""
    if models < 2:
        raise DistillError(f"--models must be at least 2 (distill + held-out), got {models}")
    for name, value in (("--group", group), ("--batch-size", batch_size)):
        if value < 1:
            raise DistillError(f"{name} must be at least 1, got {value}")
    schedule = schedule or SCHEDULES.get(dataset, DEFAULT_SCHEDULE)
    if schedule.epochs < 1 or not schedule.lr > 0 or schedule.decay_epochs < 1:
        raise DistillError(f"--epochs, --lr and --decay-epochs must be positive, got "
                           f"{schedule.epochs}, {schedule.lr}, {schedule.decay_epochs}")
    dev = resolve_device(device)
    data = load_dataset(dataset, data_root).to(dev)
    arch = arch or data.default_model
    module = build_model(arch, data.image_shape, data.num_classes).to(dev)
    fmodel = FunctionalModel(module, backend)
    _split_indices(models, held_out)  # refuse a bad --held-out before training, not after
    init_gen = generator(seed, "pool-init")
    world = current()  # under torchrun each rank trains its share of the groups
    starts = range(0, models, group)
    mine = world.share(len(starts))
    params = {name: torch.zeros(models, *p.shape, device=dev) for name, p in module.named_parameters()}
    accuracies = torch.zeros(models, device=dev)
    for index, start in enumerate(starts):
        stop = min(start + group, models)
        drawn = RandomInit(module, init_scheme).sample(stop - start, init_gen)  # keeps init_gen in step
        if index not in mine:
            continue
        data_gen = generator(seed, f"pool-data-{start}")  # each group on its own: shardable
        trained = train_models(fmodel, {k: v.to(dev) for k, v in drawn.items()}, data, schedule,
                               batch_size, data_gen, progress and world.is_main)
        for name, value in trained.items():
            params[name][start:stop] = value
        accuracies[start:stop] = torch.tensor(_accuracies(fmodel, trained, data))
    params = {name: world.sum_(value) for name, value in params.items()}
    training = {"optimizer": "adam", "epochs": schedule.epochs, "lr": schedule.lr,
                "decay_epochs": schedule.decay_epochs, "decay_factor": schedule.decay_factor,
                "batch_size": batch_size, "models_per_group": group}
    return _save_pool(out, params, data, arch, world.sum_(accuracies).tolist(), held_out,
                      seed=seed, init_scheme=init_scheme, training=training,
                      **_stored(settings))


def _stored(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's record of the command's settings, when given."""
    return {} if settings is None else {"config": settings}


def _save_pool(out: str | Path, params: Params, data: Dataset, arch: str,
               accuracies: list[float], held_out: int | None, **provenance: Any) -> Pool:
    """Split the models into distilling / held-out parts and write the pool with its manifest."""
    distill_part, held_part = _split_indices(len(accuracies), held_out)
    manifest = {"arch": arch, "dataset": data.name, "image_shape": list(data.image_shape),
                "num_classes": data.num_classes, "accuracies": accuracies, **provenance,
                "distill": distill_part, "held_out": held_part}
    pool = Pool({k: v.cpu() for k, v in params.items()}, manifest)
    pool.save(out)
    return pool


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file read with ``weights_only=True``."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise DistillError(f"no weights file {path}")
    try:
        return (load_file(path) if path.suffix == ".safetensors"
                else torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # any unreadable file: say which one
        raise DistillError(f"cannot read {path} as a state dict ({exc})") from None


def load_pretrained(module: torch.nn.Module, path: str | Path) -> Params:
    """``module``'s parameters taken from a pretrained state dict (e.g. torchvision's AlexNet).

    A parameter whose shape differs (the last layer, for a new label set) is reset as in the
    paper's ImageNet setting: weights 0, bias 1. A missing parameter is an error.
    """
    state = _read_state_dict(Path(path))
    named = list(module.named_parameters())
    last_layer = {name for name, _ in named[-2:]}
    params = {}
    for name, own in named:
        if name not in state or (state[name].shape != own.shape and name not in last_layer):
            raise DistillError(f"{path} has no {name!r} of shape {tuple(own.shape)}: it is not a "
                               f"state dict of {type(module).__name__}")
        value = state[name].float()
        if value.shape != own.shape:
            value = torch.ones_like(own) if name.endswith("bias") else torch.zeros_like(own)
        params[name] = value.detach().clone().to(own.device)
    return params


@writes_run_folder
def import_pool(folder: str | Path, dataset: str, out: str | Path, arch: str = "",
                held_out: int | None = None, data_root: str | None = "data",
                device: str = "auto", backend: str = "auto",
                settings: dict[str, Any] | None = None) -> Pool:
    """Make a pool of a folder of state dicts (``*.safetensors``, or ``*.pt``/``*.pth`` read
    with ``weights_only=True``) of one architecture; their test accuracy is measured.
    ``settings`` (the command's, ``PoolImportConfig``) are stored in the manifest."""
    files = sorted(p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".pt", ".pth"))
    if len(files) < 2:
        raise DistillError(f"{folder} holds {len(files)} state dict files (*.safetensors, *.pt, "
                           "*.pth); a pool needs at least 2")
    dev = resolve_device(device)
    data = load_dataset(dataset, data_root).to(dev)
    arch = arch or data.default_model
    module = build_model(arch, data.image_shape, data.num_classes).to(dev)
    shapes = {name: p.shape for name, p in module.named_parameters()}
    states = []
    for path in files:
        state = _read_state_dict(path)
        wrong = [n for n, shape in shapes.items() if n not in state or state[n].shape != shape]
        if wrong:
            raise DistillError(f"{path} is not a {arch} state dict for {dataset}: "
                               f"{', '.join(wrong[:3])} missing or of another shape")
        states.append({n: state[n].float() for n in shapes})
    params = {n: torch.stack([s[n] for s in states]).to(dev) for n in shapes}
    accuracies = _accuracies(FunctionalModel(module, backend), params, data)
    return _save_pool(out, params, data, arch, accuracies, held_out,
                      files=[p.name for p in files], **_stored(settings))


def initial_weights(config: dict[str, Any], module: torch.nn.Module, data: Dataset,
                    gen: torch.Generator, stored: Params | None = None, pool: str | None = None
                    ) -> tuple[InitDistribution, InitDistribution, Params | None]:
    """p(θ0) of a setting (DistillConfig's fields): the one to distill with, the one to
    evaluate on, and the fixed weights (if any).

    ``stored`` weights (an artifact's fixed init) are themselves; a fixed init is drawn from
    ``gen`` (random) or loaded (pretrained) and evaluated on itself; random init is evaluated
    on fresh draws, a pool (``pool`` overrides the stored folder) on its held-out models.
    """
    init = config.get("init", "random")
    if stored is None and init == "fixed":
        stored = initial_parameters(module, config["init_scheme"], gen)
    elif stored is None and init == "pretrained-fixed" and config.get("weights"):
        stored = load_pretrained(module, config["weights"])
    if stored is not None:
        return FixedInit(stored), FixedInit(stored), stored
    if init == "random":
        random_init = RandomInit(module, config["init_scheme"])
        return random_init, random_init, None
    models = load_pool(pool or config["pool"])
    check_pool_fits(models, data, module)
    if init == "pretrained-fixed":
        fixed = models.model(models.manifest["distill"][0])
        return FixedInit(fixed), FixedInit(fixed), fixed
    return models.split("distill"), models.split("held_out"), None
