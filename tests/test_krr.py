"""Kernel-regression methods (krr, frepo, kip): the solve against scikit-learn, the
meta-gradient through it against float64 finite differences, the NTK against per-logit
autograd, frepo's pool, and the refusals."""
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge

import datadistill
from datadistill.cli import main
from datadistill.config import DistillConfig
from datadistill.errors import DistillError
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.inner_loop import momentum_step
from datadistill.methods.krr import (POOL_MOMENTUM, FeatureRegressionPool, KernelRegression,
                                     NeuralTangentKernel, ridge_weights)
from datadistill.state import new_steps

from .conftest import TinyConvNet, make_dataset
from .test_methods import _assert_finite_differences, _twelve_pixels

QUICK = ["--dataset", "digits", "--steps", "1", "--iterations", "2", "--no-progress",
         "--device", "cpu"]


@pytest.mark.parametrize("images,features", [(6, 20), (30, 8)])  # the dual, the primal
def test_ridge_predictions_are_scikit_learn_s_kernel_ridge(images, features):
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(2, images, features, dtype=torch.float64, generator=gen)
    query = torch.randn(2, 5, features, dtype=torch.float64, generator=gen)
    targets = torch.randn(2, images, 3, dtype=torch.float64, generator=gen)
    predictions = query @ ridge_weights(support, targets, 0.1)
    eps = torch.finfo(torch.float64).eps
    for i in range(2):
        gram = support[i] @ support[i].T
        solver = KernelRidge(alpha=0.1 * float(gram.diagonal().mean()) + eps,
                             kernel="precomputed")
        solver.fit(gram.numpy(), targets[i].numpy())
        expected = solver.predict((query[i] @ support[i].T).numpy())
        assert torch.allclose(predictions[i], torch.from_numpy(expected), rtol=1e-8, atol=1e-10)


