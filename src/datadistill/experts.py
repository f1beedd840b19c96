"""Expert trajectories for trajectory matching (MTT, Cazenavette et al., CVPR 2022): nets
trained on the real data by plain SGD, their weights kept after every epoch.

An experts folder holds ``experts.json`` (dataset, architecture, schedule) and one
``expert-K.safetensors`` per expert, every parameter stacked over the epochs
((epochs + 1, ...): the initial weights, then the weights after each epoch). Each expert is
written atomically once trained, so ``datadistill experts`` run again into the folder goes on
with the experts not yet written; under torchrun the experts are shared out across the
processes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .artifacts import atomic_write, load_tensors, save_tensors
from .augment import dsa_for
from .config import ExpertSchedule
from .data import Dataset, load_dataset
from .distributed import current
from .errors import DistillError
from .functional import FunctionalModel, Params
from .init_distributions import RandomInit
from .inner_loop import gd_step
from .models import build_model
from .nets import test_nets
from .runfolder import writes_run_folder
from .runtime import generator, resolve_device

MANIFEST = "experts.json"
EXPERT_FILE = "expert-{}.safetensors"


@dataclass(frozen=True)
class Experts:
    """Trajectories (each: name -> (epochs + 1, ...)) and the folder's manifest."""

    trajectories: list[dict[str, torch.Tensor]]
    manifest: dict[str, Any]

    def fits(self, fmodel: FunctionalModel, data: Dataset) -> None:
        """Refuse experts of another image shape or architecture."""
        if list(self.manifest["image_shape"]) != list(data.image_shape):
            raise DistillError(f"the experts were trained on {self.manifest['image_shape']} "
                               f"images, {data.name} has {list(data.image_shape)}; use their "
                               f"dataset ({self.manifest['dataset']})")
        shapes = {name: p.shape for name, p in fmodel.module.named_parameters()}
        stored = {name: v.shape[1:] for name, v in self.trajectories[0].items()}
        if shapes != stored:
            raise DistillError(f"the experts are {self.manifest['arch']} nets, not "
                               f"{type(fmodel.module).__name__}; pass the --model they were "
                               "trained as")


@writes_run_folder
def train_experts(dataset: str, experts: int, out: str | Path, arch: str = "",
                  schedule: ExpertSchedule = ExpertSchedule(), init_scheme: str = "default",
                  seed: int = 0, data_root: str | None = "data", device: str = "auto",
                  backend: str = "auto", progress: bool = True,
                  settings: dict[str, Any] | None = None) -> list[Path]:
    """Train ``experts`` nets into ``out`` (those already there are kept); returns the files.
    ``settings`` (the command's, ``ExpertsConfig``) are stored in experts.json."""
    if experts < 1:
        raise DistillError(f"--experts must be at least 1, got {experts}")
    schedule.check()
    out = Path(out)
    dev = resolve_device(device)
    data = load_dataset(dataset, data_root).to(dev)
    arch = arch or data.default_model
    module = build_model(arch, data.image_shape, data.num_classes).to(dev)
    fmodel = FunctionalModel(module, backend)
    manifest = {"dataset": data.name, "arch": arch, "image_shape": list(data.image_shape),
                "init_scheme": init_scheme, "seed": seed, "schedule": asdict(schedule)}
    _check_manifest(out, manifest, settings)
    files = [out / EXPERT_FILE.format(k) for k in range(experts)]
    world = current()
    todo = [k for k in world.share(experts) if not files[k].is_file()]
    augment = dsa_for(data.class_names) if schedule.dsa else None
    init = RandomInit(module, init_scheme)
    for k in tqdm(todo, desc=f"training {len(todo)} experts", disable=not progress or not todo):
        gen = generator(seed, f"expert-{k}")
        trajectory = _trajectory(fmodel, init.sample(1, gen), data, schedule, augment, gen)
        accuracy = test_nets(fmodel, {n: v[-1:] for n, v in trajectory.items()},
                             data.test_images, data.test_labels).mean
        save_tensors(files[k], trajectory, {"expert": k, "test_accuracy": accuracy})
    world.barrier()
    return files


def _check_manifest(out: Path, manifest: dict[str, Any], settings: dict[str, Any] | None
                    ) -> None:
    """Write the manifest (with the latest command's ``settings``), or refuse a folder whose
    experts were trained otherwise."""
    path = out / MANIFEST
    if path.is_file():
        stored = json.loads(path.read_text())
        differ = [key for key in manifest if stored.get(key) != manifest[key]]
        if differ:
            raise DistillError(f"{out} holds experts trained with other {', '.join(differ)}; "
                               "choose another --out or the same settings")
        if settings is None:
            return
    record = manifest if settings is None else {**manifest, "config": settings}
    atomic_write(path, (json.dumps(record, indent=2) + "\n").encode())


def _trajectory(fmodel: FunctionalModel, params: Params, data: Dataset,
                schedule: ExpertSchedule, augment: Any, gen: torch.Generator
                ) -> dict[str, torch.Tensor]:
    """One net (N = 1) trained by SGD; every parameter's values after each epoch, stacked."""
    lr = torch.tensor(schedule.lr, device=data.train_images.device)
    kept = [params]
    n = data.train_images.shape[0]
    for _ in range(schedule.epochs):
        order = torch.randperm(n, generator=gen).to(data.train_images.device)
        for start in range(0, n, schedule.batch_size):
            pick = order[start:start + schedule.batch_size]
            images = data.train_images[pick]
            if augment is not None:
                images = augment(images.unsqueeze(0), gen)[0]
            with torch.enable_grad():
                params = gd_step(fmodel, params, images, data.train_labels[pick], lr,
                                 create_graph=False)
            params = {name: v.detach() for name, v in params.items()}
        kept.append(params)
    return {name: torch.cat([p[name] for p in kept]) for name in params}


def load_experts(folder: str | Path) -> Experts:
    """Read an experts folder written by ``train_experts``."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise DistillError(f"no experts in {folder}: train them with `datadistill experts "
                           f"--out {folder}`")
    files = sorted(folder.glob(EXPERT_FILE.format("*")))
    if not files:
        raise DistillError(f"{folder} holds no finished expert yet; run `datadistill experts "
                           f"--out {folder}` again to go on")
    return Experts([load_tensors(f)[0] for f in files],
                   json.loads((folder / MANIFEST).read_text()))
