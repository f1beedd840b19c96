"""The compiled LeNet kernel: same logits as PyTorch, and a clean fallback without a compiler."""
import copy
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from datadistill import kernels
from datadistill.evaluate import test_nets as run_test_nets
from datadistill.errors import DistillError
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


def _refused_case(name):
    """(module, params, images) that the kernel cannot run."""
    fmodel, params = _nets((1, 28, 28))
    images = torch.randn(4, 1, 28, 28)
    if name == "float64":
        return fmodel.module, {k: v.double() for k, v in params.items()}, images.double()
    if name == "not the CPU":
        return fmodel.module, {k: v.to("meta") for k, v in params.items()}, images.to("meta")
    if name == "images of another shape":
        return fmodel.module, params, torch.randn(4, 3, 28, 28)
    if name == "not a LeNet":
        mlp = build_model("mlp", (1, 28, 28), 10)
        return mlp, dict(mlp.named_parameters()), images
    if name == "too many channels":  # more input channels than the kernel holds
        wide, wide_params = _nets((5, 28, 28))
        return wide.module, wide_params, torch.randn(4, 5, 28, 28)
    return fmodel.module, {k: v for k, v in params.items() if k != "classifier.5.bias"}, images


@pytest.mark.parametrize("case", ["float64", "not the CPU", "images of another shape",
                                  "not a LeNet", "too many channels", "a parameter missing"])
def test_kernel_refuses_what_it_cannot_run_without_building_it(monkeypatch, case):
    """Refused before any compile: a CUDA or float64 user never waits for (or hears of) cc."""
    def never(*_):
        pytest.fail("the kernel was built where it cannot run")

    monkeypatch.setattr(lenet, "load", never)
    monkeypatch.setattr(kernels, "_compiled", never)
    module, params, images = _refused_case(case)
    for make in (lenet.lenet_logits_fn, lenet.lenet_train_fn, lenet.lenet_meta_gradient_fn):
        assert make(module, params, images) is None


@needs_compiler
def test_no_kernels_zero_leaves_kernels_on(kernel, monkeypatch):
    monkeypatch.setenv("DATADISTILL_NO_KERNELS", "0")
    assert kernels.load("lenet") is not None


@needs_compiler
@pytest.mark.parametrize("labels,problem", [
    (torch.tensor([3, 10]), "labels must lie in"),
    (torch.full((2, 9), 1 / 9), r"soft targets must have shape \(2, 10\)"),
    (torch.full((3, 10), 0.1), r"soft targets must have shape \(2, 10\)"),
])
def test_kernel_rejects_labels_it_cannot_take(kernel, labels, problem):
    fmodel, params = _nets((1, 28, 28))
    train = lenet.lenet_train_fn(fmodel.module, params, torch.randn(2, 1, 28, 28))
    with pytest.raises(DistillError, match=problem):
        train(params, [(torch.randn(2, 1, 28, 28), labels, 0.1)])


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
    """With or without a compiler on this machine: a compile that fails warns once, and the
    caller gets PyTorch's result."""
    fmodel, params = _nets((1, 28, 28), n=2)
    images, labels = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    monkeypatch.setenv("DATADISTILL_NO_KERNELS", "1")
    plain = run_test_nets(fmodel, params, images, labels)
    monkeypatch.delenv("DATADISTILL_NO_KERNELS")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    kernels._compiled.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not compile"):
            fallback = run_test_nets(fmodel, params, images, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # remembered: no second warning
            assert lenet.lenet_logits_fn(fmodel.module, params, images) is None
        assert not list((tmp_path / "cache").glob("*.so"))
    finally:
        kernels._compiled.cache_clear()
    torch.testing.assert_close(fallback.losses, plain.losses, atol=0, rtol=0)
    assert (fallback.confusion == plain.confusion).all()


def _meta_gradients_both_ways(monkeypatch, fmodel, params, steps, real_x, real_y, keep_every,
                              window=None):
    """(kernel, PyTorch) results of the back-gradient meta-gradient, each on fresh leaves
    copied from ``steps`` (same minibatches): the losses and the grads of the learnable
    tensors."""
    from datadistill.backends import choose_meta_gradient

    results = []
    for choice, name in (("compiled", "compiled-lenet"), ("pytorch", "pytorch")):
        fresh = _fresh_leaves(steps, torch.float32)
        backend = choose_meta_gradient(FunctionalModel(fmodel.module, choice), params, fresh,
                                       real_x, "backgrad", keep_every, 64)
        assert backend.name == name
        losses = backend.run(params, fresh, real_x, real_y, window)
        results.append([losses, *(t.grad for t in fresh.learnable().values())])
    return results


def _assert_same_gradients(fast_results, plain_results):
    for fast, plain in zip(fast_results, plain_results):
        assert plain.abs().max() > 0
        torch.testing.assert_close(fast, plain, atol=1e-6 * float(plain.abs().max()), rtol=1e-4)


def _steps_and_real_batch(shape, labels, seed=2):
    from datadistill.state import DistilledSteps

    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 10, *shape, generator=gen)
    raw_lrs = torch.full((6,), -3.0) + 0.1 * torch.randn(6, generator=gen)
    real_x = torch.randn(100, *shape, generator=gen)
    real_y = torch.randint(0, 10, (100,), generator=gen)
    return DistilledSteps(images, labels, raw_lrs), real_x, real_y


