"""Distributions p(θ0) of initial weights, as samplers of stacked parameter dicts.

``random``: a fresh draw of an initialization scheme per call (Xavier, He, ...).
``fixed``: one stored set of weights, returned every time.
``pretrained-random``: models drawn from a pool of trained networks (see ``pools``).
"""
from __future__ import annotations

import copy
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from .functional import Params
from .registry import Registry

WeightInit = Callable[[Tensor, torch.Generator], None]
INIT_SCHEMES: Registry[WeightInit] = Registry("initialization scheme")

INIT_SCHEMES.register("xavier-normal")(lambda w, g: nn.init.xavier_normal_(w, gain=1.0, generator=g))
INIT_SCHEMES.register("xavier-uniform")(lambda w, g: nn.init.xavier_uniform_(w, gain=1.0, generator=g))
INIT_SCHEMES.register("kaiming")(
    lambda w, g: nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g))
INIT_SCHEMES.register("orthogonal")(lambda w, g: nn.init.orthogonal_(w, generator=g))
INIT_SCHEMES.register("default")(lambda w, g: None)  # handled by reset_parameters()

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


def list_init_schemes() -> list[str]:
    """Names of the weight initialization schemes."""
    return INIT_SCHEMES.names()


def initial_parameters(module: nn.Module, scheme: str, generator: torch.Generator) -> Params:
    """One fresh set of parameters for ``module`` (the module itself is left untouched).

    Conv and linear weights follow ``scheme`` with zero biases; other parameters keep
    the module's own values. ``default`` re-runs every submodule's ``reset_parameters``.
    """
    init_weight = INIT_SCHEMES.get(scheme)
    if scheme == "default":
        fresh = copy.deepcopy(module)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for sub in fresh.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        return {k: v.detach().clone() for k, v in fresh.named_parameters()}

    params = {k: v.detach().clone().cpu() for k, v in module.named_parameters()}
    name_of = {id(v): k for k, v in module.named_parameters()}  # a shared weight: one name
    for sub in module.modules():
        if isinstance(sub, _WEIGHTED):
            with torch.no_grad():
                init_weight(params[name_of[id(sub.weight)]], generator)
                if sub.bias is not None:
                    params[name_of[id(sub.bias)]].zero_()
    return params


def stack(param_sets: list[Params]) -> Params:
    """Stack N parameter dicts along a new leading net dimension."""
    return {k: torch.stack([p[k] for p in param_sets]) for k in param_sets[0]}


class InitDistribution(Protocol):
    """A sampler of N stacked initial parameter sets."""

    def sample(self, n: int, generator: torch.Generator) -> Params: ...


class RandomInit:
    """Fresh weights from an initialization scheme at every draw."""

    def __init__(self, module: nn.Module, scheme: str = "xavier-normal") -> None:
        INIT_SCHEMES.get(scheme)
        self.module, self.scheme = module, scheme

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return stack([initial_parameters(self.module, self.scheme, generator) for _ in range(n)])


class FixedInit:
    """The same stored weights at every draw."""

    def __init__(self, params: Params) -> None:
        self.params = params

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {k: v.unsqueeze(0).expand(n, *v.shape).clone() for k, v in self.params.items()}


class PooledInit:
    """Trained models of a pool: random draws for distillation, or each in turn (``take``)."""

    def __init__(self, params: Params, indices: list[int]) -> None:
        if not indices:
            raise ValueError("a pool split needs at least one model")
        self.params, self.indices = params, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        """``n`` models, distinct within a draw while the pool is large enough."""
        order = torch.randperm(len(self.indices), generator=generator)
        picks = torch.cat([order, torch.randint(len(self.indices), (max(0, n - len(order)),),
                                                generator=generator)])[:n]
        return self._stacked([self.indices[i] for i in picks.tolist()])

    def take(self, start: int, n: int) -> Params:
        """Models ``start`` .. ``start + n - 1`` of this split, in order."""
        return self._stacked(self.indices[start:start + n])

    def _stacked(self, rows: list[int]) -> Params:
        index = torch.tensor(rows)
        return {k: v[index].clone() for k, v in self.params.items()}


def init_weights(module: nn.Module, scheme: str = "xavier-normal", seed: int = 0) -> nn.Module:
    """Re-initialize ``module`` in place as the distillation's random init does; returns it."""
    params = initial_parameters(module, scheme, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for name, value in params.items():
            module.get_parameter(name).copy_(value)
    return module
