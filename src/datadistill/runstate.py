"""What a distillation carries from one meta-iteration to the next, saved whole in its
checkpoint: the distilled steps, the outer optimiser and its schedule, the generators of the
real data and of the initial nets, the running average of the tensors (``--ema``), the best
evaluated iterate (``--validation``), the clip statistics (``--clip``), the evaluations so
far, the epochs done and the time spent before this process. ``save`` writes it as one
atomic file and ``load`` restores it exactly: a resumed run goes on as if never stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .artifacts import save_tensors
from .config import DistillConfig
from .nets import EvalResult
from .state import DistilledSteps

Checkpoint = tuple[dict[str, Tensor], dict[str, Any]]  # (tensors, info) as stored


def method_state(checkpoint: Checkpoint) -> dict[str, Tensor]:
    """The method's own tensors in a checkpoint (``Method.load_state`` takes them)."""
    return {key[len("method."):]: value for key, value in checkpoint[0].items()
            if key.startswith("method.")}


def snapshot(steps: DistilledSteps) -> dict[str, Tensor]:
    """A detached copy of the learnable tensors."""
    return {name: tensor.detach().clone() for name, tensor in steps.learnable().items()}


@dataclass
class Pick:
    """--validation: the tensors of the best-scoring evaluation so far, and its record
    (epoch, held-out accuracy, the test split's summary)."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def offer(self, steps: DistilledSteps, epoch: int, score: float, test: EvalResult) -> None:
        """Keep ``steps`` if ``score`` beats every earlier evaluation's."""
        if not self.record or score > self.record["validation_accuracy"]:
            self.tensors = snapshot(steps)
            self.record = {"epoch": epoch, "validation_accuracy": score, "test": test.summary()}


def clip_gradient(steps: DistilledSteps, factor: float, running_mean: float) -> float:
    """Scale the learnable tensors' gradient down to ``factor`` × the running mean of its
    norm where it is longer; returns the updated running mean (of the clipped norms)."""
    grads = [t.grad for t in steps.learnable().values()]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))
    if running_mean > 0 and norm > factor * running_mean:
        for grad in grads:
            grad.mul_(factor * running_mean / norm)
        norm = factor * running_mean
    return norm if running_mean == 0 else 0.9 * running_mean + 0.1 * norm


def outer_optimizer(config: DistillConfig, steps: DistilledSteps) -> torch.optim.Optimizer:
    """--optimizer over the learnable tensors (learned labels at --label-lr and the raw lrs
    at --lr-lr, where set)."""
    own = {"raw_lrs": config.lr_lr}
    groups = [{"params": [tensor], "lr": (config.label_lr if name.startswith("label_")
                                          else own.get(name, 0.0)) or config.lr}
              for name, tensor in steps.learnable().items()]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.5)
    return torch.optim.Adam(groups, lr=config.lr, betas=(0.5, 0.999))


@dataclass
class RunState:
    """The state of one distillation between meta-iterations (see the module's docstring)."""

    config: DistillConfig
    steps: DistilledSteps
    data_gen: torch.Generator
    init_gen: torch.Generator
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.StepLR = field(init=False)
    averages: dict[str, Tensor] = field(init=False)  # --ema; empty without
    pick: Pick = field(default_factory=Pick)
    epoch: int = 0  # epochs done
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds spent by earlier processes (--resume)
    clip_mean: float = 0.0

    def __post_init__(self) -> None:
        self.optimizer = outer_optimizer(self.config, self.steps)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, self.config.decay_epochs, self.config.decay_factor)
        self.averages = snapshot(self.steps) if self.config.ema else {}

    def kept(self) -> DistilledSteps:
        """What is evaluated: the running average of the tensors (--ema), else the tensors."""
        return self.steps.with_tensors(self.averages) if self.averages else self.steps

    def made(self) -> DistilledSteps:
        """What the artifact holds: --validation's pick, else ``kept()``."""
        return self.steps.with_tensors(self.pick.tensors) if self.pick.tensors else self.kept()

    def update(self) -> None:
        """One outer step from the accumulated ``.grad``: clip, optimiser step, average."""
        if self.config.clip:
            self.clip_mean = clip_gradient(self.steps, self.config.clip, self.clip_mean)
        self.optimizer.step()
        with torch.no_grad():  # --ema: average ← decay × average + (1 − decay) × tensor
            for name, tensor in self.steps.learnable().items() if self.averages else ():
                self.averages[name].lerp_(tensor, 1 - self.config.ema)

    def save(self, path: Path, elapsed: float, method_state: dict[str, Tensor]) -> None:
        """Everything needed to continue exactly where this epoch ended, in one atomic file
        (``elapsed``: the run's seconds so far, this process's included; ``method_state``:
        what the method carries, ``Method.state()``)."""
        tensors = {**self.steps.learnable(),
                   **{f"method.{k}": v for k, v in method_state.items()},
                   **{f"ema.{k}": v for k, v in self.averages.items()},
                   **{f"best.{k}": v for k, v in self.pick.tensors.items()},
                   "rng.data": self.data_gen.get_state(), "rng.init": self.init_gen.get_state(),
                   "rng.torch": torch.get_rng_state()}
        opt_state = self.optimizer.state_dict()
        for index, state in opt_state["state"].items():
            for key, value in state.items():
                tensors[f"adam.{index}.{key}"] = torch.as_tensor(value)
        info = {"config": self.config.to_dict(), "epoch": self.epoch, "history": self.history,
                "elapsed_s": elapsed, "clip_mean": self.clip_mean, "selected": self.pick.record,
                "scheduler": self.scheduler.state_dict(),
                "param_groups": opt_state["param_groups"]}
        save_tensors(path, tensors, info)

    def load(self, checkpoint: Checkpoint) -> None:
        """Restore what ``save`` wrote."""
        tensors, info = checkpoint
        with torch.no_grad():
            for name, tensor in self.steps.learnable().items():
                tensor.copy_(tensors[name])
            for name, average in self.averages.items():
                average.copy_(tensors[f"ema.{name}"])
        self.pick.tensors = {key[len("best."):]: value.to(self.steps.images.device)
                             for key, value in tensors.items() if key.startswith("best.")}
        self.pick.record = info.get("selected", {})
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):  # the optimiser's state by index (any optimiser)
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        self.scheduler.load_state_dict(info["scheduler"])
        self.data_gen.set_state(tensors["rng.data"])
        self.init_gen.set_state(tensors["rng.init"])
        torch.set_rng_state(tensors["rng.torch"])
        self.epoch, self.history = info["epoch"], info["history"]
        self.elapsed_before, self.clip_mean = info["elapsed_s"], info.get("clip_mean", 0.0)
