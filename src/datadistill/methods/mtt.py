"""Trajectory matching (MTT, Cazenavette, Wang, Torralba, Efros & Zhu, CVPR 2022): from an
expert's weights θ_t at a random epoch t, N inner steps on minibatches of the synthetic set
with one learned lr; the loss is ‖θ̂_N − θ_{t+M}‖² / ‖θ_t − θ_{t+M}‖², M epochs further
along the same expert's trajectory.

The unroll is the engine's (``inner_loop.unrolled_gradient``): the flat set's minibatches
(``--minibatch``), windows and the back-gradient walk apply as to the paper's method; only
the final loss differs. N is ``--distill-epochs`` of a flat set (``--steps 1``); the experts
come from ``datadistill experts`` (``--experts DIR``), M is ``--expert-epochs`` and t is drawn
below ``--max-start-epoch``. The nets drawn from p(θ0) are not used: the experts start every
unroll.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterator

import torch
from torch import Tensor

from ..data import Dataset
from ..errors import DistillError
from ..experts import load_experts
from ..functional import FunctionalModel, Params
from ..inner_loop import unrolled_gradient
from ..state import DistilledSteps, window_of
from .base import Method


def matching_loss(start: Params, target: Params) -> Any:
    """θ -> (per-net ‖θ − target‖² / ‖start − target‖², its gradient w.r.t. θ for the
    nets' mean), the final loss of the unroll."""
    span = sum((start[k] - target[k]).pow(2).flatten(1).sum(1) for k in start)

    def loss(theta: Params) -> tuple[Tensor, Params]:
        leaf = {k: v.detach().requires_grad_() for k, v in theta.items()}
        losses = sum((leaf[k] - target[k]).pow(2).flatten(1).sum(1) for k in leaf) / span
        grads = torch.autograd.grad(losses.mean(), list(leaf.values()))
        return losses.detach(), dict(zip(leaf, grads))

    return loss


class TrajectoryMatching(Method):
    name = "mtt"
    summary = ("trajectory matching (MTT, Cazenavette et al. 2022): N synthetic steps from an "
               "expert's epoch t matched to its epoch t + M")
    final_checks = "none"  # its steps start from experts' weights: the converge protocol's

    @classmethod
    def settle(cls, config: Any) -> Any:
        return replace(config, lr_per_step=False)  # one learned lr for the N steps, as MTT's

    @classmethod
    def check(cls, config: Any) -> None:
        if not config.experts:
            raise DistillError("--method mtt needs --experts DIR (train them with `datadistill "
                               "experts --dataset ... --out DIR`)")
        if config.steps != 1:
            raise DistillError("--method mtt trains a flat set: use --steps 1 and set its N "
                               "inner steps with --distill-epochs")
        if config.objective != "task":
            raise DistillError("--method mtt matches experts' weights, not an attack: drop "
                               "--objective attack")

    def __init__(self, config: Any, fmodel: FunctionalModel, steps: DistilledSteps,
                 data: Dataset, probe: Params) -> None:
        super().__init__(config, fmodel, steps, data, probe)
        self.experts = load_experts(config.experts)
        self.experts.fits(fmodel, data)
        epochs = self.experts.manifest["schedule"]["epochs"]
        if config.max_start_epoch + config.expert_epochs > epochs:
            raise DistillError(f"the experts ran {epochs} epochs: --max-start-epoch "
                               f"({config.max_start_epoch}) + --expert-epochs "
                               f"({config.expert_epochs}) must not exceed that")
        self.keep_every = config.backgrad_keep_every or math.ceil(math.sqrt(steps.num_steps))

    def batches(self, data: Dataset, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """No real data: one empty batch per meta-iteration (the experts stand for it)."""
        empty = data.train_images[:0], data.train_labels[:0]
        for _ in range(self.iterations_per_epoch(data)):
            yield empty

    def loss(self, params: Params, steps: DistilledSteps, real_images: Tensor,
             real_labels: Tensor, generator: torch.Generator) -> Tensor:
        config = self.config
        trajectories = self.experts.trajectories
        expert = trajectories[int(torch.randint(len(trajectories), (1,), generator=generator))]
        t = int(torch.randint(config.max_start_epoch, (1,), generator=generator))
        device = steps.images.device
        start = {k: v[t:t + 1].to(device) for k, v in expert.items()}
        target = {k: v[t + config.expert_epochs:t + config.expert_epochs + 1].to(device)
                  for k, v in expert.items()}
        steps = steps.with_minibatches(config.minibatch, generator)
        steps = steps.with_augmentation(generator)
        window = range(*window_of(steps.num_steps, config.window, config.window_at_end,
                                  generator))
        return unrolled_gradient(self.fmodel, start, steps, matching_loss(start, target),
                                 config.backward, self.keep_every, window)
