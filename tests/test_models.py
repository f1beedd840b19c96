"""Architectures and initialization schemes, looped over their registries."""
from __future__ import annotations

import pytest
import torch

from datadistill.errors import DistillError
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import FixedInit, RandomInit, initial_parameters, list_init_schemes
from datadistill.models import build_model, list_models

SHAPES = {"alexcifarnet": (3, 32, 32), "mlp": (1, 8, 8), "alexnet": (3, 64, 64),
          "seqcnn": (13, 1, 16), "textcnn": (384, 1, 64)}
MNIST = (1, 28, 28)  # every other model's test shape


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs(name):
    shape = SHAPES.get(name, MNIST)
    model = build_model(name, shape, 10)
    assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name", [n for n in list_models() if n != "alexnet"])
def test_every_model_runs_batched_through_the_functional_path(name):
    """Two stacked nets through vmap(functional_call) give each net's own module gradient
    (float64: deep nets amplify rounding; 32 px: no all-zero padded border, whose max-pool
    ties the batched kernel may break another way)."""
    shape = SHAPES.get(name, (1, 32, 32))
    module = build_model(name, shape, 10).double()
    fmodel = FunctionalModel(module)
    params = RandomInit(module).sample(2, torch.Generator().manual_seed(0))
    params = {k: v.requires_grad_() for k, v in params.items()}
    x, y = torch.randn(3, *shape, dtype=torch.float64), torch.randint(10, (3,))
    fmodel.losses(params, x, y, train=True).sum().backward()
    one = {k: v[1].detach() for k, v in params.items()}
    module.load_state_dict(one, strict=False)
    module.zero_grad()
    torch.nn.functional.cross_entropy(module(x), y).backward()
    for k, p in module.named_parameters():
        torch.testing.assert_close(params[k].grad[1], p.grad)


def test_convnet_is_dc_s_convnet_3():
    """Width 128, three conv/instance-norm/ReLU/avg-pool blocks, 28 px padded to 32, so the
    head sees 128 x 4 x 4 features (320k parameters on MNIST, as DC reports)."""
    net = build_model("convnet", MNIST, 10)
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "AvgPool2d"] * 3
    assert all(m.num_groups == m.num_channels == 128 and m.affine
               for m in net.features if isinstance(m, torch.nn.GroupNorm))
    assert net.classifier.in_features == 128 * 4 * 4
    assert sum(p.numel() for p in net.parameters()) == 317_706
    assert build_model("convnet-w32", MNIST, 10).classifier.in_features == 32 * 4 * 4
    assert build_model("convnet-d2", MNIST, 10).classifier.in_features == 128 * 8 * 8
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in build_model("convnet-nn", MNIST, 10).modules())


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vgg11"])
def test_families_keep_no_running_statistics(name):
    assert dict(build_model(name, MNIST, 10).named_buffers()) == {}


def test_too_deep_a_convnet_for_the_images_is_refused():
    with pytest.raises(DistillError, match="pick a shallower --model"):
        build_model("convnet-d4", (1, 8, 8), 10)


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


def test_a_convnet_distils_in_the_loop():
    """A flat set distilled with a narrow ConvNet in the inner loop lowers its meta-loss."""
    import datadistill

    settings = dict(dataset="digits", model="convnet-w16", steps=1, distill_epochs=2,
                    images_per_class=2, minibatch=10, eval_nets=2, progress=False, device="cpu")
    start = datadistill.distill(**settings, epochs=1, lr=1e-12)
    trained = datadistill.distill(**settings, epochs=3)
    assert not torch.equal(start.images, trained.images)
    assert trained.meta["model"]["name"] == "convnet-w16"
    assert trained.meta["metrics"]["final"]["nets"] == 2
