"""Train fresh networks on a sequence of GD steps and test them, many nets at once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .artifacts import load
from .data import load_dataset
from .functional import FunctionalModel, Params, num_nets
from .init_distributions import FixedInit, InitDistribution, RandomInit
from .inner_loop import gd_step
from .models import build_model
from .runtime import generator, resolve_device

Step = tuple[Tensor, Tensor, float | Tensor]  # (images, labels, lr)


@dataclass
class EvalResult:
    """Test accuracy and loss of each evaluated net."""

    accuracies: Tensor
    losses: Tensor

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        return float(self.accuracies.std()) if len(self.accuracies) > 1 else 0.0

    def summary(self) -> dict[str, float | int]:
        return {"accuracy_mean": self.mean, "accuracy_std": self.std,
                "loss_mean": float(self.losses.mean()), "nets": len(self.accuracies)}

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f}% ± {100 * self.std:.2f} over {len(self.accuracies)} nets"


def train_nets(fmodel: FunctionalModel, params: Params, steps: Sequence[Step]) -> Params:
    """Apply the GD steps to N stacked nets at once; returns the trained weights."""
    for images, labels, lr in steps:
        with torch.enable_grad():
            params = gd_step(fmodel, params, images, labels,
                             torch.as_tensor(lr, dtype=images.dtype, device=images.device),
                             create_graph=False)
        params = {k: v.detach() for k, v in params.items()}
    return params


@torch.no_grad()
def test_nets(
    fmodel: FunctionalModel, params: Params, images: Tensor, labels: Tensor, chunk_size: int = 512
) -> EvalResult:
    """Accuracy and mean loss of each of the N nets on (images, labels), in eval mode.

    Nets are tested one after another: on large test batches a vectorized conv over
    N weight sets is slower on CPU than N plain convs.
    """
    correct = torch.zeros(num_nets(params), device=images.device)
    loss_sum = torch.zeros_like(correct)
    for i in range(len(correct)):
        one = {k: v[i:i + 1] for k, v in params.items()}
        for start in range(0, images.shape[0], chunk_size):
            x, y = images[start:start + chunk_size], labels[start:start + chunk_size]
            logits = fmodel.logits(one, x, train=False)[0]
            correct[i] += (logits.argmax(-1) == y).sum()
            loss_sum[i] += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    return EvalResult((correct / images.shape[0]).cpu(), (loss_sum / images.shape[0]).cpu())


def evaluate_steps(
    fmodel: FunctionalModel,
    init: InitDistribution,
    steps: Sequence[Step],
    test_images: Tensor,
    test_labels: Tensor,
    nets: int,
    generator: torch.Generator,
    nets_per_batch: int = 25,
) -> EvalResult:
    """Sample ``nets`` initial weights, train each on ``steps``, and test them."""
    results = []
    for start in range(0, nets, nets_per_batch):
        n = min(nets_per_batch, nets - start)
        params = {k: v.to(test_images.device) for k, v in init.sample(n, generator).items()}
        results.append(test_nets(fmodel, train_nets(fmodel, params, steps),
                                 test_images, test_labels))
    return EvalResult(torch.cat([r.accuracies for r in results]),
                      torch.cat([r.losses for r in results]))


def evaluate(run: str | Path, nets: int = 200, data_root: str | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Held-out evaluation of a run folder: ``nets`` fresh nets from its init distribution.

    Nets of a random-init artifact are drawn with seeds disjoint from distillation's; a
    fixed-init artifact is evaluated on its stored initial weights.
    """
    distilled = load(run)
    meta, config = distilled.meta, distilled.meta["config"]
    dev = resolve_device(device)
    data = load_dataset(meta["dataset"]["name"], data_root or config["data_root"]).to(dev)
    module = build_model(meta["model"]["name"], data.image_shape, data.num_classes).to(dev)
    init: InitDistribution = (FixedInit(distilled.init) if distilled.init is not None
                              else RandomInit(module, config["init_scheme"]))
    steps = [(x.to(dev), y.to(dev), lr) for x, y, lr in distilled.steps()]
    result = evaluate_steps(FunctionalModel(module), init, steps, data.test_images,
                            data.test_labels, 1 if distilled.init is not None else nets,
                            generator(config["seed"], "held-out"))
    return {"run": str(run), "dataset": data.name, **result.summary()}
