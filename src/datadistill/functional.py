"""Run any ``nn.Module`` as a pure function of a batch of parameter dicts.

Parameters carry a leading "net" dimension N, so N networks (different initial
weights) run as one vectorized computation (``torch.func.vmap`` over
``torch.func.functional_call``). Buffers are treated as constants.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .errors import DistillError

Params = dict[str, Tensor]


def check_supported(module: nn.Module) -> None:
    """Refuse modules whose buffers change during training (their gradients would be wrong)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
            raise DistillError(
                f"module {name or type(module).__name__!r} is a {type(sub).__name__} that tracks "
                "running statistics, which the unrolled inner steps cannot differentiate; build it "
                "with track_running_stats=False or use GroupNorm/LayerNorm"
            )


BACKENDS = ("auto", "pytorch", "compiled")


class FunctionalModel:
    """A module evaluated functionally on N stacked parameter sets, with the backend chosen
    once for a command: ``auto`` lets compiled CPU kernels run it where they apply (the LeNet
    kernel, the fused ConvNet), ``compiled`` insists on them for the meta-gradient, ``pytorch``
    never runs compiled code."""

    def __init__(self, module: nn.Module, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise DistillError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        check_supported(module)
        self.module = module
        self.backend = backend
        self.buffers = dict(module.named_buffers())
        self.param_names = [name for name, _ in module.named_parameters()]

    @property
    def kernels(self) -> bool:
        """Whether compiled kernels may run this module."""
        return self.backend != "pytorch"

    def logits(self, params: Params, images: Tensor, train: bool) -> Tensor:
        """Logits (N, B, classes) of N nets on one shared batch ``images`` (B, ...)."""
        return self._every_net(self._forward, params, images, train)

    def logits_each(self, params: Params, images: Tensor, train: bool) -> Tensor:
        """Logits (N, B, classes) of N nets, net i on its own batch ``images[i]`` (B, ...)."""
        self.module.train(train)
        if num_nets(params) == 1:
            return self._forward(only_net(params), images.squeeze(0)).unsqueeze(0)
        return vmap(self._forward, randomness="different")(params, images)

    def features(self, params: Params, images: Tensor, train: bool) -> Tensor:
        """Embeddings (N, B, F) of N nets on one shared batch: the input of the module's last
        ``nn.Linear`` (what distribution matching compares)."""
        head = last_linear(self.module)

        def embedding(p: Params, x: Tensor) -> Tensor:
            seen: list[Tensor] = []
            hook = head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
            try:
                self._forward(p, x)
            finally:
                hook.remove()
            return seen[-1].flatten(1)

        return self._every_net(embedding, params, images, train)

    def _forward(self, params: Params, images: Tensor) -> Tensor:
        """One net's output (no net dimension)."""
        return functional_call(self.module, (params, self.buffers), (images,))

    def _every_net(self, one_net: Callable[[Params, Tensor], Tensor], params: Params,
                   images: Tensor, train: bool) -> Tensor:
        """``one_net`` of each of the N nets on the shared batch, stacked (N, B, ...)."""
        self.module.train(train)
        if num_nets(params) == 1:  # vmap's per-op overhead is not worth it for one net
            return one_net(only_net(params), images).unsqueeze(0)
        return vmap(one_net, in_dims=(0, None), randomness="different")(params, images)

    def losses(self, params: Params, images: Tensor, targets: Tensor, train: bool) -> Tensor:
        """Mean cross-entropy of each of the N nets on the batch: shape (N,). ``targets`` are
        class indices (B,) or class probabilities (B, classes) (soft labels)."""
        logits = self.logits(params, images, train)
        n, b = logits.shape[:2]
        per_net = targets.expand(n, *targets.shape).flatten(0, 1)
        per_example = F.cross_entropy(logits.flatten(0, 1), per_net, reduction="none")
        return per_example.view(n, b).mean(dim=1)


def last_linear(module: nn.Module) -> nn.Linear:
    """The module's last ``nn.Linear`` (its classifier), or a one-line error naming the fix."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DistillError(f"{type(module).__name__} has no nn.Linear layer whose input could "
                           "serve as its embedding; end the module in an nn.Linear classifier")
    return linears[-1]


def only_net(params: Params) -> Params:
    """The parameters of N = 1 stacked nets without the net dimension (``squeeze``, not
    ``[0]``: its backward is a view, not a zero-filled copy)."""
    return {k: v.squeeze(0) for k, v in params.items()}


def num_nets(params: Params) -> int:
    """The size N of the leading net dimension."""
    return next(iter(params.values())).shape[0]
