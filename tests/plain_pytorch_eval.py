"""Evaluate an exported set with plain PyTorch: no datadistill, only the file and the recipe.

    python tests/plain_pytorch_eval.py set.safetensors --test mnist --root data --dsa
    python tests/plain_pytorch_eval.py set.safetensors --test digits --width 16 --epochs 300

Reads the exchange layout (docs/exchange.md) with safetensors, writes out ConvNet-3 (3x3 conv
of ``width`` channels, instance norm as GroupNorm(width, width) with an affine map, ReLU,
2x2 average pooling, three times, then one linear layer; 28 px images padded to 32 by the
first conv) and trains fresh nets with the converge protocol's recipe (SGD, momentum 0.9,
weight decay 5e-4, lr 0.01 x 0.1 halfway, 1000 epochs, minibatches of 256, optional DSA), then
tests them on the dataset's real test split. Prints the accuracies as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn


# ------------------------------------------------------------------ the network
def conv_net(channels: int, size: int, classes: int, width: int, depth: int = 3) -> nn.Module:
    """ConvNet-``depth``: [conv 3x3, instance norm, ReLU, avg pool 2x2] x depth, linear."""
    padding = 3 if (channels, size) == (1, 28) else 1  # 28 px -> 32, as DC does for MNIST
    size += 2 * (padding - 1)
    layers: list[nn.Module] = []
    for d in range(depth):
        layers += [nn.Conv2d(channels if d == 0 else width, width, 3,
                             padding=padding if d == 0 else 1),
                   nn.GroupNorm(width, width, affine=True), nn.ReLU(), nn.AvgPool2d(2)]
        size //= 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, classes))


# ------------------------------------------------------------------ the real test split
def test_split(name: str, root: str) -> tuple[Tensor, Tensor]:
    """Pixels in [0, 1] (M, C, H, W) and labels (M,) of a dataset's test split."""
    if name == "digits":  # scikit-learn's digits; datadistill's split: the last 360 of a
        from sklearn.datasets import load_digits  # seed-0 permutation

        bunch = load_digits()
        order = np.random.default_rng(0).permutation(len(bunch.target))[1437:]
        images = torch.as_tensor(bunch.images[order], dtype=torch.float32) / 16.0
        return images.unsqueeze(1), torch.as_tensor(bunch.target[order], dtype=torch.int64)
    if name == "mnist":
        from torchvision.datasets import MNIST

        test = MNIST(root, train=False, download=False)
        return test.data.float().div(255.0).unsqueeze(1), test.targets.long()
    raise SystemExit(f"unknown --test {name}; choose digits or mnist")


# ------------------------------------------------------------------ augmentation (DSA)
def dsa(x: Tensor, gen: torch.Generator, flip: bool) -> Tensor:
    """One DSA operation drawn for the minibatch, its parameters drawn per image: colour
    (brightness, saturation, contrast), crop (shift up to 1/8 of the side), cutout (a
    half-side square), flip, scale (1/1.2 to 1.2 per axis) or rotate (up to 15 degrees)."""
    ops = ["color", "crop", "cutout", "scale", "rotate"] + (["flip"] if flip else [])
    op = ops[int(torch.randint(len(ops), (1,), generator=gen))]
    n, _, h, w = x.shape
    u = lambda *shape: torch.rand(n, *shape, generator=gen)  # noqa: E731
    if op == "color":
        x = x + (u(1, 1, 1) - 0.5)
        x = (x - x.mean(1, keepdim=True)) * (2 * u(1, 1, 1)) + x.mean(1, keepdim=True)
        mean = x.mean((1, 2, 3), keepdim=True)
        return (x - mean) * (u(1, 1, 1) + 0.5) + mean
    if op == "flip":
        return torch.where(u(1, 1, 1) < 0.5, x.flip(3), x)
    if op == "cutout":
        side = int(h * 0.5 + 0.5)
        rows, cols = torch.arange(h), torch.arange(w)
        top = torch.randint(0, h + 1 - side % 2, (n, 1), generator=gen) - side // 2
        left = torch.randint(0, w + 1 - side % 2, (n, 1), generator=gen) - side // 2
        box = (((rows >= top) & (rows < top + side))[:, :, None]
               & ((cols >= left) & (cols < left + side))[:, None, :])
        return x * (~box).unsqueeze(1).float()
    theta = torch.eye(2, 3).repeat(n, 1, 1)
    if op == "crop":
        shift = int(h * 0.125 + 0.5)
        theta[:, :, 2] = torch.randint(-shift, shift + 1, (n, 2), generator=gen) * 2 / (h - 1)
    elif op == "scale":
        theta[:, 0, 0], theta[:, 1, 1] = (u(2) * (1.2 - 1 / 1.2) + 1 / 1.2).unbind(1)
    else:  # rotate
        angle = (u() - 0.5) * 2 * math.radians(15)
        theta[:, 0, :2] = torch.stack([angle.cos(), angle.sin()], 1)
        theta[:, 1, :2] = torch.stack([-angle.sin(), angle.cos()], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


# ------------------------------------------------------------------ training and testing
def train(net: nn.Module, images: Tensor, targets: Tensor, args: argparse.Namespace,
          gen: torch.Generator, flip: bool) -> None:
    """Minibatch SGD with momentum and weight decay; the lr drops x 0.1 halfway."""
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    net.train()
    for epoch in range(args.epochs):
        if epoch == args.epochs // 2:
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.1
        order = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, images.shape[0], args.batch_size):
            pick = order[start:start + args.batch_size]
            x = dsa(images[pick], gen, flip) if args.dsa else images[pick]
            loss = F.cross_entropy(net(x), targets[pick])  # indices or probabilities
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor) -> float:
    net.eval()
    hits = sum(int((net(images[i:i + 1000]).argmax(1) == labels[i:i + 1000]).sum())
               for i in range(0, images.shape[0], 1000))
    return hits / images.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("set", help="a .safetensors file written by `datadistill export`")
    p.add_argument("--test", required=True, help="digits (scikit-learn) or mnist (torchvision)")
    p.add_argument("--root", default="data", help="torchvision root for --test mnist")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--nets", type=int, default=5)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dsa", action="store_true", help="DSA (no flips for digits)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    tensors = load_file(args.set)
    images, targets = tensors["images"].float(), tensors["labels"]  # normalised, not clamped
    mean, std = tensors["mean"].view(1, -1, 1, 1), tensors["std"].view(1, -1, 1, 1)
    test_pixels, test_labels = test_split(args.test, args.root)
    test_images = (test_pixels - mean) / std  # the set's normalisation
    with safe_open(args.set, "pt") as handle:
        classes = len(json.loads(handle.metadata()["class_names"]))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    accuracies = []
    for _ in range(args.nets):  # each net: PyTorch's default init, its own order
        net = conv_net(images.shape[1], images.shape[2], classes, args.width)
        train(net, images, targets, args, gen, flip=args.test not in ("digits", "mnist"))
        accuracies.append(accuracy(net, test_images, test_labels))
    assert not any(m.split(".")[0] == "datadistill" for m in sys.modules), "datadistill loaded"
    acc = torch.tensor(accuracies)
    print(json.dumps({"accuracy_mean": float(acc.mean()),
                      "accuracy_std": float(acc.std()) if len(acc) > 1 else 0.0,
                      "per_net_accuracy": accuracies, "images": int(images.shape[0])}))


if __name__ == "__main__":
    main()
