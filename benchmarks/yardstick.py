"""The yardstick: what the paper's public code does per meta-iteration, re-written plainly.

One net at a time; its weights are one flat vector; each inner step takes
``autograd.grad(loss, w, lr, create_graph=True)`` and continues from the new weights
detached as a fresh leaf; the reverse pass walks the stored steps with Hessian-vector
products to the images and lrs. Used only to measure datadistill against it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from datadistill.models import StridedMaxPool2d


def textbook(module: nn.Module) -> nn.Module:
    """A copy of one of datadistill's networks as the paper's code writes it.

    torch's own max-pool layers in place of ``StridedMaxPool2d``, and every ReLU back before
    its pool (datadistill pools first, which gives the same values and gradients).
    """
    module = copy.deepcopy(module)
    for parent in module.modules():
        if isinstance(parent, nn.Sequential):
            layers = list(parent)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], StridedMaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
                    layers[i], layers[i + 1] = layers[i + 1], layers[i]
            for i, layer in enumerate(layers):
                if isinstance(layer, StridedMaxPool2d):
                    layer = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
                setattr(parent, str(i), layer)
    return module


class FlatNet:
    """A module driven by one flat weight vector."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.sizes = [p.numel() for _, p in module.named_parameters()]

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        pieces = flat.split(self.sizes)
        params = {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes)}
        return functional_call(self.module, params, (x,))


def yardstick_iteration(net: FlatNet, w0: Tensor, images: list[Tensor], labels: list[Tensor],
                        raw_lrs: Tensor, real_x: Tensor, real_y: Tensor) -> float:
    """One meta-iteration for one net; accumulates .grad on the images and raw lrs."""
    lrs = F.softplus(raw_lrs).unbind()
    steps = [(images[t % len(images)], labels[t % len(images)], lrs[t]) for t in range(len(lrs))]
    # forward: keep each step's weights and weighted gradient (with its graph)
    w = w0.detach().requires_grad_()
    weights, weighted_grads = [w], []
    for x, y, lr in steps:
        loss = F.cross_entropy(net.forward(w, x), y)
        gw, = torch.autograd.grad(loss, w, lr, create_graph=True)
        with torch.no_grad():
            w = w.sub(gw).requires_grad_()
        weights.append(w)
        weighted_grads.append(gw)
    final = F.cross_entropy(net.forward(weights[-1], real_x), real_y)
    dw, = torch.autograd.grad(final, weights[-1])
    # reverse: Hessian-vector products through the stored steps
    lr_outputs, lr_grads = [], []
    for (x, y, lr), w, gw in reversed(list(zip(steps, weights, weighted_grads))):
        dw_prev, dx, dlr = torch.autograd.grad(gw, (w, x, lr), grad_outputs=-dw)
        x.grad = dx if x.grad is None else x.grad + dx
        lr_outputs.append(lr)
        lr_grads.append(dlr)
        dw = dw + dw_prev
    torch.autograd.backward(lr_outputs, lr_grads)  # through the softplus to the raw lrs
    return final.item()
