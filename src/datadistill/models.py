"""The paper's networks, a small MLP, a 1-D CNN for sequences, the ConvNet family
(``convnets``), and the registry that builds them.

Any ``nn.Module`` works with the engine: it is run functionally on a parameter dict
(``torch.func.functional_call``), so no special base class is needed.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .convnets import CONV_FAMILIES
from .errors import DistillError
from .registry import Registry

ModelFactory = Callable[[tuple[int, int, int], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def list_models() -> list[str]:
    """Names of the registered architectures."""
    return MODELS.names()


def build_model(name: str, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a registered architecture for images of ``image_shape`` (C, H, W)."""
    return MODELS.get(name)(tuple(image_shape), num_classes)


class StridedMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with a faster inference path: the maximum of k×k strided views.

    Same values as the native kernel, which on CPU is several times slower in forward-only
    use (the test pass of evaluation). In grad mode the native kernel runs: its backward is
    the faster one, and it keeps the native choice of one winner per tied window.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # grad mode, not x.requires_grad: inside vmap a tracked input reports False
        if (torch.is_grad_enabled() or self.ceil_mode
                or self.return_indices or self.dilation not in (1, (1, 1))):
            return super().forward(x)
        (kh, kw), (sh, sw), (ph, pw) = (nn.modules.utils._pair(v) for v in
                                        (self.kernel_size, self.stride or self.kernel_size, self.padding))
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=float("-inf"))
        out_h, out_w = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
        views = (x[..., i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                 for i in range(kh) for j in range(kw))
        out = next(views)
        for view in views:
            out = torch.maximum(out, view)
        return out


class LeNet(nn.Module):
    """LeNet as in the paper's code: 28 px inputs get padding 2 in the first conv.

    Each max-pool comes before its ReLU: the two commute (same values, same gradients), and
    pooling first runs the ReLU on a quarter of the values.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        if image_size not in (28, 32):
            raise DistillError(
                f"LeNet takes 28x28 or 32x32 images, got {image_size}x{image_size}; "
                "pick another --model (for example mlp)"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2 if image_size == 28 else 0),  # 6x28x28
            StridedMaxPool2d(2),  # 6x14x14
            nn.ReLU(),
            nn.Conv2d(6, 16, 5),  # 16x10x10
            StridedMaxPool2d(2),  # 16x5x5
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AlexCifarNet(nn.Module):
    """The paper's CIFAR-10 network; local response norm comes before the second pool.

    The first max-pool comes before its ReLU (they commute); the second ReLU must stay
    before the local response norm.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        if image_size != 32:
            raise DistillError(f"AlexCifarNet takes 32x32 images, got {image_size}x{image_size}")
        lrn = lambda: nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2),  # 64x32x32
            StridedMaxPool2d(3, stride=2, padding=1),  # 64x16x16
            nn.ReLU(),
            lrn(),
            nn.Conv2d(64, 64, 5, padding=2),  # 64x16x16
            nn.ReLU(),
            lrn(),
            StridedMaxPool2d(3, stride=2, padding=1),  # 64x8x8
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4096, 384),
            nn.ReLU(),
            nn.Linear(384, 192),
            nn.ReLU(),
            nn.Linear(192, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A two-hidden-layer perceptron for small images (e.g. the 8x8 digits)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SequenceCNN(nn.Module):
    """1-D convolutions along the positions of (C, 1, L) inputs (audio frames of C features,
    or L token embeddings of C dimensions): three 3-wide convs with ReLU, one 2x average
    pool, and a linear head over the pooled positions."""

    def __init__(self, channels: int, length: int, num_classes: int, width: int = 128):
        super().__init__()
        if length < 2:
            raise DistillError(f"seqcnn takes sequences (C, 1, L) with L >= 2 positions, got "
                               f"L = {length}; pick --model mlp for vectors")
        self.features = nn.Sequential(
            nn.Conv1d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool1d(2),
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(width * (length // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(2)).flatten(1))


class TextCNN(nn.Module):
    """A convolution over token positions (3 tokens wide) with ReLU, the mean over all
    positions, and a linear head: what a text says, wherever it says it. The mean (not Kim's
    maximum) sends a gradient to every position, so a fresh net learns in a few steps: on BBC
    News, 5 real articles and 10 steps give 60 % with the mean against 30 % with the maximum."""

    def __init__(self, channels: int, num_classes: int, width: int = 128):
        super().__init__()
        self.conv = nn.Conv1d(channels, width, 3, padding=1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.conv(x.flatten(2))).mean(dim=2))


def _sequence_cnn(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if shape[1] != 1:
        raise DistillError(f"seqcnn takes sequences shaped (C, 1, L), got {tuple(shape)}; "
                           "pick another --model for images")
    return SequenceCNN(shape[0], shape[2], num_classes)


MODELS.register("lenet")(lambda shape, k: LeNet(shape[0], shape[1], k))
MODELS.register("alexcifarnet")(lambda shape, k: AlexCifarNet(shape[0], shape[1], k))
def _alexnet(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision's AlexNet (for ImageNet-pretrained weights: ``--weights``)."""
    from torchvision.models import alexnet

    if shape[0] != 3:
        raise DistillError(f"AlexNet takes 3-channel images, got {shape[0]}")
    return alexnet(weights=None, num_classes=num_classes)


MODELS.register("alexnet")(_alexnet)
MODELS.register("mlp")(lambda shape, k: MLP(shape[0] * shape[1] * shape[2], k))
MODELS.register("seqcnn")(_sequence_cnn)
MODELS.register("textcnn")(lambda shape, k: TextCNN(shape[0], k))
for _name, _factory in CONV_FAMILIES.items():
    MODELS.register(_name)(_factory)