def _problem(method_class, labels="learned", images_per_step=6, **settings):
    data = make_dataset(classes=3, size=4)
    module = TinyConvNet().double()  # 32 features: more images than that solve the primal
    fmodel = FunctionalModel(module, "pytorch")
    params = RandomInit(module).sample(2, torch.Generator().manual_seed(0))
    images = torch.randn(1, images_per_step, 1, 4, 4, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    steps = new_steps(images, torch.arange(images_per_step).view(1, -1) % 3, 1, 0.02, 3,
                      kind=labels)
    config = DistillConfig(method=method_class.name, labels=labels, batch_size=30, **settings)
    method = method_class(config, fmodel, steps, data, params)
    real = data.train_images[:30].double(), data.train_labels[:30]
    return method, params, steps, real


@pytest.mark.parametrize("method_class,images", [(KernelRegression, 6),
                                                  (KernelRegression, 40),  # the primal
                                                  (NeuralTangentKernel, 6)])
def test_the_meta_gradient_through_the_solve_matches_float64_finite_differences(method_class,
                                                                                 images):
    method, params, steps, (real_x, real_y) = _problem(method_class, images_per_step=images)
    losses = method.loss(params, steps, real_x, real_y, torch.Generator().manual_seed(2))
    assert losses.shape == (2,) and (losses > 0).all()

    def value() -> float:
        return float(method.loss(params, steps, real_x, real_y,
                                 torch.Generator().manual_seed(2)).mean())

    image_grad, label_grad = steps.images.grad.clone(), steps.labels.grad.clone()
    assert label_grad.abs().sum() > 0
    _assert_finite_differences(steps.images, image_grad, value, _twelve_pixels(steps),
                               rel=1e-5, abs=1e-8)
    _assert_finite_differences(steps.labels, label_grad, value, range(0, 18, 2),
                               rel=1e-5, abs=1e-8)


def test_krr_loss_is_the_squared_error_of_the_closed_form_regression():
    """Against the definition written out for one net: the embedding's kernel, the relative
    ridge, targets centred by 1/K."""
    method, params, steps, (real_x, real_y) = _problem(KernelRegression, labels="fixed",
                                                       ridge=1e-3)
    losses = method.loss(params, steps, real_x, real_y, torch.Generator())
    weight, bias = params["conv.weight"][1], params["conv.bias"][1]

    def embed(x):  # TinyConvNet up to its linear layer
        return torch.relu(torch.nn.functional.conv2d(x, weight, bias, padding=1)).flatten(1)

    support, query = embed(steps.images.detach()[0]), embed(real_x)
    gram = support @ support.T
    ridge = 1e-3 * gram.diagonal().mean() + torch.finfo(torch.float64).eps
    targets = torch.nn.functional.one_hot(steps.labels[0], 3).double() - 1 / 3
    predictions = query @ support.T @ torch.linalg.solve(gram + ridge * torch.eye(6), targets)
    truth = torch.nn.functional.one_hot(real_y, 3).double() - 1 / 3
    expected = (predictions - truth).pow(2).sum(1).mean()
    assert float(losses[1]) == pytest.approx(float(expected), rel=1e-8)


def test_kip_features_give_the_empirical_ntk():
    """⟨φ(x), φ(x')⟩ = Σ_c ⟨∂f_c(x)/∂θ, ∂f_c(x')/∂θ⟩, each gradient by plain autograd."""
    method, params, steps, (real_x, _) = _problem(NeuralTangentKernel)
    images = real_x[:4]
    features = method.features(params, images)
    module = TinyConvNet().double()
    net = {k: v[0].clone().requires_grad_() for k, v in params.items()}

    def jacobian_row(x, c):
        logits = torch.func.functional_call(module, net, (x.unsqueeze(0),))[0]
        grads = torch.autograd.grad(logits[c], list(net.values()))
        return torch.cat([g.flatten() for g in grads])

    rows = [torch.stack([jacobian_row(x, c) for c in range(3)]) for x in images]
    expected = torch.stack([torch.stack([(a * b).sum() for b in rows]) for a in rows])
    assert torch.allclose(features[0] @ features[0].T, expected, rtol=1e-10)


def test_frepo_trains_its_pool_nets_and_replaces_them_after_their_steps():
    method, params, steps, (real_x, real_y) = _problem(FeatureRegressionPool, online_models=2,
                                                       online_steps=2, nets_per_iteration=1)
    gen = torch.Generator().manual_seed(0)
    draws = [RandomInit(method.fmodel.module).sample(1, gen) for _ in range(6)]
    ages = []
    for params in draws:
        before = {k: v.clone() for k, v in method.pool.items()}
        velocity = {k: v.clone() for k, v in method.velocity.items()}
        age_before = method.age.clone()
        method.loss(params, steps, real_x, real_y, gen)
        (index,) = method.picked.tolist()
        ages.append(int(method.age[index]))
        fresh = age_before[index] in (-1, 2)  # new, or done with its 2 steps
        start = {k: (params[k][0] if fresh else before[k][index]) for k in params}
        moment = {k: (torch.zeros_like(v[index]) if fresh else v[index])
                  for k, v in velocity.items()}
        expected, _ = momentum_step(method.fmodel, {k: v[None] for k, v in start.items()},
                                    {k: v[None] for k, v in moment.items()},
                                    steps.full_images()[0], steps.all_targets()[0],
                                    torch.tensor(0.01, dtype=torch.float64), POOL_MOMENTUM,
                                    create_graph=False)
        for k in params:  # one SGD step from a fresh draw, or from where the net was
            assert torch.allclose(method.pool[k][index], expected[k][0], atol=1e-12)
    assert set(ages) == {1, 2}  # every net takes 2 steps, then a fresh one starts at 1
    assert (method.age <= 2).all()


def test_frepo_resumes_exactly_with_its_pool(tmp_path):
    data = make_dataset(n_train=96, classes=3, size=4)
    settings = dict(data=data, module=TinyConvNet(), method="frepo", steps=1,
                    images_per_class=2, batch_size=32, lr=0.01, online_models=3,
                    online_steps=2, progress=False)
    whole = datadistill.distill(epochs=4, **settings)
    datadistill.distill(epochs=2, out=tmp_path, **settings)
    resumed = datadistill.distill(epochs=4, out=tmp_path, resume=True, **settings)
    assert torch.equal(whole.images, resumed.images)
    assert torch.equal(whole.labels, resumed.labels)


@pytest.mark.parametrize("method", ["krr", "frepo"])
def test_kernel_regression_lowers_its_meta_loss_and_saves_no_lrs(method, tmp_path):
    data = make_dataset(n_train=96, classes=3, size=4)
    made = datadistill.distill(data=data, module=TinyConvNet(), method=method, steps=1,
                               images_per_class=2, epochs=20, lr=0.05, batch_size=48,
                               labels="learned", progress=False, out=tmp_path, seed=1)
    assert made.lrs.numel() == 0 and made.labels.is_floating_point()
    start = datadistill.distill(data=data, module=TinyConvNet(), method=method, steps=1,
                                images_per_class=2, epochs=20, lr=1e-12, batch_size=48,
                                labels="learned", progress=False, seed=1)
    assert _mean_loss(made, data) < 0.8 * _mean_loss(start, data)


def _mean_loss(result, data) -> float:
    """The krr meta-loss of a made set (its targets as they are) over the whole training
    split, averaged over fresh nets."""
    module = TinyConvNet()
    steps = new_steps(result.images, result.labels.argmax(-1), 1, 0.02, 3, kind="direct")
    steps.labels = result.labels.clone().requires_grad_()
    method = KernelRegression(DistillConfig(method="krr"), FunctionalModel(module), steps,
                              data, {})
    params = RandomInit(module).sample(8, torch.Generator().manual_seed(5))
    return float(method.loss(params, steps, data.train_images, data.train_labels,
                             torch.Generator()).mean())


@pytest.mark.parametrize("flags,problem", [
    (["--method", "krr", "--ridge", "0"], "--ridge must be positive"),
    (["--method", "frepo", "--online-models", "2", "--nets-per-iteration", "3"],
     "--nets-per-iteration 3 exceeds the pool (--online-models 2)"),
    (["--method", "frepo", "--online-models", "0"], "--online-models must be at least 1"),
    (["--method", "frepo", "--online-steps", "0"], "--online-steps must be at least 1"),
    (["--method", "kip", "--window", "2"], "--method kip solves its inner problem in closed form"),
    (["--method", "krr", "--backend", "compiled"], "--backend compiled insists"),
])
def test_kernel_regression_refusals_are_one_line(tmp_path, capsys, flags, problem):
    assert main(["distill", *QUICK, *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "\n" not in err


def test_frepo_refuses_torchrun_in_one_line(monkeypatch):
    from datadistill.distributed import World

    monkeypatch.setattr("datadistill.methods.krr.current", lambda: World(0, 2))
    with pytest.raises(DistillError, match="keeps its pool of nets in one process"):
        FeatureRegressionPool.check(DistillConfig(method="frepo"))
    KernelRegression.check(DistillConfig(method="krr"))  # krr runs under it


def test_a_floor_like_a_set_without_lrs_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "krr"
    assert main(["distill", *QUICK, "--method", "krr", "--out", str(run)]) == 0
    assert main(["baseline", "--method", "random", "--like", str(run),
                 "--out", str(tmp_path / "floor")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no learning rates" in err and "--protocol converge" in err and "\n" not in err
    assert not (tmp_path / "floor").exists()
