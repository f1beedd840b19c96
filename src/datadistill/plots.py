"""Pictures of distilled data."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .artifacts import Distilled, atomic_write  # noqa: E402


def save_grid(
    distilled: Distilled, path: str | Path, mean: Sequence[float], std: Sequence[float],
    class_names: Sequence[str],
) -> None:
    """PNG grid: rows = steps, columns = images of each step, lrs per row; above each image
    its class, or its two most likely classes for learned labels."""
    images = distilled.images.float().cpu()
    n_steps, per_step = images.shape[:2]
    mean_t = torch.tensor(mean).view(-1, 1, 1)
    std_t = torch.tensor(std).view(-1, 1, 1)
    lrs = distilled.lrs.float().cpu().view(-1, n_steps)  # (epochs, steps)
    labels = distilled.labels
    same_classes_each_step = labels.dim() == 2 and bool((labels == labels[:1]).all())
    fig, axes = plt.subplots(n_steps, per_step, squeeze=False,
                             figsize=(1.1 * per_step + 1.6, 1.15 * n_steps + 0.5))
    for s in range(n_steps):
        for j in range(per_step):
            ax = axes[s][j]
            pixels = (images[s, j] * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()
            if pixels.shape[2] == 1:
                ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(pixels)
            ax.set_xticks([])
            ax.set_yticks([])
            if s == 0 or not same_classes_each_step:
                ax.set_title(caption(distilled.labels[s, j], class_names), fontsize=7)
        lr_text = ", ".join(f"{float(v):.3g}" for v in lrs[:, s])
        axes[s][0].set_ylabel(f"step {s + 1}\nlr {lr_text}", fontsize=7, rotation=0,
                              ha="right", va="center")
    fig.suptitle(f"{distilled.meta.get('dataset', {}).get('name', '')} distilled: "
                 f"{n_steps} steps x {lrs.shape[0]} epochs", fontsize=10)
    _save(fig, path)


def save_curve(curve: dict[str, list], path: str | Path, title: str) -> None:
    """PNG of a converge-protocol learning curve: training loss per epoch (left axis) and
    test accuracy where it was measured (right axis), means over the nets."""
    fig, loss_ax = plt.subplots(figsize=(6, 3.5))
    epochs = range(1, len(curve["train_loss"]) + 1)
    loss_ax.plot(epochs, curve["train_loss"], color="tab:blue")
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss", color="tab:blue")
    acc_ax = loss_ax.twinx()
    acc_ax.plot(curve["test_epochs"], [100 * a for a in curve["test_accuracy"]], "o-",
                color="tab:red")
    acc_ax.set_ylabel("test accuracy (%)", color="tab:red")
    loss_ax.set_title(title, fontsize=9)
    _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> None:
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    atomic_write(Path(path), png.getvalue())


def caption(label: torch.Tensor, class_names: Sequence[str]) -> str:
    """A class index as its name; soft label probabilities as the top two, e.g. "3 .81 8 .12"."""
    if not label.is_floating_point():
        return class_names[int(label)]
    top = label.float().topk(min(2, label.numel()))
    return " ".join(f"{class_names[int(i)]} {float(p):.2f}".replace("0.", ".")
                    for p, i in zip(top.values, top.indices))
