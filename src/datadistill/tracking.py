"""TensorBoard logging of a distillation run (``--log-dir``): watch it while it runs.

Scalars, with the meta-iteration (1, 2, ...; counted across epochs) as the step:
``meta_loss``; the learned lrs ``lr/mean``, ``lr/min``, ``lr/max`` and, when there are at
most ``FEW_LRS``, each one (``lr/t01``, ...); the norm of the meta-gradient, in all and of
each learnable tensor (``grad_norm/total``, ``grad_norm/images``, ``grad_norm/raw_lrs``,
``grad_norm/label_logits``); at each ``--eval-every`` evaluation, ``eval/accuracy_mean``,
``eval/accuracy_std``, ``eval/loss_mean``, ... at the iteration that ends the epoch.
Image ``distilled``: the grid of distilled images (rows = steps), un-normalized with the
dataset's mean and std, at the start (step 0) and at the end of every epoch.

A fresh run hides whatever an earlier run left in the same folder; a resumed one appends
(events past its checkpoint are hidden: TensorBoard's ``purge_step``). Under torchrun only
rank 0 writes; without ``--log-dir`` every method does nothing.
"""
from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch

from .data import Dataset
from .distributed import current
from .errors import DistillError
from .runfolder import check_out_folder
from .state import DistilledSteps

FEW_LRS = 10  # at most this many learned lrs: a scalar for each


def check_log_dir(log_dir: str) -> None:
    """Refuse a --log-dir that cannot be written, or a missing tensorboard, before any work."""
    if not log_dir:
        return
    check_out_folder(Path(log_dir), flag="--log-dir")
    _summary_writer()


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DistillError("--log-dir needs the tensorboard package: "
                           ".venv/bin/pip install tensorboard") from None
    return SummaryWriter


class Tracker:
    """What distill() reports to TensorBoard; every method is a no-op without a writer."""

    def __init__(self, log_dir: str, data: Dataset, steps: DistilledSteps,
                 first_iteration: int = 0):
        self.writer = None
        if not log_dir or not current().is_main:
            return
        # purge_step: hide events an interrupted or earlier run left past this point
        purge = first_iteration + 1 if first_iteration else 0
        self.writer = _summary_writer()(log_dir, purge_step=purge)
        self._close = weakref.finalize(self, self.writer.close)  # also on errors and at exit
        self._mean = torch.tensor(data.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(data.std, dtype=torch.float32).view(-1, 1, 1)
        if first_iteration == 0:
            self._grid(0, steps)

    def iteration(self, iteration: int, meta_loss: float, steps: DistilledSteps) -> None:
        """After a meta-iteration: its meta-loss, the lrs and the meta-gradient's norms."""
        if self.writer is None:
            return
        add = self.writer.add_scalar
        add("meta_loss", meta_loss, iteration)
        with torch.no_grad():
            lrs = steps.lrs().detach().float().cpu()
            add("lr/mean", float(lrs.mean()), iteration)
            add("lr/min", float(lrs.min()), iteration)
            add("lr/max", float(lrs.max()), iteration)
            if steps.raw_lrs.numel() <= FEW_LRS:  # one curve for one lr shared by all steps
                for t, lr in enumerate(lrs[:steps.raw_lrs.numel()].tolist()):
                    add(f"lr/t{t + 1:02d}", lr, iteration)
            norms = {name: float(tensor.grad.norm()) for name, tensor in steps.learnable().items()
                     if tensor.grad is not None}
        if norms:
            add("grad_norm/total", sum(n * n for n in norms.values()) ** 0.5, iteration)
            for name, norm in norms.items():
                add(f"grad_norm/{name}", norm, iteration)

    def epoch(self, iteration: int, steps: DistilledSteps, evaluation: Any = None,
              validation_accuracy: float | None = None) -> None:
        """At the end of an epoch: the evaluation (an EvalResult, if one ran), the
        --validation accuracy (if scored) and the grid."""
        if self.writer is None:
            return
        if evaluation is not None:
            for name, value in evaluation.summary().items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"eval/{name}", value, iteration)
        if validation_accuracy is not None:
            self.writer.add_scalar("eval/validation_accuracy", validation_accuracy, iteration)
        self._grid(iteration, steps)
        self.writer.flush()  # everything up to the checkpoint that follows is on disk

    def close(self) -> None:
        if self.writer is not None:
            self._close()

    def _grid(self, iteration: int, steps: DistilledSteps) -> None:
        from torchvision.utils import make_grid

        images = steps.full_images().float().cpu()
        per_step = images.shape[1]
        pixels = (images.flatten(0, 1) * self._std + self._mean).clamp(0, 1)
        self.writer.add_image("distilled", make_grid(pixels, nrow=per_step, padding=1,
                                                     pad_value=1.0), iteration)
