"""The paper's method (Algorithm 1): unroll the inner GD steps on the distilled data from
θ0 and take the loss of θ_T on real data; gradients flow back through every step (or a
window of them) to the images, labels and learning rates."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..backends import choose_meta_gradient
from ..data import Dataset
from ..functional import FunctionalModel, Params
from ..state import DistilledSteps, window_of
from .base import Method


class Unroll(Method):
    name = "unroll"
    summary = "the paper's: unrolled inner GD steps with learned lrs, loss of θ_T on real data"

    def __init__(self, config: Any, fmodel: FunctionalModel, steps: DistilledSteps,
                 data: Dataset, probe: Params) -> None:
        super().__init__(config, fmodel, steps, data, probe)
        keep_every = config.backgrad_keep_every or math.ceil(math.sqrt(steps.num_steps))
        self.meta_gradient = choose_meta_gradient(  # the compiled LeNet or PyTorch, once
            fmodel, probe, steps, data.train_images[:config.batch_size], config.backward,
            keep_every, config.outer_chunk)

    @property
    def backend(self) -> str:
        return self.meta_gradient.name

    def loss(self, params: Params, steps: DistilledSteps, real_images: Tensor,
             real_labels: Tensor, generator: torch.Generator) -> Tensor:
        config = self.config
        steps = steps.with_minibatches(config.minibatch, generator)  # a flat set's minibatches
        steps = steps.with_augmentation(generator)  # --dsa: each step's augmentation
        window = range(*window_of(steps.num_steps, config.window, config.window_at_end,
                                  generator))  # the steps that keep a graph
        return self.meta_gradient.run(params, steps, real_images, real_labels, window)
