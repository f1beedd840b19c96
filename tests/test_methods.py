"""The Method interface: the registry, the paper's method as the default, and distribution
matching (its loss against float64 finite differences, its sampling, its refusals)."""
import json

import pytest
import torch
from torch import nn

import datadistill
from datadistill.cli import main
from datadistill.config import DistillConfig
from datadistill.errors import DistillError
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.methods import METHODS
from datadistill.methods.dm import DistributionMatching
from datadistill.state import new_steps

from .conftest import TinyConvNet, make_dataset

QUICK = ["--dataset", "digits", "--steps", "1", "--epochs", "1", "--no-progress",
         "--device", "cpu"]


def test_registry_lists_every_method_and_the_paper_is_the_default(capsys):
    assert {"unroll", "dm"} <= set(METHODS.names())
    assert DistillConfig().method == "unroll"
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in METHODS.names())


def _dm_problem():
    data = make_dataset(classes=3, size=4)
    module = TinyConvNet().double()
    fmodel = FunctionalModel(module, "pytorch")
    params = RandomInit(module).sample(2, torch.Generator().manual_seed(0))
    images = torch.randn(1, 6, 1, 4, 4, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    steps = new_steps(images, torch.arange(6).view(1, 6) % 3, 1, 0.02, 3)
    method = DistributionMatching(DistillConfig(method="dm", batch_size=30), fmodel, steps,
                                  data, params)
    real = data.train_images[:30].double(), data.train_labels[:30]
    return method, params, steps, real


def _assert_finite_differences(tensor, grad, value, indices, rel, abs, eps=1e-6):
    """``grad`` (the analytic gradient of ``value()`` w.r.t. ``tensor``) against central
    differences of ``value()`` at the flat ``indices``."""
    for index in indices:
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                tensor.view(-1)[index] += sign * eps
            values.append(value())
            with torch.no_grad():
                tensor.view(-1)[index] -= sign * eps
        numeric = (values[0] - values[1]) / (2 * eps)
        assert grad.view(-1)[index].item() == pytest.approx(numeric, rel=rel, abs=abs)


def _twelve_pixels(steps):
    return torch.randperm(steps.images.numel(),
                          generator=torch.Generator().manual_seed(3))[:12].tolist()


def test_dm_loss_gradient_matches_float64_finite_differences():
    method, params, steps, (real_x, real_y) = _dm_problem()
    losses = method.loss(params, steps, real_x, real_y, torch.Generator().manual_seed(2))
    assert losses.shape == (2,) and (losses > 0).all()

    def value() -> float:
        return float(method.loss(params, steps, real_x, real_y,
                                 torch.Generator().manual_seed(2)).mean())

    _assert_finite_differences(steps.images, steps.images.grad.clone(), value,
                               _twelve_pixels(steps), rel=1e-5, abs=1e-8)


def test_dm_loss_is_the_squared_distance_of_class_mean_embeddings():
    """Against the definition written out with a plain forward of each net."""
    method, params, steps, (real_x, real_y) = _dm_problem()
    losses = method.loss(params, steps, real_x, real_y, torch.Generator())
    synthetic, classes = steps.images.detach()[0], steps.labels[0]
    for i in range(2):
        weight, bias = params["conv.weight"][i], params["conv.bias"][i]

        def embed(x):  # TinyConvNet up to its linear layer
            return torch.relu(torch.nn.functional.conv2d(x, weight, bias, padding=1)).flatten(1)

        expected = sum(((embed(real_x[real_y == c]).mean(0)
                         - embed(synthetic[classes == c]).mean(0)) ** 2).sum() for c in range(3))
        assert float(losses[i]) == pytest.approx(float(expected), rel=1e-10)


def test_dm_batches_are_class_balanced():
    data = make_dataset(n_train=90, classes=3)
    method, *_ = _dm_problem()
    method.config = DistillConfig(method="dm", batch_size=12)
    batches = list(method.batches(data, torch.Generator().manual_seed(0)))
    assert len(batches) == method.iterations_per_epoch(data) == 8  # 90 / (12 / 3 per class)
    for _, labels in batches:
        assert torch.bincount(labels, minlength=3).tolist() == [4, 4, 4]


def test_dm_distills_a_set_that_moves_toward_the_real_class_means(tmp_path):
    data = make_dataset(n_train=96, classes=3, size=4)
    start = datadistill.distill(data=data, module=TinyConvNet(), method="dm", steps=1,
                                images_per_class=2, epochs=1, lr=1e-12, progress=False)
    made = datadistill.distill(data=data, module=TinyConvNet(), method="dm", steps=1,
                               images_per_class=2, epochs=30, lr=0.05, batch_size=48,
                               progress=False, out=tmp_path)
    means = torch.stack([data.train_images[data.train_labels == c].mean(0) for c in range(3)])

    def distance(result):
        labels = result.labels.flatten()
        return float((result.images.flatten(0, 1) - means[labels]).norm())

    assert distance(made) < 0.8 * distance(start)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["config"]["method"] == "dm" and meta["backend"] == "pytorch"
    assert "final" not in meta["metrics"]  # no few-step figure for a set without inner steps
    assert made.lrs.numel() == 0  # and no lrs: `evaluate` points to the converge protocol


@pytest.mark.parametrize("flags, problem", [
    (["--method", "nope"], "unknown method 'nope'; choose one of: dc, dm, dsa, frepo, kip, krr, mtt, unroll"),
    (["--method", "dm", "--window", "2"], "--method dm has no inner steps, so --window 2"),
    (["--method", "dm", "--labels", "learned"], "so --labels learned would be ignored"),
    (["--method", "dm", "--eval-every", "1"], "--protocol converge"),
])
def test_method_refusals_are_one_line(tmp_path, capsys, flags, problem):
    assert main(["distill", "--out", str(tmp_path / "run"), *QUICK, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_features_need_a_linear_layer():
    fmodel = FunctionalModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    params = {k: v.unsqueeze(0) for k, v in fmodel.module.named_parameters()}
    with pytest.raises(DistillError, match="no nn.Linear layer"):
        fmodel.features(params, torch.randn(2, 1, 4, 4), train=False)


def _dc_problem(images_per_class=2, **settings):
    from datadistill.methods.dc import GradientMatching

    data = make_dataset(classes=3, size=4)
    module = TinyConvNet().double()
    fmodel = FunctionalModel(module, "pytorch")
    params = RandomInit(module).sample(2, torch.Generator().manual_seed(0))
    images = torch.randn(1, 3 * images_per_class, 1, 4, 4, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    steps = new_steps(images, torch.arange(3 * images_per_class).view(1, -1) % 3, 1, 0.02, 3)
    config = DistillConfig(method="dc", batch_size=30, images_per_class=images_per_class,
                           match_outer_loop=2, match_inner_loop=1, **settings)
    method = GradientMatching(config, fmodel, steps, data, params)
    return method, params, steps, (data.train_images[:30].double(), data.train_labels[:30])


def test_dc_distance_is_one_minus_cosine_per_output_unit_without_biases():
    from datadistill.methods.dc import layerwise_distance

    a, b = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    bias = torch.randn(2, 3)
    expected = torch.stack([sum(1 - torch.nn.functional.cosine_similarity(
        a[i, o].flatten(), b[i, o].flatten(), dim=0, eps=0) for o in range(3)) for i in range(2)])
    torch.testing.assert_close(layerwise_distance([a, bias], [b, -bias]), expected,
                               rtol=1e-5, atol=1e-5)
    assert layerwise_distance([a], [a]).abs().max() < 1e-5


def test_dc_loss_gradient_matches_float64_finite_differences():
    """Through the second-order path: the synthetic gradient's own gradient to the pixels."""
    method, params, steps, (real_x, real_y) = _dc_problem()
    losses = method.loss(params, steps, real_x, real_y, torch.Generator().manual_seed(2))
    assert losses.shape == (2,) and (losses > 0).all()

    def value() -> float:
        method.matches = 0  # the same fresh net each time
        return float(method.loss(params, steps, real_x, real_y,
                                 torch.Generator().manual_seed(2)).mean())

    _assert_finite_differences(steps.images, steps.images.grad.clone(), value,
                               _twelve_pixels(steps), rel=1e-4, abs=1e-7)


def test_dc_trains_its_net_between_matches_and_draws_a_fresh_one_after_the_outer_loop():
    method, params, steps, (real_x, real_y) = _dc_problem()  # 2 matches per net
    generator = torch.Generator().manual_seed(0)
    other = {k: v + 1 for k, v in params.items()}
    method.loss(params, steps, real_x, real_y, generator)
    assert all(torch.equal(method.net[k], params[k]) for k in params)
    method.loss(other, steps, real_x, real_y, generator)  # trained on the synthetic set
    assert not any(torch.equal(method.net[k], params[k]) for k in params if k.endswith("weight"))
    assert not any(torch.equal(method.net[k], other[k]) for k in params)
    method.loss(other, steps, real_x, real_y, generator)  # the outer loop is over
    assert all(torch.equal(method.net[k], other[k]) for k in params)


def test_dc_lowers_its_matching_loss_and_dsa_is_dc_with_dsa(tmp_path):
    data = make_dataset(n_train=96, classes=3, size=4)
    settings = dict(data=data, module=TinyConvNet(), steps=1, images_per_class=1, epochs=6,
                    batch_size=48, init="fixed", optimizer="sgd", lr=0.1, progress=False)
    start = datadistill.distill(method="dc", **{**settings, "epochs": 1, "lr": 1e-12})
    made = datadistill.distill(method="dc", **settings)
    method, _, steps, _ = _dc_problem(images_per_class=1)
    fixed = {k: v.unsqueeze(0).double() for k, v in made.init.items()}
    method.fmodel = FunctionalModel(TinyConvNet().double(), "pytorch")

    def matching_loss(result):
        steps.images = result.images.double().requires_grad_()
        method.matches = 0
        return float(method.loss(fixed, steps, data.train_images.double(), data.train_labels,
                                 torch.Generator().manual_seed(0)).mean())

    assert matching_loss(made) < 0.9 * matching_loss(start)
    datadistill.distill(method="dsa", out=tmp_path, **{**settings, "epochs": 1})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["config"]["method"] == "dsa" and meta["config"]["dsa"] is True


@pytest.mark.parametrize("flags, problem", [
    (["--method", "dc", "--images-per-class", "3"], "for 3 set --match-outer-loop and "
                                                    "--match-inner-loop"),
    (["--method", "dc", "--match-net-lr", "0"], "--match-net-lr must be positive"),
    (["--method", "dsa", "--momentum", "0.5"], "so --momentum 0.5 would be ignored"),
    (["--method", "dc", "--match-inner-loop", "-1"], "--match-inner-loop must be 0"),
    (["--method", "dm", "--backend", "compiled"], "--backend compiled insists on the LeNet"),
    (["--method", "dsa", "--dsa-ops", "mirror"], "unknown DSA operation mirror"),
])
def test_gradient_matching_refusals_are_one_line(tmp_path, capsys, flags, problem):
    assert main(["distill", "--out", str(tmp_path / "run"), *QUICK, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_unknown_outer_optimizer_is_refused_by_the_parser(capsys):
    assert _exit_code(["distill", *QUICK, "--optimizer", "rmsprop"]) == 2
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err


def test_siamese_augmentation_gives_a_class_s_real_and_synthetic_images_one_transform():
    from datadistill.augment import DSA
    from datadistill.methods.base import augmented

    steps = new_steps(torch.zeros(1, 2, 1, 8, 8), torch.zeros(1, 2, dtype=torch.long), 1,
                      0.02, 2, augment=DSA())
    image = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed in range(12):  # every operation gets drawn
        real = augmented(image.expand(5, -1, -1, -1), steps, seed)
        fake = augmented(image.expand(2, -1, -1, -1), steps, seed)
        assert torch.equal(real, real[:1].expand_as(real)) and torch.equal(fake[0], real[0])
    each = augmented(image.expand(5, -1, -1, -1), steps, 1, siamese=False)
    assert not torch.equal(each, each[:1].expand_as(each))  # the net's training: per image


def test_dc_resumes_exactly_with_its_net_between_matches(tmp_path):
    data = make_dataset(n_train=96, classes=3, size=4)
    settings = dict(data=data, module=TinyConvNet(), method="dc", steps=1, images_per_class=10,
                    match_outer_loop=3, match_inner_loop=2, batch_size=48, lr=0.05,
                    progress=False, final_checks="none")
    whole = datadistill.distill(out=tmp_path / "whole", epochs=4, **settings)
    datadistill.distill(out=tmp_path / "part", epochs=1, **settings)  # stops inside a net's loop
    resumed = datadistill.distill(out=tmp_path / "part", resume=True, epochs=4,
                                  data=data, module=TinyConvNet(), progress=False)
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=0)


def _exit_code(command: list[str]) -> int:
    """The command's exit code, argparse's own refusals (SystemExit) included."""
    try:
        return main(command)
    except SystemExit as exit:
        return exit.code


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Two experts of the digits' MLP, 4 epochs each (a few seconds)."""
    from datadistill.experts import ExpertSchedule, train_experts

    out = tmp_path_factory.mktemp("experts") / "mlp"
    train_experts("digits", 2, out, schedule=ExpertSchedule(epochs=4, lr=0.05, dsa=False),
                  progress=False)
    return out


def test_experts_keep_every_epoch_and_a_rerun_goes_on_without_retraining(experts):
    from datadistill.experts import ExpertSchedule, load_experts, train_experts

    loaded = load_experts(experts)
    assert len(loaded.trajectories) == 2 and loaded.manifest["arch"] == "mlp"
    for trajectory in loaded.trajectories:
        for values in trajectory.values():
            assert values.shape[0] == 5 and not torch.equal(values[0], values[-1])
    first = (experts / "expert-0.safetensors").stat().st_mtime_ns
    (experts / "expert-1.safetensors").unlink()  # as if stopped before the second
    train_experts("digits", 2, experts, schedule=ExpertSchedule(epochs=4, lr=0.05, dsa=False),
                  progress=False)
    assert (experts / "expert-0.safetensors").stat().st_mtime_ns == first
    torch.testing.assert_close(load_experts(experts).trajectories[1], loaded.trajectories[1])
    with pytest.raises(DistillError, match="holds experts trained with other schedule"):
        train_experts("digits", 2, experts, schedule=ExpertSchedule(epochs=3), progress=False)


def test_mtt_loss_gradient_matches_float64_finite_differences():
    """The param-matching loss through the unrolled minibatch steps, to pixels and the lr."""
    from datadistill.methods.mtt import matching_loss
    from datadistill.inner_loop import unrolled_gradient

    module = TinyConvNet().double()
    fmodel = FunctionalModel(module, "pytorch")
    start = RandomInit(module).sample(1, torch.Generator().manual_seed(0))
    target = {k: v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1),
                                       dtype=v.dtype) for k, v in start.items()}
    images = torch.randn(1, 6, 1, 4, 4, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(2))
    steps = new_steps(images, torch.arange(6).view(1, 6) % 3, 4, 0.1, 3, lr_per_step=False)
    steps = steps.with_minibatches(3, torch.Generator().manual_seed(3))

    def value() -> float:
        return float(unrolled_gradient(fmodel, start, steps, matching_loss(start, target)))

    loss = value()
    assert 0 < loss
    analytic = [steps.images.grad.clone(), steps.raw_lrs.grad.clone()]
    for tensor, grad in zip((steps.images, steps.raw_lrs), analytic):
        _assert_finite_differences(tensor, grad, value,
                                   range(0, tensor.numel(), max(1, tensor.numel() // 8)),
                                   rel=1e-5, abs=1e-9)


def test_mtt_distils_toward_the_experts_and_learns_one_lr(experts, tmp_path):
    settings = dict(method="mtt", experts=str(experts), dataset="digits", steps=1,
                    images_per_class=2, distill_epochs=6, minibatch=10, expert_epochs=2,
                    max_start_epoch=2, image_init="real", iterations=40, lr=0.01,
                    progress=False)
    made = datadistill.distill(out=tmp_path / "run", **settings)
    start = datadistill.distill(**{**settings, "iterations": 1, "lr": 1e-12})
    assert made.meta["config"]["lr_per_step"] is False and made.meta["backend"] == "pytorch"
    assert "final" not in made.meta["metrics"]  # auto: no few-step figure for an mtt set
    assert not torch.equal(made.images, start.images)
    assert len(set(made.lrs.tolist())) == 1 and made.lrs[0] != start.lrs[0]


@pytest.mark.parametrize("flags, problem", [
    (["--method", "mtt"], "--method mtt needs --experts DIR"),
    (["--method", "mtt", "--experts", "EXPERTS", "--steps", "2"], "use --steps 1"),
    (["--method", "mtt", "--experts", "EXPERTS", "--max-start-epoch", "3"],
     "--max-start-epoch (3) + --expert-epochs (2) must not exceed"),
    (["--method", "mtt", "--experts", "EXPERTS", "--model", "convnet-w16"],
     "the experts are mlp nets, not ConvNet"),
    (["--method", "mtt", "--experts", "EXPERTS", "--dataset", "digits28"],
     "the experts were trained on [1, 8, 8] images"),
    (["--method", "mtt", "--experts", "NOWHERE"], "no experts in"),
    (["--lr-lr", "-1"], "--lr-lr must be 0 (--lr) or positive"),
])
def test_mtt_refusals_are_one_line(experts, tmp_path, capsys, flags, problem):
    flags = [str(experts) if f == "EXPERTS" else str(tmp_path / "none") if f == "NOWHERE"
             else f for f in flags]
    assert _exit_code(["distill", "--out", str(tmp_path / "run"), *QUICK, "--steps", "1",
                       *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
