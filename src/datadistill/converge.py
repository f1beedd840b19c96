"""The modern evaluation protocol: fresh nets trained to convergence on a flat set.

The recipe of DC, DSA, DM and MTT: minibatch SGD with momentum 0.9 and weight decay 5e-4,
lr 0.01 multiplied by 0.1 halfway, 1000 epochs, minibatches of 256, DSA augmentation of the
set's images; each net then tested on the full test set. N nets train at once on stacked
parameters (``torch.func.vmap``), each on its own minibatch order and augmentation. On the CPU
a ConvNet trains one net at a time through its fused norm-ReLU-pool kernel
(``kernels.normpool``), in micro-batches that stay in the cache.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import DSA
from .config import ConvergeSettings
from .functional import FunctionalModel, Params, num_nets
from .init_distributions import InitDistribution, PooledInit
from .kernels import float32_on_cpu
from .kernels.normpool import fused_convnet
from .nets import TEST_CHUNK, EvalResult, test_nets
from .progress import phase_bar

# images per forward/backward and per test chunk on the fused ConvNet path: a 32-channel
# 32 x 32 activation of 64 images (8 MiB) stays in the cache (benchmarks/bench_converge.py)
FUSED_MICROBATCH = FUSED_TEST_CHUNK = 64


@dataclass
class Curve:
    """Mean training loss per epoch and test accuracy (mean over nets) at some epochs."""

    train_loss: list[float] = field(default_factory=list)
    test_epochs: list[int] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "test_epochs": self.test_epochs,
                "test_accuracy": self.test_accuracy}


def train_to_convergence(
    fmodel: FunctionalModel, params: Params, images: Tensor, targets: Tensor,
    settings: ConvergeSettings, augment: DSA | None, generator: torch.Generator,
    test: tuple[Tensor, Tensor] | None = None, curve: Curve | None = None, microbatch: int = 0,
    test_chunk: int = TEST_CHUNK, tick: Callable[[], Any] = lambda: None,
) -> Params:
    """Train N stacked nets on the flat set ``images`` (M, C, H, W) with ``targets`` (class
    indices (M,) or probabilities (M, K)); every net draws its own minibatches and
    augmentations from ``generator``. A minibatch's gradient is summed over forward/backward
    passes of ``microbatch`` images (0: one pass), the same gradient for a module without batch
    statistics. ``tick()`` follows every epoch. Returns the trained parameters (no graph)."""
    n, m = num_nets(params), images.shape[0]
    nets = _training(fmodel, params)
    fused = nets.leaves[0].device.type in ("cpu", "cuda")  # one kernel for all tensors' updates
    optimiser = torch.optim.SGD(nets.leaves, lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, foreach=not fused,
                                fused=fused)
    for epoch in range(settings.epochs):
        if epoch == settings.epochs // 2:  # lr x 0.1 halfway
            for group in optimiser.param_groups:
                group["lr"] = settings.lr * 0.1
        order = torch.argsort(torch.rand(n, m, generator=generator), dim=1).to(images.device)
        epoch_loss = 0.0
        for start in range(0, m, settings.batch_size):
            pick = order[:, start:start + settings.batch_size]  # (N, b)
            x = images[pick]  # (N, b, C, H, W)
            if augment is not None:
                x = augment(x, generator)
            if settings.channels_last:
                x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(x.shape)
            optimiser.zero_grad(set_to_none=True)
            losses = _accumulate_gradients(nets.logits_each, x, targets[pick], microbatch,
                                           settings.bfloat16)
            optimiser.step()
            epoch_loss += float(losses.mean()) * pick.shape[1] / m
        tick()
        if curve is not None:
            curve.train_loss.append(epoch_loss)
            done = epoch + 1
            if test is not None and settings.test_every and done % settings.test_every == 0 \
                    and done < settings.epochs:
                with precision(settings.bfloat16, images.device):
                    result = test_nets(fmodel, nets.trained(), *test, test_chunk)
                curve.test_epochs.append(done)
                curve.test_accuracy.append(result.mean)
    return nets.trained()


@dataclass(frozen=True)
class _Training:
    """Nets in training: the tensors the optimiser updates, each net's logits on its own
    minibatch ((N, b, ...) -> (N, b, K), training mode) and the parameters reached (stacked,
    no graph)."""

    leaves: list[Tensor]
    logits_each: Callable[[Tensor], Tensor]
    trained: Callable[[], Params]


def _training(fmodel: FunctionalModel, params: Params) -> _Training:
    """One net trains as a module that owns its parameters (no functional call and no squeeze
    per step); N nets as stacked tensors through ``fmodel.logits_each``. Either way every
    tensor of ``params`` is trained."""
    if num_nets(params) == 1:
        net, own = _module_owning(fmodel, params)
        net.train()
        return _Training(list(own.values()), lambda x: net(x[0]).unsqueeze(0),
                         lambda: {k: v.detach().unsqueeze(0) for k, v in own.items()})
    stacked = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    return _Training(list(stacked.values()),
                     lambda x: fmodel.logits_each(stacked, x, train=True),
                     lambda: {k: v.detach() for k, v in stacked.items()})


def _module_owning(fmodel: FunctionalModel, params: Params) -> tuple[nn.Module, Params]:
    """A copy of the module whose parameters are new leaves holding one net's ``params``
    (N = 1), on their device, each one set under every name it has (tied weights stay tied)."""
    net = copy.deepcopy(fmodel.module).to(next(iter(params.values())).device)
    own = {k: nn.Parameter(v[0].detach().clone()) for k, v in params.items()}
    first_name = {id(p): name for name, p in net.named_parameters()}
    for name, p in list(net.named_parameters(remove_duplicate=False)):
        if first_name[id(p)] in own:
            owner, _, attribute = name.rpartition(".")
            setattr(net.get_submodule(owner), attribute, own[first_name[id(p)]])
    return net, own


def precision(bfloat16: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when asked, else nothing."""
    if bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _accumulate_gradients(logits_each: Callable[[Tensor], Tensor], x: Tensor, targets: Tensor,
                          microbatch: int, bfloat16: bool = False) -> Tensor:
    """Each of the N nets' mean loss on its minibatch ``x`` (N, b, ...) (shape (N,)); its
    gradient is accumulated into the nets' ``.grad``, ``microbatch`` images at a time; the
    forward pass under bfloat16 autocast when asked."""
    n, b = x.shape[:2]
    losses = x.new_zeros(n)
    for start in range(0, b, microbatch or b):
        part = slice(start, start + (microbatch or b))
        with torch.enable_grad():
            with precision(bfloat16, x.device):
                logits = logits_each(x[:, part])  # (N, part, K)
                summed = F.cross_entropy(logits.flatten(0, 1), targets[:, part].flatten(0, 1),
                                         reduction="none").view(n, -1).sum(1)
            (summed.sum() / b).backward()  # each net's gradient is that of its own mean loss
        losses += summed.detach() / b
    return losses