@needs_compiler
@pytest.mark.parametrize("nets,keep_every,shape,threads", [
    (1, 1, (1, 28, 28), None), (2, 2, (1, 28, 28), None), (2, 1, (3, 32, 32), None),
    (1, 1, (1, 28, 28), 4)])  # 4 threads: one net's blocks split into parts
def test_kernel_meta_gradient_equals_autograd(kernel, monkeypatch, nets, keep_every, shape,
                                              threads):
    """The compiled back-gradient (R-operator HVPs) against PyTorch's, float32; the
    parameters in another key order than the module's, as a loaded pool gives them."""
    fmodel, params = _nets(shape, n=nets, seed=1)
    steps, real_x, real_y = _steps_and_real_batch(shape, torch.arange(10).repeat(3, 1))
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        results = _meta_gradients_both_ways(monkeypatch, fmodel, _reversed(params), steps,
                                            real_x, real_y, keep_every)
    finally:
        torch.set_num_threads(previous)
    _assert_same_gradients(*results)


@needs_compiler
@pytest.mark.parametrize("direct", [False, True], ids=["learned", "direct"])
@pytest.mark.parametrize("nets,keep_every", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_kernel_meta_gradient_with_learned_labels_equals_autograd(kernel, monkeypatch, nets,
                                                                  keep_every, direct):
    """Learned label logits, or direct targets (any real values): the kernel's gradient of
    the images, raw lrs and labels (through R{logits}, and the softmax for logits) against
    PyTorch's."""
    fmodel, params = _nets((1, 28, 28), n=nets, seed=4)
    noise = torch.randn(3, 10, 10, generator=torch.Generator().manual_seed(5))
    labels = torch.eye(10).expand(3, 10, 10) + 0.3 * noise if direct else 2 * noise
    steps, real_x, real_y = _steps_and_real_batch((1, 28, 28), labels, seed=6)
    steps.direct = direct
    fast, plain = _meta_gradients_both_ways(monkeypatch, fmodel, _reversed(params), steps,
                                            real_x, real_y, keep_every)
    assert len(fast) == len(plain) == 4  # losses, images, raw lrs, label logits
    _assert_same_gradients(fast, plain)


@needs_compiler
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["gd", "momentum"])
@pytest.mark.parametrize("minibatch", [0, 6], ids=["whole", "minibatch"])
def test_kernel_windowed_flat_set_equals_autograd(kernel, monkeypatch, minibatch, momentum):
    """A flat set of 30 images (S = 1), learned labels, 6 steps on minibatches of 6, the
    window [2, 5), plain GD or heavy-ball momentum: the kernel against PyTorch."""
    fmodel, params = _nets((1, 28, 28), n=2, seed=7)
    logits = 2 * torch.randn(1, 30, 10, generator=torch.Generator().manual_seed(8))
    steps, real_x, real_y = _steps_and_real_batch((1, 28, 28), logits, seed=9)
    steps.momentum = momentum
    steps.images = steps.images.reshape(1, 30, 1, 28, 28)
    steps = steps.with_minibatches(minibatch, torch.Generator().manual_seed(10))
    fast, plain = _meta_gradients_both_ways(monkeypatch, fmodel, _reversed(params), steps,
                                            real_x, real_y, 1, window=range(2, 5))
    _assert_same_gradients(fast, plain)
    assert fast[2][[0, 1, 5]].abs().max() == 0  # raw lrs outside the window


