"""Shared fixtures: tiny synthetic datasets and modules, and the real MNIST when present."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from datadistill.data import Dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_dataset(n_train: int = 96, n_test: int = 48, classes: int = 3, size: int = 4,
                 channels: int = 1, seed: int = 0) -> Dataset:
    """Separable synthetic images: each class is a noisy copy of its own prototype."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, channels, size, size, generator=gen)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % classes
        noise = 0.5 * torch.randn(n, channels, size, size, generator=gen)
        return prototypes[labels] + noise, labels

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, (0.0,) * channels,
                   (1.0,) * channels, tuple(f"c{i}" for i in range(classes)), "mlp")


class TinyConvNet(nn.Module):
    """A user module with no special base class: conv -> relu -> linear."""

    def __init__(self, classes: int = 3, size: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture
def tiny_data() -> Dataset:
    return make_dataset()


@pytest.fixture
def mnist_root() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip("the full MNIST is not in ../shared/data")
    return SHARED_DATA
