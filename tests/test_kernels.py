"""The compiled LeNet kernel: same logits as PyTorch, and a clean fallback without a compiler."""
import os
import shutil

import pytest
import torch

from datadistill import kernels
from datadistill.evaluate import test_nets as run_test_nets
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.kernels import lenet
from datadistill.models import build_model

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                    reason="no C compiler on this machine")


@pytest.fixture
def kernel():
    """With a compiler present the kernel must build: else these tests compare PyTorch with itself."""
    assert kernels.load("lenet") is not None, "the LeNet kernel did not compile"


def _reversed(params):
    """The same parameters in another key order (as a safetensors load may give them)."""
    return dict(reversed(list(params.items())))


def _nets(shape, n=3, seed=0):
    module = build_model("lenet", shape, 10)
    params = RandomInit(module).sample(n, torch.Generator().manual_seed(seed))
    return FunctionalModel(module), params


@needs_compiler
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_fused_lenet_logits_equal_pytorch(kernel, shape):
    fmodel, params = _nets(shape)
    images = torch.randn(37, *shape)  # not a multiple of the kernel's 8 lanes
    fused = lenet.lenet_logits_fn(fmodel.module, _reversed(params), images)
    expected = torch.cat([fmodel.logits({k: v[i:i + 1] for k, v in params.items()}, images, False)
                          for i in range(3)])
    torch.testing.assert_close(fused(images), expected, atol=1e-4, rtol=1e-4)


def test_kernel_refuses_what_it_cannot_run():
    fmodel, params = _nets((1, 28, 28))
    images = torch.randn(4, 1, 28, 28)
    doubled = {k: v.double() for k, v in params.items()}
    assert lenet.lenet_logits_fn(fmodel.module, doubled, images.double()) is None
    assert lenet.lenet_logits_fn(fmodel.module, params, torch.randn(4, 3, 28, 28)) is None
    mlp = build_model("mlp", (1, 28, 28), 10)
    assert lenet.lenet_logits_fn(mlp, dict(mlp.named_parameters()), images) is None
    wide, wide_params = _nets((5, 28, 28))  # more input channels than the kernel holds
    assert lenet.lenet_logits_fn(wide.module, wide_params, torch.randn(4, 5, 28, 28)) is None
    missing = {k: v for k, v in params.items() if k != "classifier.5.bias"}
    assert lenet.lenet_logits_fn(fmodel.module, missing, images) is None


@needs_compiler
def test_kernel_rejects_labels_outside_the_classes(kernel):
    from datadistill.errors import DistillError

    fmodel, params = _nets((1, 28, 28))
    train = lenet.lenet_train_fn(fmodel.module, params, torch.randn(2, 1, 28, 28))
    with pytest.raises(DistillError, match="labels must lie in"):
        train(params, [(torch.randn(2, 1, 28, 28), torch.tensor([3, 10]), 0.1)])


@needs_compiler
def test_test_nets_same_with_and_without_kernel(kernel, monkeypatch):
    fmodel, params = _nets((1, 28, 28), n=4)
    images, labels = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,))
    fused = run_test_nets(fmodel, _reversed(params), images, labels, chunk_size=64)
    monkeypatch.setenv("DATADISTILL_NO_KERNELS", "1")
    plain = run_test_nets(fmodel, params, images, labels, chunk_size=64)
    torch.testing.assert_close(fused.losses, plain.losses, atol=1e-5, rtol=1e-5)
    assert (fused.confusion == plain.confusion).all()
    assert fused.confusion.sum() == 4 * 100


def test_no_compiler_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    kernels._compiled.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not compile"):
            assert kernels.load("lenet") is None
        assert kernels.load("lenet") is None  # remembered: no second warning
        assert not list((tmp_path / "cache").glob("*.so"))
    finally:
        kernels._compiled.cache_clear()


@needs_compiler
@pytest.mark.parametrize("nets,keep_every,shape,threads", [
    (1, 1, (1, 28, 28), None), (2, 2, (1, 28, 28), None), (2, 1, (3, 32, 32), None),
    (1, 1, (1, 28, 28), 4)])  # 4 threads: one net's blocks split into parts
def test_kernel_meta_gradient_equals_autograd(kernel, monkeypatch, nets, keep_every, shape,
                                              threads):
    """The compiled back-gradient (R-operator HVPs) against PyTorch's, float32; the
    parameters in another key order than the module's, as a loaded pool gives them."""
    from datadistill.inner_loop import DistilledSteps, meta_gradient

    fmodel, params = _nets(shape, n=nets, seed=1)
    params = _reversed(params)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(3, 10, *shape, generator=gen)
    raw_lrs = torch.full((6,), -3.0) + 0.1 * torch.randn(6, generator=gen)
    real_x, real_y = torch.randn(100, *shape, generator=gen), torch.randint(0, 10, (100,), generator=gen)
    results = []
    for kernels_off in ("", "1"):
        monkeypatch.setenv("DATADISTILL_NO_KERNELS", kernels_off)
        steps = DistilledSteps(images.clone().requires_grad_(), torch.arange(10).repeat(3, 1),
                               raw_lrs.clone().requires_grad_())
        losses = meta_gradient(fmodel, params, steps, real_x, real_y, "backgrad", keep_every, 64)
        results.append((losses, steps.images.grad, steps.raw_lrs.grad))
    torch.set_num_threads(previous)
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, atol=1e-6 * float(plain.abs().max()), rtol=1e-4)


@needs_compiler
def test_train_nets_same_with_and_without_kernel(kernel, monkeypatch):
    from datadistill.evaluate import schedule, train_nets

    fmodel, params = _nets((1, 28, 28), n=3, seed=3)
    params = _reversed(params)
    images, labels = torch.randn(2, 10, 1, 28, 28), torch.arange(10).repeat(2, 1)
    steps = schedule(images, labels, torch.tensor([0.02, 0.03]), 2)
    fused = train_nets(fmodel, params, steps)
    monkeypatch.setenv("DATADISTILL_NO_KERNELS", "1")
    plain = train_nets(fmodel, params, steps)
    for name in params:
        torch.testing.assert_close(fused[name], plain[name], atol=1e-5, rtol=1e-4)
