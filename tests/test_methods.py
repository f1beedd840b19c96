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


def _dm_problem(dtype=torch.float64, dsa=None):
    data = make_dataset(classes=3, size=4)
    module = TinyConvNet().to(dtype)
    fmodel = FunctionalModel(module, "pytorch")
    params = RandomInit(module).sample(2, torch.Generator().manual_seed(0))
    images = torch.randn(1, 6, 1, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))
    steps = new_steps(images, torch.arange(6).view(1, 6) % 3, 1, 0.02, 3, augment=dsa)
    method = DistributionMatching(DistillConfig(method="dm", batch_size=30), fmodel, steps,
                                  data, params)
    real = data.train_images[:30].to(dtype), data.train_labels[:30]
    return method, params, steps, real


def test_dm_loss_gradient_matches_float64_finite_differences():
    method, params, steps, (real_x, real_y) = _dm_problem()
    losses = method.loss(params, steps, real_x, real_y, torch.Generator().manual_seed(2))
    assert losses.shape == (2,) and (losses > 0).all()
    analytic = steps.images.grad.clone()
    picks = torch.randperm(steps.images.numel(), generator=torch.Generator().manual_seed(3))[:12]
    eps = 1e-6
    for index in picks.tolist():
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                steps.images.view(-1)[index] += sign * eps
            values.append(float(method.loss(params, steps, real_x, real_y,
                                             torch.Generator().manual_seed(2)).sum()))
            with torch.no_grad():
                steps.images.view(-1)[index] -= sign * eps
        numeric = (values[0] - values[1]) / (2 * eps)
        assert analytic.view(-1)[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


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


@pytest.mark.parametrize("flags, problem", [
    (["--method", "nope"], "unknown method 'nope'; choose one of: dm, unroll"),
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