@needs_compiler
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["gd", "momentum"])
@pytest.mark.parametrize("minibatch", [0, 12], ids=["whole", "minibatch"])
def test_kernel_on_images_stored_smaller_equals_autograd(kernel, monkeypatch, minibatch,
                                                         momentum):
    """--downscale 2: 40 images of 14 x 14 a step, enlarged to 28 x 28, learned labels, the
    window [1, 5), plain GD or momentum: the kernel runs on the enlarged images and its
    gradient flows back through the resize into the small ones, as PyTorch's does."""
    from datadistill.state import DistilledSteps

    fmodel, params = _nets((1, 28, 28), n=2, seed=13)
    gen = torch.Generator().manual_seed(14)
    steps = DistilledSteps(torch.randn(3, 40, 1, 14, 14, generator=gen),
                           2 * torch.randn(3, 40, 10, generator=gen),
                           torch.full((6,), -3.0) + 0.1 * torch.randn(6, generator=gen),
                           momentum=momentum, full_size=(28, 28))
    real_x = torch.randn(100, 1, 28, 28, generator=gen)
    real_y = torch.randint(0, 10, (100,), generator=gen)
    steps = steps.with_minibatches(minibatch, gen)
    fast, plain = _meta_gradients_both_ways(monkeypatch, fmodel, _reversed(params), steps,
                                            real_x, real_y, 1, window=range(1, 5))
    assert fast[1].shape == plain[1].shape == (3, 40, 1, 14, 14)
    _assert_same_gradients(fast, plain)


@needs_compiler
def test_kernel_with_one_shared_lr_equals_autograd(kernel, monkeypatch):
    """One learned lr for all 6 steps (raw lrs (1,)), momentum, the window [1, 5)."""
    fmodel, params = _nets((1, 28, 28), n=2, seed=11)
    steps, real_x, real_y = _steps_and_real_batch((1, 28, 28), torch.arange(10).repeat(3, 1),
                                                  seed=12)
    steps.raw_lrs, steps.shared_lr_steps, steps.momentum = torch.tensor([-3.0]), 6, 0.9
    params = _reversed(params)
    fast, plain = _meta_gradients_both_ways(monkeypatch, fmodel, params, steps,
                                            real_x, real_y, 2, window=range(1, 5))
    assert fast[2].shape == plain[2].shape == (1,)
    # float32 PyTorch drifts from exact by ~1e-4 of the largest image gradient through these
    # momentum steps on some CPUs, so the kernel is held to float64 autograd at the tight
    # tolerance and float32 PyTorch to it loosely
    exact = _float64_meta_gradient(fmodel, params, steps, real_x, real_y, 2, range(1, 5))
    _assert_same_gradients(fast, exact)
    for ours, reference in zip(plain, exact):
        torch.testing.assert_close(ours, reference, atol=1e-3 * float(reference.abs().max()),
                                   rtol=1e-3)


def _fresh_leaves(steps, dtype):
    """A copy of ``steps`` whose floating tensors are new leaves of ``dtype``."""
    from datadistill.state import DistilledSteps

    return DistilledSteps(*(t.detach().clone().to(dtype).requires_grad_()
                            if t.is_floating_point() else t.detach().clone()
                            for t in (steps.images, steps.labels, steps.raw_lrs)),
                          steps.order, steps.direct, steps.momentum,
                          shared_lr_steps=steps.shared_lr_steps, full_size=steps.full_size)


