"""Architectures and initialization schemes, looped over their registries."""
from __future__ import annotations

import pytest
import torch

from datadistill.errors import DistillError
from datadistill.init_distributions import FixedInit, RandomInit, initial_parameters, list_init_schemes
from datadistill.models import build_model, list_models

SHAPES = {"lenet": (1, 28, 28), "alexcifarnet": (3, 32, 32), "mlp": (1, 8, 8), "alexnet": (3, 64, 64),
          "seqcnn": (13, 1, 16)}


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs(name):
    model = build_model(name, SHAPES[name], 10)
    assert model(torch.randn(2, *SHAPES[name])).shape == (2, 10)


def test_lenet_matches_the_paper():
    lenet = build_model("lenet", (1, 28, 28), 10)
    shapes = [tuple(p.shape) for p in lenet.parameters()]
    assert shapes == [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120),
                      (84,), (10, 84), (10,)]
    assert build_model("lenet", (3, 32, 32), 10)(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(DistillError, match="LeNet takes 28x28 or 32x32"):
        build_model("lenet", (1, 8, 8), 10)


def test_alexcifarnet_matches_the_paper():
    net = build_model("alexcifarnet", (3, 32, 32), 10)
    assert sum(p.numel() for p in net.parameters()) == (
        64 * 3 * 25 + 64 + 64 * 64 * 25 + 64 + 4096 * 384 + 384 + 384 * 192 + 192 + 1920 + 10)
    kinds = [type(m).__name__ for m in net.features]
    assert kinds.index("LocalResponseNorm", 4) < kinds.index("StridedMaxPool2d", 4)  # LRN before pool 2


@pytest.mark.parametrize("scheme", list_init_schemes())
def test_every_init_scheme_draws_fresh_weights_with_zero_biases(scheme):
    model = build_model("lenet", (1, 28, 28), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    a, b = initial_parameters(model, scheme, gen), initial_parameters(model, scheme, gen)
    assert not torch.equal(a["features.0.weight"], b["features.0.weight"])
    if scheme != "default":
        assert all(torch.count_nonzero(v) == 0 for k, v in a.items() if k.endswith("bias"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_xavier_normal_has_the_glorot_scale():
    model = build_model("lenet", (1, 28, 28), 10)
    w = initial_parameters(model, "xavier-normal", torch.Generator().manual_seed(0))["classifier.1.weight"]
    assert w.std().item() == pytest.approx((2 / (400 + 120)) ** 0.5, rel=0.05)


def test_samplers_stack_nets():
    model = build_model("mlp", (1, 8, 8), 10)
    gen = torch.Generator().manual_seed(0)
    random = RandomInit(model).sample(3, gen)
    assert random["net.1.weight"].shape == (3, 128, 64)
    assert not torch.equal(random["net.1.weight"][0], random["net.1.weight"][1])
    fixed = FixedInit({k: v[0] for k, v in random.items()}).sample(2, gen)
    assert torch.equal(fixed["net.1.weight"][1], random["net.1.weight"][0])


@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), (3, 3, 0), (2, 1, 1)])
def test_strided_max_pool_equals_the_native_kernel(kernel, stride, padding):
    from datadistill.models import StridedMaxPool2d
    x = torch.randn(3, 4, 13, 16)
    native = torch.nn.MaxPool2d(kernel, stride, padding)(x)
    with torch.no_grad():
        assert torch.equal(StridedMaxPool2d(kernel, stride, padding)(x), native)
    x.requires_grad_()
    StridedMaxPool2d(kernel, stride, padding)(x).sum().backward()
    assert x.grad.sum() == native.numel()  # the native backward: one winner per window
