"""The differentiable core: finite differences, back-gradient, and plain-SGD agreement."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.augment import DSA, DSA_OPS
from datadistill.errors import DistillError
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.inner_loop import meta_gradient
from datadistill.state import DistilledSteps

from .conftest import TinyConvNet


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3))


def _problem(module: nn.Module, n_steps: int = 2, epochs: int = 2, nets: int = 2):
    """Float64 distilled steps, two initial nets and a real batch for a 4x4, 3-class task."""
    module = module.double()
    gen = torch.Generator().manual_seed(0)
    params = {k: v.double() for k, v in RandomInit(module).sample(nets, gen).items()}
    images = torch.randn(n_steps, 3, 1, 4, 4, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat(n_steps, 1)
    raw_lrs = torch.full((n_steps * epochs,), -1.0, dtype=torch.float64)
    real_x = torch.randn(20, 1, 4, 4, generator=gen, dtype=torch.float64)
    real_y = torch.randint(0, 3, (20,), generator=gen)
    return FunctionalModel(module), params, images, labels, raw_lrs, real_x, real_y


def _grads(fmodel, params, images, labels, raw_lrs, real_x, real_y, momentum=0.0, **kwargs):
    steps = DistilledSteps(images.clone().requires_grad_(), labels,
                           raw_lrs.clone().requires_grad_(), momentum=momentum)
    loss = meta_gradient(fmodel, params, steps, real_x, real_y, **kwargs)
    return loss.mean().item(), steps.images.grad, steps.raw_lrs.grad


@pytest.mark.parametrize("mode,momentum", [("full", 0.0), ("full", 0.9), ("backgrad", 0.9)])
@pytest.mark.parametrize("make_module", [_mlp, TinyConvNet], ids=["mlp", "conv"])
def test_meta_gradient_matches_finite_differences(make_module, mode, momentum):
    """Plain GD, and heavy-ball momentum through both reverse modes."""
    fmodel, params, images, labels, raw_lrs, real_x, real_y = _problem(make_module())
    _, grad_images, grad_lrs = _grads(fmodel, params, images, labels, raw_lrs, real_x, real_y,
                                      momentum, chunk_size=7, mode=mode)
    eps = 1e-6

    def meta_loss(x, r):
        return _grads(fmodel, params, x, labels, r, real_x, real_y, momentum)[0]

    flat = images.flatten()
    for i in range(0, flat.numel(), 5):  # every 5th pixel, and every lr
        plus, minus = flat.clone(), flat.clone()
        plus[i] += eps
        minus[i] -= eps
        numeric = (meta_loss(plus.view_as(images), raw_lrs)
                   - meta_loss(minus.view_as(images), raw_lrs)) / (2 * eps)
        assert numeric == pytest.approx(grad_images.flatten()[i].item(), rel=1e-5, abs=1e-9)
    for t in range(raw_lrs.numel()):
        plus, minus = raw_lrs.clone(), raw_lrs.clone()
        plus[t] += eps
        minus[t] -= eps
        numeric = (meta_loss(images, plus) - meta_loss(images, minus)) / (2 * eps)
        assert numeric == pytest.approx(grad_lrs[t].item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("keep_every", [1, 2, 3])
@pytest.mark.parametrize("make_module", [_mlp, TinyConvNet], ids=["mlp", "conv"])
def test_backgrad_equals_full_autograd(make_module, keep_every, momentum):
    problem = _problem(make_module(), n_steps=3, epochs=2)
    loss_full, gi_full, gl_full = _grads(*problem, momentum, mode="full")
    loss_bg, gi_bg, gl_bg = _grads(*problem, momentum, mode="backgrad", keep_every=keep_every)
    assert loss_bg == pytest.approx(loss_full, abs=1e-12)
    assert torch.allclose(gi_bg, gi_full, rtol=0, atol=1e-6 * gi_full.abs().max().item())
    assert torch.allclose(gl_bg, gl_full, rtol=0, atol=1e-6 * gl_full.abs().max().item())
    assert (gi_full - gi_bg).abs().max() < 1e-10


@pytest.mark.parametrize("mode,momentum", [("full", 0.0), ("backgrad", 0.9)])
def test_one_shared_lr_has_the_summed_gradient_and_that_of_finite_differences(mode, momentum):
    """One learned lr for all T steps (``shared_lr_steps``): its gradient is the sum of the
    per-step lrs' gradients at equal values, and matches float64 finite differences."""
    fmodel, params, images, labels, raw_lrs, real_x, real_y = _problem(TinyConvNet())
    _, _, per_step = _grads(fmodel, params, images, labels, raw_lrs, real_x, real_y, momentum,
                            mode="full")

    def shared(raw: float, **kwargs):
        steps = DistilledSteps(images.clone().requires_grad_(), labels,
                               torch.tensor([raw], dtype=torch.float64, requires_grad=True),
                               momentum=momentum, shared_lr_steps=raw_lrs.numel())
        loss = meta_gradient(fmodel, params, steps, real_x, real_y, **kwargs)
        return loss.mean().item(), steps

    _, steps = shared(-1.0, mode=mode, keep_every=2)
    assert steps.num_steps == raw_lrs.numel() and steps.raw_lrs.grad.shape == (1,)
    assert steps.lrs().tolist() == pytest.approx([F.softplus(torch.tensor(-1.0)).item()] * 4)
    assert steps.raw_lrs.grad.item() == pytest.approx(per_step.sum().item(), rel=1e-9)
    eps = 1e-6
    numeric = (shared(-1.0 + eps)[0] - shared(-1.0 - eps)[0]) / (2 * eps)
    assert numeric == pytest.approx(steps.raw_lrs.grad.item(), rel=1e-5)