@dataclass(frozen=True)
class Runner:
    """How the held-out nets run: the module (or its fused copy), images per forward/backward
    pass (0: the whole minibatch) and per test chunk; ``name`` goes into the report."""

    name: str
    fmodel: FunctionalModel
    microbatch: int = 0
    test_chunk: int = TEST_CHUNK


def runner_for(fmodel: FunctionalModel, images: Tensor, nets_per_batch: int) -> Runner:
    """The fused ConvNet where its kernel runs (float32 on the CPU, one net at a time, the
    model's backend not ``pytorch``), else the module."""
    runs = fmodel.kernels and nets_per_batch == 1 and float32_on_cpu(
        images, *fmodel.module.parameters())
    fused = fused_convnet(fmodel.module) if runs else None
    if fused is None:
        return Runner("pytorch", fmodel)
    return Runner("fused-convnet", FunctionalModel(fused, fmodel.backend), FUSED_MICROBATCH,
                  FUSED_TEST_CHUNK)


@dataclass(frozen=True)
class Converged:
    """The nets' test results, their mean learning curve and the runner's name."""

    result: EvalResult
    curve: Curve
    runner: str


def evaluate_converged(
    fmodel: FunctionalModel, init: InitDistribution, images: Tensor, targets: Tensor,
    test_images: Tensor, test_labels: Tensor, nets: int, settings: ConvergeSettings,
    augment: DSA | None, generator: torch.Generator,
) -> Converged:
    """``nets`` fresh nets from ``init`` trained to convergence on the flat set and tested;
    the learning curve averages over the nets of all groups."""
    settings.check()
    if isinstance(init, PooledInit):
        nets = min(nets, len(init))
    parts, curves = [], []
    # batching convs over nets pays on CUDA, not on the CPU (benchmarks/bench_converge.py)
    stacks = images.device.type == "cuda" and not settings.bfloat16
    per_batch = settings.nets_per_batch or (10 if stacks else 1)
    runner = runner_for(fmodel, images, per_batch)
    bar = phase_bar(nets * settings.epochs, f"converge: {nets} nets x {settings.epochs} epochs "
                    f"on {images.shape[0]} images", "net-epoch")
    for start in range(0, nets, per_batch):
        n = min(per_batch, nets - start)
        drawn = init.take(start, n) if isinstance(init, PooledInit) else init.sample(n, generator)
        params = {k: v.to(images.device) for k, v in drawn.items()}
        curve = Curve()
        trained = train_to_convergence(runner.fmodel, params, images, targets, settings, augment,
                                       generator, (test_images, test_labels), curve,
                                       runner.microbatch, runner.test_chunk,
                                       lambda: bar.update(n))
        with precision(settings.bfloat16, images.device):
            parts.append(test_nets(runner.fmodel, trained, test_images, test_labels,
                                   runner.test_chunk))
        curve.test_epochs.append(settings.epochs)
        curve.test_accuracy.append(parts[-1].mean)
        curves.append((n, curve))
    bar.close()
    return Converged(EvalResult.cat(parts), _weighted(curves), runner.name)


def _weighted(curves: list[tuple[int, Curve]]) -> Curve:
    """Curves of net groups joined into one, each point weighted by its group's nets."""
    total = sum(n for n, _ in curves)

    def mean(field_of) -> list[float]:
        columns = zip(*(field_of(curve) for _, curve in curves))
        return [sum(n * v for (n, _), v in zip(curves, column)) / total for column in columns]

    return Curve(mean(lambda c: c.train_loss), curves[0][1].test_epochs,
                 mean(lambda c: c.test_accuracy))
