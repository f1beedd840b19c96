"""The fused norm-ReLU-pool kernel of ConvNet's blocks: the same values and gradients as
PyTorch's three ops, the fused ConvNet as the module, micro-batches as whole minibatches."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datadistill import kernels
from datadistill.converge import (ConvergeSettings, Curve, evaluate_converged, runner_for,
                                  train_to_convergence)
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.kernels import normpool
from datadistill.kernels.normpool import ImageConv, NormReluPool, fused_convnet
from datadistill.models import build_model

from .conftest import TinyConvNet, make_dataset

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                    reason="no C compiler on this machine")


@pytest.fixture
def kernel():
    """With a compiler present the kernel must build: else these tests compare PyTorch with
    itself."""
    assert kernels.load("normpool") is not None, "the normpool kernel did not compile"


def _reference(x, weight, bias, eps):
    return F.avg_pool2d(F.group_norm(x, x.shape[1], weight, bias, eps).relu(), 2)


@needs_compiler
@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (4, 2, 7, 9), (2, 32, 32, 32)])
def test_fused_block_values_and_gradients_equal_pytorch_in_float64(kernel, shape):
    """float32 kernel against PyTorch's group norm, ReLU and pool in float64 (odd sides are
    floored by the pool, as nn.AvgPool2d(2) does, and still normalised whole)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3 + 1).requires_grad_()
    norm = nn.GroupNorm(shape[1], shape[1])
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=gen))
        norm.bias.copy_(torch.randn(shape[1], generator=gen))
    block = NormReluPool(norm)
    upstream = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen)
    out = block(x)
    grads = torch.autograd.grad(out, (x, block.weight, block.bias), upstream)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, norm.weight, norm.bias))
    expected = _reference(x64, w64, b64, norm.eps)
    expected_grads = torch.autograd.grad(expected, (x64, w64, b64), upstream.double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


@needs_compiler
def test_fused_convnet_keeps_the_names_logits_and_gradients_of_the_module(kernel):
    module = build_model("convnet-w16", (1, 28, 28), 10)
    fused = fused_convnet(module)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in module.named_parameters()]
    assert sum(isinstance(layer, NormReluPool) for layer in fused.features) == 3
    assert isinstance(fused.features[0], ImageConv)
    params = RandomInit(module, "default").sample(1, torch.Generator().manual_seed(0))
    x, y = torch.randn(1, 6, 1, 28, 28), torch.randint(0, 10, (1, 6))
    grads = []
    for fmodel in (FunctionalModel(module), FunctionalModel(fused)):
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        logits = fmodel.logits_each(leaves, x, train=True)
        F.cross_entropy(logits[0], y[0]).backward()
        grads.append((logits.detach(), {k: v.grad for k, v in leaves.items()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    for k, want in grads[0][1].items():
        # a conv bias before an instance norm has gradient 0 up to rounding
        torch.testing.assert_close(grads[1][1][k], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["convnet-nn", "convnet-gn", "convnet-ln", "convnet-mp", "mlp",
                                  "lenet"])
def test_only_instance_norm_average_pool_convnets_are_fused(name):
    assert fused_convnet(build_model(name, (1, 28, 28), 10)) is None


@needs_compiler
@pytest.mark.parametrize("name, blocks", [("convnet", 3), ("convnet-d1", 1), ("convnet-d4", 4),
                                          ("convnet-w64", 3)])
def test_instance_norm_average_pool_convnets_are_fused(kernel, name, blocks):
    fused = fused_convnet(build_model(name, (3, 32, 32), 10))
    assert sum(isinstance(layer, NormReluPool) for layer in fused.features) == blocks


@needs_compiler
@pytest.mark.parametrize("channels, swapped", [(1, True), (3, False)])
def test_a_one_channel_image_layer_runs_im2col_gemm(kernel, monkeypatch, channels, swapped):
    fused = fused_convnet(build_model("convnet-w16", (channels, 32, 32), 10))
    assert isinstance(fused.features[0], ImageConv) is swapped
    assert not any(isinstance(layer, ImageConv) for layer in list(fused.features)[1:])
    calls = []
    gemm_conv = torch._C._nn.thnn_conv2d
    monkeypatch.setattr(torch._C._nn, "thnn_conv2d",
                        lambda *args: calls.append(1) or gemm_conv(*args))
    fused(torch.randn(2, channels, 32, 32))
    assert len(calls) == (1 if swapped else 0)
    fused.double()(torch.randn(2, channels, 32, 32, dtype=torch.float64))  # F.conv2d
    assert len(calls) == (1 if swapped else 0)


@pytest.mark.parametrize("channels, stride, padding, bias, channels_last",
                         [(1, 1, 3, True, False), (3, 2, 1, False, False), (1, 1, 0, True, True),
                          (3, 1, 2, True, True)])
def test_image_conv_values_and_gradients_equal_conv2d_in_float64(channels, stride, padding, bias,
                                                                  channels_last):
    """float32 through thnn_conv2d against F.conv2d in float64: output and the gradients of
    input, weight and bias."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(channels, 8, 3, stride=stride, padding=padding, bias=bias)
    layer = ImageConv(conv)
    x = torch.randn(4, channels, 28, 28, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = layer(x)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    inputs = [x, layer.weight] + ([layer.bias] if bias else [])
    got = torch.autograd.grad(out, inputs, upstream.float())
    wanted_inputs = [t.detach().double().requires_grad_() for t in inputs]
    want_out = F.conv2d(wanted_inputs[0], wanted_inputs[1], wanted_inputs[2] if bias else None,
                        stride, padding)
    want = torch.autograd.grad(want_out, wanted_inputs, upstream)
    torch.testing.assert_close(out.double(), want_out, atol=1e-4, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=1e-3, rtol=1e-5)


def test_an_average_pool_with_another_divisor_is_not_fused():
    module = build_model("convnet-d1", (1, 28, 28), 10)
    module.features[3] = nn.AvgPool2d(2, divisor_override=1)
    assert fused_convnet(module) is None


def test_runner_is_fused_only_for_float32_on_the_cpu_one_net_at_a_time(monkeypatch):
    module = build_model("convnet-w16", (1, 28, 28), 10)
    fmodel, images = FunctionalModel(module), torch.zeros(2, 1, 28, 28)
    assert runner_for(fmodel, images, 2).name == "pytorch"
    assert runner_for(fmodel, images.double(), 1).name == "pytorch"
    assert runner_for(FunctionalModel(module.double()), images.double(), 1).name == "pytorch"
    monkeypatch.setenv("DATADISTILL_NO_KERNELS", "1")
    assert runner_for(FunctionalModel(module.float()), images, 1).name == "pytorch"
    if shutil.which(os.environ.get("CC", "cc")) is not None:
        monkeypatch.delenv("DATADISTILL_NO_KERNELS")
        runner = runner_for(FunctionalModel(module), images, 1)
        assert (runner.name, runner.microbatch, runner.test_chunk) == ("fused-convnet", 64, 64)


def _train_twice(module, dtype, microbatch, nets, fused=None):
    """``nets`` nets on 13 images in minibatches of 8 (the last of 5), soft targets: the
    parameters and loss curve whole, and in parts of ``microbatch`` through ``fused`` (or the
    module)."""
    module = module.to(dtype)
    params = RandomInit(module, "default").sample(nets, torch.Generator().manual_seed(0))
    images = torch.randn(13, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    targets = torch.softmax(torch.randn(13, 4, dtype=dtype), 1)
    settings = ConvergeSettings(epochs=3, lr=0.05, batch_size=8)
    runs = []
    for fmodel, part in ((FunctionalModel(module), 0),
                         (FunctionalModel(fused or module), microbatch)):
        curve = Curve()
        trained = train_to_convergence(fmodel, params, images, targets, settings, None,
                                       torch.Generator().manual_seed(2), curve=curve,
                                       microbatch=part)
        runs.append((trained, curve.train_loss))
    return params, runs


def test_microbatches_give_the_whole_minibatch_gradient_and_loss():
    """float64 so rounding cannot hide a difference."""
    params, (whole, parts) = _train_twice(build_model("convnet-w16", (1, 8, 8), 4),
                                          torch.float64, 3, nets=3)
    assert whole[1] == pytest.approx(parts[1], rel=1e-12)
    for k in params:
        torch.testing.assert_close(parts[0][k], whole[0][k])
        assert not torch.equal(whole[0][k], params[k])


@needs_compiler
def test_fused_microbatches_train_as_the_module_in_whole_minibatches(kernel):
    module = build_model("convnet-w16", (1, 8, 8), 4)
    _, (whole, parts) = _train_twice(module, torch.float32, 3, 1, fused_convnet(module))
    assert whole[1] == pytest.approx(parts[1], rel=1e-4)
    for k in whole[0]:
        torch.testing.assert_close(parts[0][k], whole[0][k], atol=1e-4, rtol=1e-4)


@needs_compiler
def test_under_bfloat16_autocast_the_block_normalises_in_float32(kernel):
    """A bfloat16 convolution output goes through the kernel as its float32 copy, and the
    gradient flows back to it in bfloat16."""
    norm = nn.GroupNorm(3, 3)
    block = NormReluPool(norm)
    x = torch.randn(2, 3, 6, 6, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(x.detach().float(), norm.weight, norm.bias,
                                               norm.eps), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0


def _converge_in(bfloat16: bool, module: nn.Module, data, seen: set) -> tuple[str, float]:
    """Two nets trained on 2 images a class; the dtypes of ``module``'s convolution outputs
    are added to ``seen``."""
    picks = torch.cat([(data.train_labels == c).nonzero()[:2, 0] for c in range(3)])
    hooks = [m.register_forward_hook(lambda _, __, out: seen.add(out.dtype))
             for m in module.modules() if isinstance(m, nn.Conv2d)]
    converged = evaluate_converged(
        FunctionalModel(module), RandomInit(module, "default"), data.train_images[picks],
        data.train_labels[picks], data.test_images, data.test_labels, nets=2,
        settings=ConvergeSettings(epochs=60, lr=0.05, bfloat16=bfloat16), augment=None,
        generator=torch.Generator().manual_seed(0))
    for hook in hooks:
        hook.remove()
    return converged.runner, converged.result.mean


@pytest.mark.parametrize("model", ["users-module", "convnet-w16"])
def test_bf16_runs_convolutions_in_bfloat16_and_reaches_the_float32_accuracy(model, monkeypatch):
    """--bf16: the convolutions of a user's own module (and the inner ones of the fused
    ConvNet, whose blocks still run the kernel where it builds) output bfloat16, in training
    and testing; the nets end as accurate as in float32."""
    data = make_dataset(n_test=600, classes=3, size=8)
    module = (TinyConvNet(classes=3, size=8) if model == "users-module"
              else build_model(model, (1, 8, 8), 3))
    float32_dtypes, bfloat16_dtypes = set(), set()
    runner, float32_accuracy = _converge_in(False, module, data, float32_dtypes)
    kernel_calls = []
    real_call = normpool._call
    monkeypatch.setattr(normpool, "_call", lambda name, *args: (kernel_calls.append(name),
                                                                  real_call(name, *args)))
    runner_bf16, bfloat16_accuracy = _converge_in(True, module, data, bfloat16_dtypes)
    assert runner == runner_bf16
    assert float32_dtypes == {torch.float32} and bfloat16_dtypes == {torch.bfloat16}
    if model != "users-module" and kernels.load("normpool") is not None:
        assert runner_bf16 == "fused-convnet"
        assert {"normpool_forward", "normpool_backward"} <= set(kernel_calls)
    else:
        assert not kernel_calls
    assert float32_accuracy > 0.9
    assert bfloat16_accuracy == pytest.approx(float32_accuracy, abs=0.03)


def test_a_users_own_module_trains_to_convergence_through_pytorch():
    """A module that is not datadistill's ConvNet is never fused: it runs its own ops."""
    data = make_dataset(classes=3, size=4)
    module = TinyConvNet(classes=3, size=4)
    picks = torch.cat([(data.train_labels == c).nonzero()[:2, 0] for c in range(3)])
    converged = evaluate_converged(
        FunctionalModel(module), RandomInit(module, "default"), data.train_images[picks],
        data.train_labels[picks], data.test_images, data.test_labels, nets=2,
        settings=ConvergeSettings(epochs=60, lr=0.05), augment=None,
        generator=torch.Generator().manual_seed(0))
    assert converged.runner == "pytorch"
    assert converged.result.mean > 0.9