def test_user_module_is_left_untouched():
    module = TinyConvNet()
    before = copy.deepcopy(module.state_dict())
    fmodel, params, images, labels, raw_lrs, real_x, real_y = _problem(module)
    saved = {k: v.clone() for k, v in params.items()}
    _grads(fmodel, params, images, labels, raw_lrs, real_x, real_y)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k].double())
        assert module.get_parameter(k).grad is None
    for k, v in params.items():
        assert torch.equal(v, saved[k])


def test_one_unrolled_step_equals_torch_sgd():
    torch.manual_seed(0)
    module = TinyConvNet()
    x, y = torch.randn(6, 1, 4, 4), torch.randint(0, 3, (6,))
    params = {k: v.detach().unsqueeze(0) for k, v in module.named_parameters()}
    from datadistill.evaluate import train_nets

    ours = train_nets(FunctionalModel(module), params, [(x, y, 0.1)])
    reference = copy.deepcopy(module)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    F.cross_entropy(reference(x), y).backward()
    opt.step()
    for k, v in reference.named_parameters():
        assert torch.allclose(ours[k][0], v, atol=1e-6)


def test_momentum_steps_equal_torch_sgd_with_momentum():
    torch.manual_seed(0)
    module = TinyConvNet()
    batches = [(torch.randn(6, 1, 4, 4), torch.randint(0, 3, (6,)), lr) for lr in (0.1, 0.2, 0.05)]
    params = {k: v.detach().unsqueeze(0) for k, v in module.named_parameters()}
    from datadistill.evaluate import train_nets

    ours = train_nets(FunctionalModel(module), params, batches, momentum=0.9)
    reference = copy.deepcopy(module)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for x, y, lr in batches:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
    plain = train_nets(FunctionalModel(module), params, batches)
    for k, v in reference.named_parameters():
        assert torch.allclose(ours[k][0], v, atol=1e-6)
        assert not torch.allclose(plain[k][0], v, atol=1e-3)  # momentum made a difference


def test_batchnorm_with_running_stats_is_refused():
    with pytest.raises(DistillError, match="track_running_stats=False"):
        FunctionalModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    FunctionalModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)))


LABEL_KINDS = {"learned": (False, "label_logits"), "direct": (True, "label_targets")}


def _label_problem(make_module, **kwargs):
    """The same problem with learnable labels (S, n, 3) instead of fixed classes: logits, or
    direct targets that sum to anything but 1 and may be negative."""
    fmodel, params, images, labels, raw_lrs, real_x, real_y = _problem(make_module(), **kwargs)
    gen = torch.Generator().manual_seed(1)
    logits = 2 * F.one_hot(labels, 3).double() + 0.3 * torch.randn(
        *labels.shape, 3, generator=gen, dtype=torch.float64)
    return fmodel, params, images, logits, raw_lrs, real_x, real_y


def _label_grads(fmodel, params, images, logits, raw_lrs, real_x, real_y, direct=False,
                 **kwargs):
    steps = DistilledSteps(images.clone().requires_grad_(), logits.clone().requires_grad_(),
                           raw_lrs.clone().requires_grad_(), direct=direct)
    loss = meta_gradient(fmodel, params, steps, real_x, real_y, **kwargs)
    return loss.mean().item(), {k: v.grad for k, v in steps.learnable().items()}


