"""N stacked networks trained on a sequence of GD steps and tested: the primitives that
evaluation, pools and distillation share.

LeNets on the CPU run through the compiled kernel (unless the model's backend is
``pytorch``); any other module in PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import FunctionalModel, Params, num_nets
from .inner_loop import gd_step, momentum_step
from .kernels.lenet import lenet_logits_fn, lenet_train_fn
from .runtime import generator

Step = tuple[Tensor, Tensor, float | Tensor]  # (images, labels, lr)


@dataclass
class EvalResult:
    """Test loss and confusion counts (true class × predicted class) of each evaluated net."""

    losses: Tensor  # (N,)
    confusion: Tensor  # (N, classes, classes)
    attack: tuple[int, int] | None = None  # (K, T): also report Figure 6's metrics

    @property
    def accuracies(self) -> Tensor:
        return self.confusion.diagonal(dim1=1, dim2=2).sum(1) / self.confusion.sum((1, 2))

    @property
    def class_accuracies(self) -> Tensor:
        return self.confusion.diagonal(dim1=1, dim2=2) / self.confusion.sum(2).clamp(min=1)

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        return _std(self.accuracies)

    def attack_metrics(self) -> dict[str, float]:
        """Figure 6's metrics: accuracy w.r.t. labels with K → T, and the fraction of class K
        predicted as T (mean ± std over nets)."""
        if self.attack is None:
            return {}
        attacked, target = self.attack
        as_target = self.confusion[:, attacked, target]
        modified = self.confusion.diagonal(dim1=1, dim2=2).sum(1) - self.confusion[:, attacked, attacked]
        modified_acc = (modified + as_target) / self.confusion.sum((1, 2))
        ratio = as_target / self.confusion[:, attacked].sum(1).clamp(min=1)
        return {"modified_accuracy_mean": float(modified_acc.mean()),
                "modified_accuracy_std": _std(modified_acc),
                "attack_ratio_mean": float(ratio.mean()), "attack_ratio_std": _std(ratio)}

    def summary(self) -> dict[str, Any]:
        return {"accuracy_mean": self.mean, "accuracy_std": self.std,
                "loss_mean": float(self.losses.mean()), "loss_std": _std(self.losses),
                "per_class_accuracy": self.class_accuracies.mean(0).tolist(),
                "per_net_accuracy": self.accuracies.tolist(),  # outliers hide in the std
                "nets": len(self.losses), **self.attack_metrics()}

    @staticmethod
    def cat(parts: Sequence["EvalResult"]) -> "EvalResult":
        return EvalResult(torch.cat([p.losses for p in parts]),
                          torch.cat([p.confusion for p in parts]), parts[0].attack)

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f}% ± {100 * self.std:.2f} over {len(self.losses)} nets"


def _std(values: Tensor) -> float:
    return float(values.std()) if len(values) > 1 else 0.0


def schedule(images: Tensor, labels: Tensor, lrs: Tensor | Sequence[float] | float,
             epochs: int, minibatch: int = 0) -> list[Step]:
    """GD steps over ``epochs`` passes of the S batches; lr t is ``lrs[t]`` (cycled) or a constant.

    With ``minibatch`` (below a batch's size) step t takes that many of its batch's images,
    drawn with a fixed seed so every evaluation sees the same sequence.
    """
    n_batches = images.shape[0]
    total = n_batches * epochs
    if isinstance(lrs, (int, float)):
        lr_list = [float(lrs)] * total
    else:
        values = [float(v) for v in lrs]
        lr_list = [values[t % len(values)] for t in range(total)]
    steps = [(images[t % n_batches], labels[t % n_batches], lr_list[t]) for t in range(total)]
    if 0 < minibatch < images.shape[1]:
        draws = generator(0, "evaluation-minibatches")
        picks = [torch.randperm(images.shape[1], generator=draws)[:minibatch].to(images.device)
                 for _ in steps]
        steps = [(x[pick], y[pick], lr) for (x, y, lr), pick in zip(steps, picks)]
    return steps


def train_nets(fmodel: FunctionalModel, params: Params, steps: Sequence[Step],
               momentum: float = 0.0) -> Params:
    """Apply the GD steps (heavy-ball with ``momentum`` β > 0) to N stacked nets at once
    (LeNets on the CPU through the compiled kernel); returns the trained weights."""
    compiled = lenet_train_fn(fmodel.module, params, steps[0][0]) \
        if steps and fmodel.kernels else None
    if compiled is not None:
        return compiled(params, steps, momentum)
    velocity = {k: torch.zeros_like(v) for k, v in params.items()} if momentum else {}
    for images, labels, lr in steps:
        lr = torch.as_tensor(lr, dtype=images.dtype, device=images.device)
        with torch.enable_grad():
            if momentum:
                params, velocity = momentum_step(fmodel, params, velocity, images, labels, lr,
                                                 momentum, create_graph=False)
            else:
                params = gd_step(fmodel, params, images, labels, lr, create_graph=False)
        params = {k: v.detach() for k, v in params.items()}
    return params


TEST_CHUNK = 512  # test images per forward pass


@torch.no_grad()
def test_nets(
    fmodel: FunctionalModel, params: Params, images: Tensor, labels: Tensor,
    chunk_size: int = TEST_CHUNK
) -> EvalResult:
    """Mean loss and confusion counts of each of the N nets, in eval mode.

    LeNets on the CPU run through the compiled kernel (all nets per chunk of images); any
    other module runs one net after another: on large test batches a vectorized conv over
    N weight sets is slower on CPU than N plain convs.
    """
    n = num_nets(params)
    compiled = lenet_logits_fn(fmodel.module, params, images) if fmodel.kernels else None
    logits_of = compiled or _one_net_at_a_time(fmodel, params)
    loss_sum = torch.zeros(n, device=images.device)
    confusion = None
    for start in range(0, images.shape[0], chunk_size):
        x, y = images[start:start + chunk_size], labels[start:start + chunk_size]
        logits = logits_of(x)  # (N, B, classes)
        classes = logits.shape[-1]  # the model's outputs set the size of the confusion matrix
        if confusion is None:
            confusion = torch.zeros(n, classes * classes, dtype=torch.long, device=x.device)
        pairs = y * classes + logits.argmax(-1)
        confusion.scatter_add_(1, pairs, torch.ones_like(pairs))
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.repeat(n),
                                    reduction="none").view(n, -1).sum(1)
    return EvalResult((loss_sum / images.shape[0]).cpu(),
                      confusion.view(n, classes, classes).cpu())


def _one_net_at_a_time(fmodel: FunctionalModel, params: Params) -> Callable[[Tensor], Tensor]:
    nets = [{k: v[i:i + 1] for k, v in params.items()} for i in range(num_nets(params))]
    return lambda x: torch.cat([fmodel.logits(one, x, train=False) for one in nets])
