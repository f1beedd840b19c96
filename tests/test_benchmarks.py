"""The speed yardstick must do the same work as datadistill: identical meta-gradients."""
import sys
from pathlib import Path

import pytest
import torch

from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.inner_loop import meta_gradient
from datadistill.state import DistilledSteps
from datadistill.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from yardstick import FlatNet, textbook, yardstick_iteration  # noqa: E402


def test_yardstick_and_engine_agree_in_float64():
    module = build_model("lenet", (1, 28, 28), 10).double()
    gen = torch.Generator().manual_seed(0)
    params = {k: v.double() for k, v in RandomInit(module).sample(1, gen).items()}
    images = torch.randn(3, 10, 1, 28, 28, generator=gen, dtype=torch.float64)
    labels = torch.arange(10).repeat(3, 1)
    raw = torch.full((6,), -3.9, dtype=torch.float64)
    real_x = torch.randn(64, 1, 28, 28, generator=gen, dtype=torch.float64)
    real_y = torch.randint(0, 10, (64,), generator=gen)

    steps = DistilledSteps(images.clone().requires_grad_(), labels, raw.clone().requires_grad_())
    meta_gradient(FunctionalModel(module), params, steps, real_x, real_y)

    flat = FlatNet(textbook(module))  # ReLU before nn.MaxPool2d, as the paper's code
    leaves = [images[s].clone().requires_grad_() for s in range(3)]
    raw_leaf = raw.clone().requires_grad_()
    yardstick_iteration(flat, flat.flatten({k: v[0] for k, v in params.items()}), leaves,
                        list(labels), raw_leaf, real_x, real_y)
    yard_images = torch.stack([leaf.grad for leaf in leaves])
    assert torch.allclose(yard_images, steps.images.grad, rtol=1e-9, atol=1e-14)
    assert torch.allclose(raw_leaf.grad, steps.raw_lrs.grad, rtol=1e-9, atol=1e-14)


def test_textbook_networks_equal_ours_in_values_and_gradients():
    for name, shape in (("lenet", (1, 28, 28)), ("alexcifarnet", (3, 32, 32))):
        ours = build_model(name, shape, 10).double()
        paper = textbook(ours)
        kinds = [type(m).__name__ for m in paper.modules()]
        assert "StridedMaxPool2d" not in kinds and kinds.index("ReLU") < kinds.index("MaxPool2d")
        x = torch.randn(4, *shape, dtype=torch.float64)
        x[:, :, :8] = 0.5  # constant patches: tied maxima, as in MNIST's background
        grads = []
        for net in (ours, paper):
            loss = net(x).logsumexp(1).sum()
            grads.append(torch.autograd.grad(loss, list(net.parameters())))
        assert torch.equal(ours(x), paper(x))
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_windowed_benchmark_computes_the_same_gradient_both_ways():
    """bench_window's straightforward truncated backprop and datadistill's agree (float32)."""
    import bench_window

    module, steps, params, real_x, real_y = bench_window.make_case(
        total_steps=12, per_class=3, batch=64)
    window = range(4, 9)
    plain, fast = bench_window.fresh(steps), bench_window.fresh(steps)
    loss_plain = bench_window.straightforward(module, plain, params, real_x, real_y, window)
    loss_fast = bench_window.ours(module, fast, params, real_x, real_y, window)
    assert loss_fast == pytest.approx(loss_plain, rel=1e-5)
    for name, tensor in plain.learnable().items():
        other = fast.learnable()[name].grad
        assert tensor.grad.abs().max() > 0
        torch.testing.assert_close(other, tensor.grad, atol=1e-6 * float(tensor.grad.abs().max()),
                                   rtol=1e-4)


def test_converge_benchmark_evaluators_do_the_same_work():
    """bench_converge's straightforward evaluator and datadistill's train the same nets to
    the same test accuracies (one minibatch an epoch, so the order of draws does not matter)."""
    import bench_converge

    from datadistill.converge import ConvergeSettings, evaluate_converged

    from .conftest import make_dataset

    data = make_dataset(classes=3, size=8)
    module = build_model("convnet-w16", (1, 8, 8), 3).double()
    images, labels = data.train_images[:12].double(), data.train_labels[:12]
    test_x = data.test_images.double()
    stacked = RandomInit(module, "default").sample(2, torch.Generator().manual_seed(0))
    settings = ConvergeSettings(epochs=40, lr=0.05)
    plain = bench_converge.straightforward(
        module, [{k: v[i] for k, v in stacked.items()} for i in range(2)], images, labels,
        test_x, data.test_labels, settings, None, 0)
    ours = evaluate_converged(FunctionalModel(module), bench_converge._InOrder(stacked),
                              images, labels, test_x, data.test_labels, 2, settings, None,
                              torch.Generator().manual_seed(0)).result
    assert torch.equal(plain.double(), ours.accuracies.double())
    assert plain.min() > 0.5  # they learned something