def _float64_meta_gradient(fmodel, params, steps, real_x, real_y, keep_every, window):
    """PyTorch's back-gradient meta-gradient in float64, cast back to float32: the losses
    and the grads of the learnable tensors."""
    from datadistill.backends import choose_meta_gradient

    fmodel64 = FunctionalModel(copy.deepcopy(fmodel.module).double(), "pytorch")
    params64 = {k: v.double() for k, v in params.items()}
    fresh = _fresh_leaves(steps, torch.float64)
    backend = choose_meta_gradient(fmodel64, params64, fresh, real_x.double(), "backgrad",
                                   keep_every, 64)
    losses = backend.run(params64, fresh, real_x.double(), real_y, window)
    return [t.float() for t in (losses.detach(), *(t.grad for t in fresh.learnable().values()))]


@needs_compiler
def test_kernel_training_with_soft_targets_equals_gd_step(kernel):
    """Soft targets (17 images: padding lanes in the last block) against PyTorch's GD steps."""
    from datadistill.inner_loop import gd_step

    fmodel, params = _nets((1, 28, 28), n=2, seed=7)
    gen = torch.Generator().manual_seed(8)
    steps = [(torch.randn(17, 1, 28, 28, generator=gen),
              torch.softmax(2 * torch.randn(17, 10, generator=gen), -1), 0.05),
             (torch.randn(17, 1, 28, 28, generator=gen),  # direct targets: any real values
              2 * torch.randn(17, 10, generator=gen), 0.1)]
    fused = lenet.lenet_train_fn(fmodel.module, _reversed(params), steps[0][0])(params, steps)
    plain = params
    for images, targets, lr in steps:
        plain = gd_step(fmodel, plain, images, targets, torch.tensor(lr), create_graph=False)
    for name in params:
        torch.testing.assert_close(fused[name], plain[name].detach(), atol=1e-5, rtol=1e-4)


@needs_compiler
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["gd", "momentum"])
def test_train_nets_same_with_and_without_kernel(kernel, monkeypatch, momentum):
    from datadistill.evaluate import schedule, train_nets

    fmodel, params = _nets((1, 28, 28), n=3, seed=3)
    params = _reversed(params)
    gen = torch.Generator().manual_seed(4)  # not the global stream: other tests move it
    images, labels = torch.randn(2, 10, 1, 28, 28, generator=gen), torch.arange(10).repeat(2, 1)
    steps = schedule(images, labels, torch.tensor([0.02, 0.03]), 2)
    fused = train_nets(fmodel, params, steps, momentum)
    monkeypatch.setenv("DATADISTILL_NO_KERNELS", "1")
    plain = train_nets(fmodel, params, steps, momentum)
    for name in params:
        torch.testing.assert_close(fused[name], plain[name], atol=1e-5, rtol=1e-4)


@needs_compiler
@pytest.mark.parametrize("refused, flags", [("-fopenmp", ("-O3", "-march=native")),
                                            ("-march=native", ("-O3",))])
def test_a_compiler_without_openmp_or_native_code_builds_the_next_variant(
        monkeypatch, tmp_path, refused, flags):
    """A compiler that refuses an option (Apple clang and -fopenmp) gets the next build of
    ``kernels.BUILDS``, cached under its own key, computing what PyTorch computes."""
    real = shutil.which(os.environ.get("CC", "cc"))
    fake = tmp_path / "cc"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = "{refused}" ] && '
                    f'{{ echo "unsupported option {refused}" >&2; exit 1; }}; done\n'
                    f'exec {real} "$@"\n')
    fake.chmod(0o755)
    fmodel, params = _nets((1, 28, 28), n=2)
    images, labels = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    plain = run_test_nets(FunctionalModel(fmodel.module, "pytorch"), params, images, labels)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    kernels._compiled.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to PyTorch, no warning
            assert kernels.load("lenet") is not None
            compiled = run_test_nets(fmodel, params, images, labels)
        source = Path(kernels.__file__).with_name("lenet.c")
        expected = kernels.library_path("lenet", source, str(fake), flags)
        assert [p.name for p in (tmp_path / "cache").glob("*.so")] == [expected.name]
    finally:
        kernels._compiled.cache_clear()
    torch.testing.assert_close(compiled.losses, plain.losses, atol=1e-5, rtol=1e-5)
