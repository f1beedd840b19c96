"""Pictures of distilled data: image grids, feature maps beside real ones, text listings."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .artifacts import GRID_FILE, Distilled, atomic_write  # noqa: E402
from .data import Dataset  # noqa: E402

TEXT_FILE = "distilled.txt"
NEAREST_DOCUMENTS = 3


def save_picture(distilled: Distilled, data: Dataset, folder: str | Path) -> Path:
    """The artifact's picture in ``folder`` as its data is best seen: an image grid, audio or
    feature maps beside real ones, or for text a listing of nearest tokens and documents."""
    folder = Path(folder)
    if data.kind == "image":
        save_grid(distilled, folder / GRID_FILE, data.mean, data.std, data.class_names)
        return folder / GRID_FILE
    if data.kind in ("sentences", "tokens") or data.image_shape[2] == 1:
        atomic_write(folder / TEXT_FILE, describe_text(distilled, data).encode())
        return folder / TEXT_FILE
    save_feature_maps(distilled, data, folder / GRID_FILE)
    return folder / GRID_FILE


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


def _denormalized(inputs: torch.Tensor, data: Dataset) -> torch.Tensor:
    mean = torch.tensor(data.mean).view(-1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1)
    return inputs.float().cpu() * std + mean


def save_feature_maps(distilled: Distilled, data: Dataset, path: str | Path) -> None:
    """PNG: every distilled (C, 1, L) input as a C x L map of standardized features (e.g.
    MFCCs over time, as the network sees them), captioned with its label, row after row, and
    under them one real training input of each class."""
    maps = distilled.images.flatten(0, 1).float().cpu().flatten(1, 2)  # (n, C, L)
    labels = distilled.labels.flatten(0, 1)
    real_index = torch.stack([(data.train_labels == c).nonzero()[0, 0]
                              for c in range(data.num_classes)]).cpu()
    real = data.train_images.cpu()[real_index].flatten(1, 2)
    columns = max(data.num_classes, min(len(maps), 20))
    distilled_rows = -(-len(maps) // columns)
    fig, axes = plt.subplots(distilled_rows + 1, columns, squeeze=False,
                             figsize=(1.0 * columns + 0.6, 1.1 * (distilled_rows + 1) + 0.6))
    cells = [(maps[i], labels[i]) for i in range(len(maps))]
    cells += [None] * (distilled_rows * columns - len(cells))
    cells += [(real[c], torch.tensor(c)) for c in range(data.num_classes)]
    for ax, cell in zip(axes.flat, cells + [None] * (axes.size - len(cells))):
        ax.axis("off")
        if cell is not None:
            ax.imshow(cell[0].numpy(), aspect="auto", origin="lower", cmap="RdBu_r",
                      vmin=-3, vmax=3)
            ax.set_title(caption(cell[1], data.class_names), fontsize=7)
    fig.suptitle(f"{data.name}: {len(maps)} distilled (top rows) and one real input per class "
                 "(bottom row); standardized features (vertical) x time", fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    atomic_write(Path(path), png.getvalue())


def describe_text(distilled: Distilled, data: Dataset) -> str:
    """Each distilled example: its label, its nearest vocabulary tokens (token level), and
    the nearest real training documents (cosine similarity in the normalized input space)."""
    from .text import nearest_tokens

    examples = distilled.images.flatten(0, 1).float().cpu()
    labels = distilled.labels.flatten(0, 1)
    real = torch.nn.functional.normalize(data.train_images.flatten(1).float().cpu(), dim=1)
    similar = torch.nn.functional.normalize(examples.flatten(1), dim=1) @ real.T
    tokens = (nearest_tokens(_denormalized(examples, data), data.encoder)
              if data.kind == "tokens" else None)
    lines = [f"{data.name}: {len(examples)} distilled examples"]
    for i in range(len(examples)):
        lines.append(f"\n[{i}] label {caption(labels[i], data.class_names)}")
        if tokens is not None:
            lines.append("  nearest tokens: " + " ".join(tokens[i]))
        for score, j in zip(*similar[i].topk(min(NEAREST_DOCUMENTS, len(real)))):
            document = data.train_texts[j] if data.train_texts else f"training input {int(j)}"
            title = document.strip().splitlines()[0][:90] if document.strip() else ""
            lines.append(f"  {float(score):.2f} [{data.class_names[int(data.train_labels[j])]}] "
                         f"{title}")
    return "\n".join(lines) + "\n"
