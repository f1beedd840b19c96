"""The converge protocol: stacked nets train as torch.optim.SGD one at a time, DSA's
operations, and a set trained to convergence that classifies."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datadistill import kernels
from datadistill.augment import DSA, DSA_OPS, dsa_for
from datadistill.converge import ConvergeSettings, Curve, evaluate_converged, train_to_convergence
from datadistill.data import DIGIT_NAMES
from datadistill.errors import DistillError
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.models import build_model

from .conftest import make_dataset


@pytest.mark.parametrize("nets", [1, 2])
def test_each_net_trains_as_torch_optim_sgd(nets):
    """Two nets on stacked parameters (or one net, trained as its own module copy), three
    minibatches an epoch, lr x0.1 halfway: each ends where torch.optim.SGD (momentum, weight
    decay) takes a plain module over the same batches."""
    module = build_model("convnet-w16", (1, 8, 8), 10).double()
    settings = ConvergeSettings(epochs=4, lr=0.05, batch_size=4)
    params = RandomInit(module, "default").sample(nets, torch.Generator().manual_seed(0))
    images = torch.randn(10, 1, 8, 8, dtype=torch.float64)
    labels = torch.arange(10)
    trained = train_to_convergence(FunctionalModel(module), params, images, labels, settings,
                                   None, torch.Generator().manual_seed(1))
    draws = torch.Generator().manual_seed(1)  # the same minibatch orders
    orders = [torch.argsort(torch.rand(nets, 10, generator=draws), dim=1) for _ in range(4)]
    for i in range(nets):
        net = copy.deepcopy(module)
        net.load_state_dict({k: v[i] for k, v in params.items()})
        sgd = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for epoch, order in enumerate(orders):
            if epoch == 2:
                sgd.param_groups[0]["lr"] = 0.005
            for start in range(0, 10, 4):
                pick = order[i, start:start + 4]
                sgd.zero_grad()
                F.cross_entropy(net(images[pick]), labels[pick]).backward()
                sgd.step()
        for k, p in net.named_parameters():
            torch.testing.assert_close(trained[k][i], p.detach())


class _TiedAndFrozen(nn.Module):
    """A user's module with one weight shared by two layers and a frozen bias."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.second.weight = self.first.weight
        self.head.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x.flatten(1))))))


def test_one_net_trains_as_a_net_of_a_stack_with_tied_and_frozen_parameters():
    """One net (its own module copy) and the same initial weights twice on stacked parameters
    (a functional call) end alike: the shared weight stays shared, the frozen bias trains as
    every tensor of the stack does. Whole-set minibatches, so the draw order cannot matter."""
    module = _TiedAndFrozen().double()
    one = RandomInit(module).sample(1, torch.Generator().manual_seed(0))
    assert "second.weight" not in one  # the shared weight has one name
    two = {k: v.expand(2, *v.shape[1:]).clone() for k, v in one.items()}
    images = torch.randn(10, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(10) % 3
    settings = ConvergeSettings(epochs=5, lr=0.1, batch_size=10)
    fmodel = FunctionalModel(module)
    alone, stacked = (train_to_convergence(fmodel, params, images, labels, settings, None,
                                           torch.Generator().manual_seed(2))
                      for params in (one, two))
    for k in one:
        assert not torch.equal(alone[k], one[k]), k
        torch.testing.assert_close(alone[k][0], stacked[k][0])


def test_a_set_trained_to_convergence_classifies_with_and_without_dsa():
    data = make_dataset(classes=3, size=8)
    module = build_model("convnet-w16", (1, 8, 8), 3)
    picks = torch.cat([(data.train_labels == c).nonzero()[:2, 0] for c in range(3)])
    curve = Curve()
    for augment in (None, DSA(("crop", "scale", "rotate"))):
        converged = evaluate_converged(
            FunctionalModel(module), RandomInit(module, "default"), data.train_images[picks],
            data.train_labels[picks], data.test_images, data.test_labels, nets=2,
            settings=ConvergeSettings(epochs=60, lr=0.05, test_every=20), augment=augment,
            generator=torch.Generator().manual_seed(0))
        result, curve = converged.result, converged.curve
        assert result.mean > 0.9 and len(result.accuracies) == 2
        # a ConvNet on the CPU, one net at a time, where the kernel builds
        assert converged.runner == ("fused-convnet" if kernels.load("normpool") else "pytorch")
    assert curve.test_epochs == [20, 40, 60] and len(curve.train_loss) == 60
    assert curve.train_loss[-1] < curve.train_loss[0]


def test_soft_labels_train_like_their_hard_labels_when_one_hot():
    module = build_model("mlp", (1, 8, 8), 10)
    params = RandomInit(module).sample(2, torch.Generator().manual_seed(0))
    images, labels = torch.randn(10, 1, 8, 8), torch.arange(10)
    run = lambda targets: train_to_convergence(  # noqa: E731
        FunctionalModel(module), params, images, targets, ConvergeSettings(epochs=3), None,
        torch.Generator().manual_seed(0))
    hard, soft = run(labels), run(F.one_hot(labels, 10).float())
    for k in hard:
        torch.testing.assert_close(hard[k], soft[k])


@pytest.mark.parametrize("op", DSA_OPS)
def test_every_dsa_operation_changes_images_and_keeps_their_shape(op):
    images = torch.randn(3, 4, 2, 16, 16)
    out = DSA((op,))(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.equal(out, images)
    again = DSA((op,))(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides every draw


def test_dsa_crop_is_a_zero_filled_integer_shift():
    images = torch.randn(1, 50, 1, 8, 8)
    out = DSA(("crop",))(images, torch.Generator().manual_seed(0))[0]
    for x, y in zip(images[0], out):
        found = False
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                shifted = torch.zeros_like(x)
                shifted[:, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)] = \
                    x[:, max(0, dy):8 - max(0, -dy), max(0, dx):8 - max(0, -dx)]
                found |= torch.allclose(y, shifted, atol=1e-5)
        assert found


def test_dsa_cutout_zeroes_a_square_of_half_the_side():
    out = DSA(("cutout",))(torch.ones(1, 20, 1, 8, 8), torch.Generator().manual_seed(0))[0]
    zeros = (out == 0).sum((1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4  # 4x4, or clipped at an edge


def test_digits_are_not_flipped_and_unknown_operations_are_refused():
    assert "flip" not in dsa_for(DIGIT_NAMES).ops
    assert dsa_for(("a", "b")).ops == DSA_OPS
    assert dsa_for(DIGIT_NAMES, "crop, rotate").ops == ("crop", "rotate")
    with pytest.raises(DistillError, match="unknown DSA operation mirror"):
        dsa_for(DIGIT_NAMES, "crop,mirror")
