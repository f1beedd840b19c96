"""The fused norm-ReLU-pool kernel of ConvNet's blocks: the same values and gradients as
PyTorch's three ops, the fused ConvNet as the module, micro-batches as whole minibatches."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datadistill import kernels
from datadistill.converge import ConvergeSettings, runner_for, train_to_convergence
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.kernels.normpool import NormReluPool, fused_convnet
from datadistill.models import build_model

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                    reason="no C compiler on this machine")


@pytest.fixture
def kernel():
    """With a compiler present the kernel must build: else these tests compare PyTorch with itself."""
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


@pytest.mark.parametrize("name", ["convnet-nn", "convnet-gn", "convnet-ln", "convnet-mp", "mlp", "lenet"])
def test_only_instance_norm_average_pool_convnets_are_fused(name):
    assert fused_convnet(build_model(name, (1, 28, 28), 10)) is None


def test_runner_is_fused_only_on_the_cpu_one_net_at_a_time(monkeypatch):
    fmodel = FunctionalModel(build_model("convnet-w16", (1, 28, 28), 10))
    cpu = torch.device("cpu")
    assert runner_for(fmodel, cpu, 2).name == "pytorch"
    assert runner_for(fmodel, torch.device("cuda"), 1).name == "pytorch"
    monkeypatch.setenv("DATADISTILL_NO_KERNELS", "1")
    assert runner_for(fmodel, cpu, 1).name == "pytorch"
    if shutil.which(os.environ.get("CC", "cc")) is not None:
        monkeypatch.delenv("DATADISTILL_NO_KERNELS")
        assert runner_for(fmodel, cpu, 1).name == "fused-convnet"


def test_microbatches_give_the_whole_minibatch_gradient():
    """float64 so rounding cannot hide a difference: 3 nets, minibatches of 8 split into
    parts of 3, 3 and 2, train as the whole minibatches do."""
    module = build_model("convnet-w16", (1, 8, 8), 4).double()
    params = RandomInit(module, "default").sample(3, torch.Generator().manual_seed(0))
    images, labels = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.arange(16) % 4
    settings = ConvergeSettings(epochs=3, lr=0.05, batch_size=8)
    trained = [train_to_convergence(FunctionalModel(module), params, images, labels, settings,
                                    None, torch.Generator().manual_seed(1), microbatch=part)
               for part in (0, 3)]
    for k in params:
        torch.testing.assert_close(trained[1][k], trained[0][k])
        assert not torch.equal(trained[0][k], params[k])