@pytest.mark.parametrize("kind", LABEL_KINDS)
@pytest.mark.parametrize("mode", ["full", "backgrad"])
@pytest.mark.parametrize("make_module", [_mlp, TinyConvNet], ids=["mlp", "conv"])
def test_learned_label_gradient_matches_finite_differences(make_module, mode, kind):
    direct, name = LABEL_KINDS[kind]
    fmodel, params, images, logits, raw_lrs, real_x, real_y = _label_problem(make_module)
    _, grads = _label_grads(fmodel, params, images, logits, raw_lrs, real_x, real_y,
                            direct=direct, mode=mode)
    assert set(grads) == {"images", "raw_lrs", name}
    eps = 1e-6
    flat = logits.flatten()
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += eps
        minus[i] -= eps
        numeric = (_label_grads(fmodel, params, images, plus.view_as(logits), raw_lrs, real_x,
                                real_y, direct=direct)[0]
                   - _label_grads(fmodel, params, images, minus.view_as(logits), raw_lrs,
                                  real_x, real_y, direct=direct)[0]) / (2 * eps)
        assert numeric == pytest.approx(grads[name].flatten()[i].item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("kind", LABEL_KINDS)
@pytest.mark.parametrize("keep_every", [1, 2])
def test_learned_label_backgrad_equals_full_autograd(keep_every, kind):
    direct = LABEL_KINDS[kind][0]
    problem = _label_problem(TinyConvNet, n_steps=3, epochs=2)
    _, full = _label_grads(*problem, direct=direct, mode="full")
    _, back = _label_grads(*problem, direct=direct, mode="backgrad", keep_every=keep_every)
    for name in full:
        assert (full[name] - back[name]).abs().max() < 1e-10, name


def test_direct_labels_are_the_targets_and_start_one_hot():
    from datadistill.state import new_steps

    steps = new_steps(torch.zeros(1, 3, 1, 4, 4), torch.tensor([[2, 0, 1]]), 2, 0.02, 3,
                      "direct")
    assert set(steps.learnable()) == {"images", "raw_lrs", "label_targets"}
    assert torch.equal(steps.targets(0), F.one_hot(torch.tensor([2, 0, 1]), 3).float())
    with torch.no_grad():
        steps.labels[0, 0] = torch.tensor([-0.5, 0.25, 2.0])
    assert torch.equal(steps.all_targets()[0, 0], torch.tensor([-0.5, 0.25, 2.0]))


def _windowed_problem(labels_learned: bool, minibatch: int, momentum: float = 0.0,
                      augment: DSA | None = None, downscale: int = 1):
    """A flat set of 6 images (S = 1), 6 inner steps, minibatches of ``minibatch``, each
    step's images augmented by ``augment``; with ``downscale`` stored at 1/downscale of the
    side and enlarged to 4x4 by every step."""
    fmodel, params, images, labels, _, real_x, real_y = _problem(TinyConvNet(), n_steps=2)
    images, labels = images.view(1, 6, 1, 4, 4), labels.view(1, 6)
    images = images[..., ::downscale, ::downscale].contiguous()
    if labels_learned:
        labels = 2 * F.one_hot(labels, 3).double()
    raw_lrs = torch.linspace(-1.5, -0.5, 6, dtype=torch.float64)
    steps = DistilledSteps(images.requires_grad_(), labels.requires_grad_(labels_learned),
                           raw_lrs.requires_grad_(), momentum=momentum, augment=augment,
                           full_size=(4, 4) if downscale > 1 else None)
    steps = steps.with_minibatches(minibatch, torch.Generator().manual_seed(5))
    steps = steps.with_augmentation(torch.Generator().manual_seed(6))
    return fmodel, params, steps, real_x, real_y


# every DSA operation is linear in the pixels (colour affine) for a fixed draw, so the
# finite differences see the same augmentation as the gradient (each op: gradcheck below)
ALL_DSA = DSA()


@pytest.mark.parametrize("op", DSA_OPS)
def test_each_dsa_operation_has_the_gradient_of_its_finite_differences(op):
    images = torch.randn(1, 4, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    augment = DSA((op,))
    moved = augment(images, torch.Generator().manual_seed(0))
    assert not torch.allclose(moved, images)  # the draw changes the images
    assert torch.autograd.gradcheck(
        lambda x: augment(x, torch.Generator().manual_seed(0)), (images,))


@pytest.mark.parametrize("momentum,augment,downscale",
                         [(0.0, None, 1), (0.5, None, 1), (0.5, ALL_DSA, 1), (0.0, None, 2),
                          (0.5, ALL_DSA, 2)],
                         ids=["gd", "momentum", "momentum-dsa", "gd-downscale2",
                              "momentum-dsa-downscale2"])
@pytest.mark.parametrize("mode", ["full", "backgrad"])
@pytest.mark.parametrize("minibatch", [0, 4], ids=["whole", "minibatch"])
def test_windowed_meta_gradient_matches_finite_differences(mode, minibatch, momentum, augment,
                                                           downscale):
    """Through the window [2, 5) only: the steps before it are constants, the loss is at θ_5;
    with DSA each step's images are augmented, the same way in every pass; with a downscale
    each step enlarges its stored images first (the gradient flows through the resize)."""
    from datadistill.inner_loop import inner_step, start, unroll

    fmodel, params, steps, real_x, real_y = _windowed_problem(True, minibatch, momentum,
                                                              augment, downscale)
    window = range(2, 5)
    meta_gradient(fmodel, params, steps, real_x, real_y, mode, keep_every=2, window=window)
    before = start(params, momentum)  # (θ_2, v_2), held constant; not by the code under test
    for t in range(window.start):
        before = tuple(None if p is None else {k: v.detach() for k, v in p.items()}
                       for p in inner_step(fmodel, before, steps, t, create_graph=False))

    def meta_loss(name: str, index: int, delta: float) -> float:
        tensors = {k: v.detach().clone() for k, v in steps.learnable().items()}
        tensors[name].view(-1)[index] += delta
        moved = replace(steps, images=tensors["images"], labels=tensors["label_logits"],
                        raw_lrs=tensors["raw_lrs"])
        final = unroll(fmodel, before, moved, window)
        return float(fmodel.losses(final, real_x, real_y, train=False).mean().detach())

    eps = 1e-6
    for name, tensor in steps.learnable().items():
        grad = tensor.grad.flatten()
        assert grad.abs().max() > 0, name
        for i in range(0, grad.numel(), 7):
            numeric = (meta_loss(name, i, eps) - meta_loss(name, i, -eps)) / (2 * eps)
            assert numeric == pytest.approx(grad[i].item(), rel=1e-5, abs=1e-9), (name, i)
    assert steps.raw_lrs.grad[[0, 1, 5]].abs().max() == 0  # outside the window: no gradient


def test_augmented_steps_are_redrawn_each_meta_iteration_and_repeat_within_one():
    steps = _windowed_problem(True, 0, augment=DSA(("scale", "rotate")))[2]
    first = steps.step(3)[0]
    assert torch.equal(first, steps.step(3)[0])  # recomputed alike (back-gradient, window)
    assert not torch.allclose(first, steps.images[0])  # augmented
    assert not torch.allclose(first, steps.step(4)[0])  # each step its own draw
    steps = steps.with_augmentation(torch.Generator().manual_seed(7))
    assert not torch.allclose(first, steps.step(3)[0])  # a new draw per meta-iteration


def test_the_compiled_lenet_never_runs_augmented_steps():
    """The kernel reads the images as they are, so with DSA ``auto`` takes PyTorch."""
    from datadistill import kernels
    from datadistill.backends import choose_meta_gradient
    from datadistill.models import build_model

    module = build_model("lenet", (1, 28, 28), 10)
    params = RandomInit(module).sample(1, torch.Generator().manual_seed(0))
    images = torch.randn(1, 10, 1, 28, 28, requires_grad=True)
    plain = "compiled-lenet" if kernels.load("lenet") is not None else "pytorch"
    for augment, expected in ((DSA(), "pytorch"), (None, plain)):
        steps = DistilledSteps(images, torch.arange(10).view(1, 10),
                               torch.zeros(3, requires_grad=True), augment=augment)
        backend = choose_meta_gradient(FunctionalModel(module, "auto"), params, steps,
                                       torch.randn(8, 1, 28, 28))
        assert backend.name == expected


def test_window_draws_ends_uniformly_and_covers_everything_when_wide():
    from datadistill.state import window_of

    gen = torch.Generator().manual_seed(0)
    ends = [window_of(10, 4, False, gen) for _ in range(2000)]
    assert all(last - first == 4 and 4 <= last <= 10 for first, last in ends)
    counts = torch.bincount(torch.tensor([last for _, last in ends]), minlength=11)[4:]
    assert counts.min() > 200  # 7 possible ends, about 286 each
    assert window_of(10, 4, True, gen) == (6, 10)
    assert window_of(10, 0, False, gen) == (0, 10) and window_of(10, 12, False, gen) == (0, 10)
