"""The architectures of the modern evaluation protocol: ConvNet, a ResNet and a VGG.

ConvNet-3 is the network every distillation paper since 2020 reports on (DC, DSA, DM, MTT):
``depth`` blocks of 3x3 conv (``width`` channels), normalisation, ReLU and 2x2 pooling, then
one linear layer. Instance norm is ``GroupNorm(C, C)`` with an affine map. No normalisation
here keeps running statistics, so every net runs through the engine's functional path.
``models`` registers the names of ``CONV_FAMILIES``.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .errors import DistillError

NORMS = ("instance", "group", "layer", "none")
POOLS = ("avg", "max", "none")


def norm_layer(kind: str, channels: int, size: int) -> nn.Module:
    """The normalisation of ``channels`` feature maps of ``size`` x ``size`` (no running stats)."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(4, channels), channels, affine=True)
    if kind == "layer":
        return nn.LayerNorm([channels, size, size])
    if kind == "none":
        return nn.Identity()
    raise DistillError(f"unknown normalisation {kind!r}; choose one of: {', '.join(NORMS)}")


def _first_padding(channels: int, size: int) -> int:
    """3x3 conv padding of the first layer: 28 px images are padded to 32 (as DC's code does
    for MNIST), so three 2x2 pools leave 4x4 maps."""
    return 3 if (channels, size) == (1, 28) else 1


class ConvNet(nn.Module):
    """ConvNet-``depth``: [conv 3x3, norm, ReLU, pool 2x2] x depth, then a linear head."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 128,
                 depth: int = 3, norm: str = "instance", pool: str = "avg"):
        super().__init__()
        channels, size, _ = image_shape
        padding = _first_padding(channels, size)
        size += 2 * (padding - 1)
        layers: list[nn.Module] = []
        for d in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=padding if d == 0 else 1),
                       norm_layer(norm, width, size), nn.ReLU()]
            if pool != "none":
                layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
                size //= 2
            channels = width
        if size < 1:
            raise DistillError(f"ConvNet of depth {depth} pools {image_shape[1]} px images "
                               "away; pick a shallower --model")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)  # (B, width*size*size)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with normalisation and a shortcut (a 1x1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, size: int):
        super().__init__()
        out_size = (size + stride - 1) // stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, cout, out_size)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, cout, out_size)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          norm_layer(norm, cout, out_size))

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(x)).relu()
        return (self.norm2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """A CIFAR-style ResNet (3x3 stem, four stages of basic blocks at widths w, 2w, 4w, 8w,
    global average pooling, linear head) with instance norm instead of batch norm."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int,
                 blocks: tuple[int, ...] = (2, 2, 2, 2), width: int = 64, norm: str = "instance"):
        super().__init__()
        channels, size, _ = image_shape
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False),
                                  norm_layer(norm, width, size), nn.ReLU())
        stages: list[nn.Module] = []
        cin = width
        for i, count in enumerate(blocks):
            cout = width * 2 ** i
            for b in range(count):
                stride = 2 if i > 0 and b == 0 else 1
                stages.append(BasicBlock(cin, cout, stride, norm, size))
                size = (size + stride - 1) // stride
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.stages(self.stem(x)).mean((2, 3)))


VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # widths in multiples of w


class VGG(nn.Module):
    """VGG-11 with instance norm: 3x3 convs, 2x2 max pools down to 1x1, a linear head."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 64,
                 norm: str = "instance"):
        super().__init__()
        channels, size, _ = image_shape
        padding = _first_padding(channels, size)
        size += 2 * (padding - 1)
        layers: list[nn.Module] = []
        for item in VGG11:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            cout = width * int(item)
            layers += [nn.Conv2d(channels, cout, 3, padding=padding), norm_layer(norm, cout, size),
                       nn.ReLU()]
            channels, padding = cout, 1
        if size < 1:
            raise DistillError(f"VGG-11 takes images of at least 32 px (28 px are padded), got "
                               f"{image_shape[1]}; pick another --model")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


Factory = Callable[[tuple[int, int, int], int], nn.Module]


def _convnet(**options) -> Factory:
    return lambda shape, k: ConvNet(shape, k, **options)


CONV_FAMILIES: dict[str, Factory] = {
    "convnet": _convnet(),  # ConvNet-3, width 128, instance norm, average pooling
    "convnet-w16": _convnet(width=16),
    "convnet-w32": _convnet(width=32),
    "convnet-w64": _convnet(width=64),
    "convnet-d1": _convnet(depth=1),
    "convnet-d2": _convnet(depth=2),
    "convnet-d4": _convnet(depth=4),
    "convnet-nn": _convnet(norm="none"),
    "convnet-gn": _convnet(norm="group"),
    "convnet-ln": _convnet(norm="layer"),
    "convnet-mp": _convnet(pool="max"),
    "resnet18": lambda shape, k: ResNet(shape, k),
    "resnet10-w16": lambda shape, k: ResNet(shape, k, blocks=(1, 1, 1, 1), width=16),
    "vgg11": lambda shape, k: VGG(shape, k),
    "vgg11-w16": lambda shape, k: VGG(shape, k, width=16),
}
