"""Gradient matching (DC, Zhao, Mopuri & Bilen, ICLR 2021; with DSA, Zhao & Bilen, ICML
2021): per class, the layer-wise distance between a net's loss gradients on real and on
synthetic images; between two matches the net trains on the synthetic set.

One meta-iteration is one match. A net drawn from p(θ0) serves ``--match-outer-loop``
matches in a row and trains ``--match-inner-loop`` epochs of SGD on the (current) synthetic
set before each but the first, as DC's code does. The distance is DC's: for every weight
tensor (biases are left out), the sum over its output units of 1 − cos between the two
gradients' rows. ``dsa`` is ``dc`` with DSA: the same draw on a class's real and synthetic
images, and on the synthetic minibatches the net trains on.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from ..data import Dataset
from ..errors import DistillError
from ..functional import FunctionalModel, Params
from ..inner_loop import gd_step
from ..state import DistilledSteps
from .base import Matching, augmented, draw_seed

# DC's (matches per net, epochs between matches) by images per class
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
NET_BATCH = 256  # synthetic images per SGD step of the net between matches (DC's)
EPSILON = 1e-6  # in the cosine's denominator (DC's)


def per_class(config: Any) -> int:
    """Synthetic images per class: every step's, and --downscale's smaller ones counted as
    the full-size images they stand for."""
    return config.steps * config.images_per_class


def loops(config: Any) -> tuple[int, int]:
    """(matches per net, epochs between matches): the flags, else DC's for the images per
    class."""
    default = LOOPS.get(per_class(config), (0, 0))
    return config.match_outer_loop or default[0], config.match_inner_loop or default[1]


def layerwise_distance(real: Sequence[Tensor], synthetic: Sequence[Tensor]) -> Tensor:
    """DC's distance of two gradients of N stacked nets (tensors (N, ...)), per net (N,):
    for each weight tensor, Σ over output units of 1 − cos(real row, synthetic row)."""
    total = real[0].new_zeros(real[0].shape[0])
    for a, b in zip(real, synthetic):
        if a.dim() <= 2:  # a bias (N, out): DC leaves it out
            continue
        a, b = a.flatten(2), b.flatten(2)  # (N, out, fan-in)
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + EPSILON)
        total = total + (1 - cos).sum(-1)
    return total


class GradientMatching(Matching):
    name = "dc"
    summary = ("gradient matching (DC, Zhao et al. 2021): per-class layer-wise distance of "
               "loss gradients on real and synthetic images")
    why = "trains its nets between matches by plain SGD"

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if 0 in loops(config):
            raise DistillError(f"--method {cls.name} has DC's loop counts for "
                               f"{', '.join(map(str, LOOPS))} images per class only "
                               "(--steps x --images-per-class); for "
                               f"{per_class(config)} set --match-outer-loop and "
                               "--match-inner-loop")
        if not config.match_net_lr > 0:
            raise DistillError(f"--match-net-lr must be positive, got {config.match_net_lr}")

    def __init__(self, config: Any, fmodel: FunctionalModel, steps: DistilledSteps,
                 data: Dataset, probe: Params) -> None:
        super().__init__(config, fmodel, steps, data, probe)
        self.outer, self.inner = loops(config)
        self.net: Params = {}
        self.matches = 0  # with the current net

    def loss(self, params: Params, steps: DistilledSteps, real_images: Tensor,
             real_labels: Tensor, generator: torch.Generator) -> Tensor:
        if self.matches % self.outer == 0:  # a fresh net from p(θ0)
            self.net = {k: v.detach() for k, v in params.items()}
        else:  # the net trains on the synthetic set as it is now
            self.net = self._train_on_synthetic(self.net, steps, generator)
        self.matches += 1
        net = {k: v.detach().requires_grad_() for k, v in self.net.items()}
        synthetic = steps.enlarged(steps.images).flatten(0, 1)
        classes = steps.labels.flatten(0, 1)
        total = real_images.new_zeros(len(next(iter(net.values()))))
        for c in classes.unique().tolist():
            seed = draw_seed(generator)
            real = self._gradients(net, augmented(real_images[real_labels == c], steps, seed),
                                   c, create_graph=False)
            fake = self._gradients(net, augmented(synthetic[classes == c], steps, seed), c,
                                   create_graph=True)
            total = total + layerwise_distance(real, fake)
        total.mean().backward()
        return total.detach()

    def state(self) -> dict[str, Tensor]:
        """The net between matches and how many matches it has served."""
        return {"matches": torch.tensor(self.matches),
                **{f"net.{k}": v for k, v in self.net.items()}}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        device = next(self.fmodel.module.parameters()).device
        self.matches = int(tensors["matches"])
        self.net = {k[len("net."):]: v.to(device) for k, v in tensors.items()
                    if k.startswith("net.")}

    def _gradients(self, net: Params, images: Tensor, label: int,
                   create_graph: bool) -> tuple[Tensor, ...]:
        """Each net's gradient of its mean loss on ``images``, all of class ``label``."""
        labels = torch.full((images.shape[0],), label, device=images.device)
        loss = self.fmodel.losses(net, images, labels, train=True).sum()
        grads = torch.autograd.grad(loss, list(net.values()), create_graph=create_graph)
        return grads if create_graph else tuple(g.detach() for g in grads)

    def _train_on_synthetic(self, net: Params, steps: DistilledSteps,
                            generator: torch.Generator) -> Params:
        """``--match-inner-loop`` epochs of SGD on the synthetic set (minibatches of 256,
        each with its own DSA draw), no graph."""
        images = steps.full_images().flatten(0, 1)
        labels = steps.labels.detach().flatten(0, 1)
        lr = torch.tensor(self.config.match_net_lr, dtype=images.dtype, device=images.device)
        for _ in range(self.inner):
            order = torch.randperm(images.shape[0], generator=generator).to(images.device)
            for start in range(0, images.shape[0], NET_BATCH):
                pick = order[start:start + NET_BATCH]
                batch = augmented(images[pick], steps, draw_seed(generator), siamese=False)
                with torch.enable_grad():
                    net = gd_step(self.fmodel, net, batch, labels[pick], lr, create_graph=False)
                net = {k: v.detach() for k, v in net.items()}
        return net


class GradientMatchingDSA(GradientMatching):
    name = "dsa"
    summary = "gradient matching with siamese augmentation (DSA, Zhao & Bilen 2021): dc with --dsa"

    @classmethod
    def settle(cls, config: Any) -> Any:
        return replace(config, dsa=True)
