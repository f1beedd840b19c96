"""The outer loop end to end on tiny data: learning, determinism, resume, artifacts, errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import datadistill
from datadistill.augment import DSA
from datadistill.errors import DistillError
from datadistill.evaluate import evaluate_steps, schedule
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit

from .conftest import TinyConvNet, make_dataset

TINY = dict(steps=2, distill_epochs=2, epochs=4, batch_size=32, lr=0.05, eval_nets=4,
            progress=False, device="cpu")


def test_distilled_data_learns_and_beats_its_start(tiny_data):
    untrained = datadistill.distill(data=tiny_data, **{**TINY, "epochs": 0 + 1, "lr": 1e-9})
    trained = datadistill.distill(data=tiny_data, **{**TINY, "epochs": 15})
    before = untrained.meta["metrics"]["final"]["accuracy_mean"]
    after = trained.meta["metrics"]["final"]["accuracy_mean"]
    assert after > before + 0.2
    assert after > 0.8
    assert trained.images.shape == (2, 3, 1, 4, 4)
    assert torch.equal(trained.labels, torch.arange(3).repeat(2, 1))
    assert trained.lrs.shape == (4,) and (trained.lrs > 0).all()


def test_same_seed_same_result(tiny_data):
    a = datadistill.distill(data=tiny_data, seed=3, **TINY)
    b = datadistill.distill(data=tiny_data, seed=3, **TINY)
    c = datadistill.distill(data=tiny_data, seed=4, **TINY)
    assert torch.equal(a.images, b.images) and torch.equal(a.lrs, b.lrs)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("init", ["random", "fixed"])
def test_resume_continues_exactly(tmp_path, tiny_data, init):
    settings = dict(TINY, init=init, nets_per_iteration=1 if init == "fixed" else 2,
                    decay_epochs=2)
    whole = datadistill.distill(data=tiny_data, out=tmp_path / "whole", **settings)
    datadistill.distill(data=tiny_data, out=tmp_path / "part", **{**settings, "epochs": 2})
    resumed = datadistill.distill(data=tiny_data, out=tmp_path / "part", resume=True,
                                  epochs=4, progress=False)
    assert torch.equal(whole.images, resumed.images)
    assert torch.equal(whole.lrs, resumed.lrs)


def test_real_image_init_starts_from_training_images_of_each_class(tiny_data):
    start = datadistill.distill(data=tiny_data, image_init="real", **{**TINY, "lr": 1e-12})
    for step_images, step_labels in zip(start.images, start.labels):
        for image, label in zip(step_images, step_labels):
            members = tiny_data.train_images[tiny_data.train_labels == label]
            assert (members - image).flatten(1).abs().amax(1).min() < 1e-6


def test_stop_accuracy_ends_the_run_at_the_first_evaluation_that_reaches_it(tmp_path, tiny_data):
    settings = dict(TINY, epochs=15, eval_every=1, out=tmp_path)
    result = datadistill.distill(data=tiny_data, stop_accuracy=0.7, **settings)
    metrics = result.meta["metrics"]
    history = metrics["history"]
    assert metrics["epochs_run"] == history[-1]["epoch"] < 15
    assert history[-1]["accuracy_mean"] >= 0.7 > max(h["accuracy_mean"] for h in history[:-1])
    assert metrics["final"]["accuracy_mean"] == history[-1]["accuracy_mean"]
    # each evaluation is timed, and the wall clock between two evaluations' starts holds the
    # first of them (no timing ratio: the test must not depend on the machine's load)
    assert all(h["evaluation_s"] > 0 for h in history)
    assert all(later["elapsed_s"] - h["elapsed_s"] >= h["evaluation_s"]
               for h, later in zip(history, history[1:]))
    resumed = datadistill.distill(data=tiny_data, out=tmp_path, resume=True, progress=False)
    assert resumed.meta["metrics"]["epochs_run"] == metrics["epochs_run"] + 1  # goes on from there
    with pytest.raises(DistillError, match="add --eval-every"):
        datadistill.distill(data=tiny_data, **{**TINY, "stop_accuracy": 0.5})


def test_resume_refuses_changed_settings(tmp_path, tiny_data):
    datadistill.distill(data=tiny_data, out=tmp_path, **{**TINY, "epochs": 1})
    with pytest.raises(DistillError, match="cannot change steps"):
        datadistill.distill(data=tiny_data, out=tmp_path, resume=True, steps=5)


def test_artifacts_round_trip(tmp_path, tiny_data):
    result = datadistill.distill(data=tiny_data, out=tmp_path, init="fixed", **TINY)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "distilled.safetensors", "meta.json", "distilled.png", "checkpoint.safetensors"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = datadistill.load(tmp_path)
    assert torch.equal(loaded.images, result.images)
    assert torch.equal(loaded.lrs, result.lrs)
    assert loaded.init is not None and set(loaded.init) == set(result.init)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["config"]["init"] == "fixed"
    assert meta["dataset"]["name"] == "synthetic"
    assert meta["versions"]["torch"] == torch.__version__
    assert len(list(loaded.steps())) == 4


@pytest.mark.parametrize("keep_every", [0, 2])
def test_backgrad_run_equals_full_run_for_any_user_module(tiny_data, keep_every):
    full = datadistill.distill(data=tiny_data, module=TinyConvNet(), **TINY)
    backgrad = datadistill.distill(data=tiny_data, module=TinyConvNet(), backward="backgrad",
                                   backgrad_keep_every=keep_every, **TINY)
    assert backgrad.meta["model"]["class"] == "TinyConvNet"
    assert torch.allclose(backgrad.images, full.images, atol=1e-4)


def test_divergence_is_a_one_line_error(tiny_data):
    with pytest.raises(DistillError, match="diverged.*lower --lr"):
        datadistill.distill(data=tiny_data, **{**TINY, "distill_lr": 1e8})


def test_a_meta_iteration_with_a_non_finite_loss_is_skipped_and_the_run_goes_on(
        tiny_data, monkeypatch):
    """One net blowing up in one meta-iteration costs that iteration, not the run."""
    import sys

    from datadistill.backends import MetaGradient

    unroll_module = sys.modules["datadistill.methods.unroll"]
    choose = unroll_module.choose_meta_gradient
    calls = []

    def one_bad_iteration(*args, **kwargs):
        real = choose(*args, **kwargs)

        def run(*run_args, **run_kwargs):
            losses = real.run(*run_args, **run_kwargs)
            calls.append(1)
            return losses * float("nan") if len(calls) == 2 else losses

        return MetaGradient(real.name, run)

    monkeypatch.setattr(unroll_module, "choose_meta_gradient", one_bad_iteration)
    result = datadistill.distill(data=tiny_data, **{**TINY, "epochs": 2})
    assert len(calls) >= 3 and result.meta["metrics"]["nonfinite_iterations_skipped"] == 1
    assert torch.isfinite(result.images).all()


def test_ema_saves_the_moving_average_of_the_iterates(tiny_data):
    """One meta-iteration (the whole training set in one batch): the average with decay β is
    β × the start + (1 − β) × the one Adam step, for every learnable tensor."""
    one = dict(TINY, epochs=1, batch_size=10**6, labels="learned")
    stepped = datadistill.distill(data=tiny_data, **one)
    start = datadistill.distill(data=tiny_data, **{**one, "lr": 1e-30, "label_lr": 1e-30})
    averaged = datadistill.distill(data=tiny_data, ema=0.75, **one)
    assert not torch.allclose(stepped.images, start.images)
    torch.testing.assert_close(averaged.images, 0.75 * start.images + 0.25 * stepped.images)
    assert not torch.allclose(stepped.lrs, start.lrs)
    raw = [torch.log(torch.expm1(r.lrs)) for r in (start, stepped)]  # lrs pass a softplus
    torch.testing.assert_close(averaged.lrs, F.softplus(0.75 * raw[0] + 0.25 * raw[1]))
    assert not torch.allclose(stepped.labels, start.labels)  # label logits, through a softmax
    logits = [torch.log(r.labels) for r in (start, stepped)]
    torch.testing.assert_close(averaged.labels,
                               torch.softmax(0.75 * logits[0] + 0.25 * logits[1], -1))


def test_ema_run_resumes_exactly(tmp_path, tiny_data):
    """Also for a user's own module."""
    settings = dict(TINY, ema=0.9)
    whole = datadistill.distill(data=tiny_data, module=TinyConvNet(), **settings)
    datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                        **{**settings, "epochs": 2})
    resumed = datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                                  resume=True, epochs=4, progress=False)
    assert torch.equal(whole.images, resumed.images) and torch.equal(whole.lrs, resumed.lrs)
    plain = datadistill.distill(data=tiny_data, module=TinyConvNet(), **TINY)
    assert not torch.allclose(whole.images, plain.images)


# seed 1 at Adam lr 0.3 scores best on the held-out images at epoch 3 of 6
PICKS_EARLY = dict(TINY, epochs=6, eval_every=1, validation=24, seed=1, lr=0.3)


def test_validation_saves_and_tests_the_iterate_that_scored_best_on_held_out_images(tiny_data):
    whole = datadistill.distill(data=tiny_data, **PICKS_EARLY)
    metrics = whole.meta["metrics"]
    scores = [h["validation_accuracy"] for h in metrics["history"]]
    best = scores.index(max(scores)) + 1
    assert metrics["selected"] == {"epoch": best, "validation_accuracy": max(scores)}
    assert best < PICKS_EARLY["epochs"]  # the setting exercises an earlier pick than the last
    # a run stopped at that epoch ends on the iterate picked
    stopped = datadistill.distill(data=tiny_data, **{**PICKS_EARLY, "epochs": best})
    assert torch.equal(whole.images, stopped.images) and torch.equal(whole.lrs, stopped.lrs)
    assert metrics["final"] == {k: metrics["history"][best - 1][k] for k in metrics["final"]}
    last = datadistill.distill(data=tiny_data, **{**PICKS_EARLY, "eval_every": 6})
    assert last.meta["metrics"]["selected"]["epoch"] == 6  # one evaluation: the last iterate
    assert not torch.equal(whole.images, last.images)


def test_evaluation_scores_the_held_out_images_with_the_nets_it_tests(tiny_data):
    """One training of the evaluation nets serves the test split and the held-out images:
    the same scores as evaluating each set on its own."""
    module = TinyConvNet()
    fmodel, init = FunctionalModel(module), RandomInit(module)
    steps = schedule(tiny_data.train_images[:6].view(2, 3, 1, 4, 4),
                     tiny_data.train_labels[:6].view(2, 3), 0.1, 2)
    held_images, held_labels = tiny_data.train_images[6:60], tiny_data.train_labels[6:60]

    def evaluation(test_images, test_labels, also_test=None):
        return evaluate_steps(fmodel, init, steps, test_images, test_labels, nets=5,
                              generator=torch.Generator().manual_seed(2), nets_per_batch=2,
                              also_test=also_test)

    both = evaluation(tiny_data.test_images, tiny_data.test_labels, (held_images, held_labels))
    test_only = evaluation(tiny_data.test_images, tiny_data.test_labels)
    held_only = evaluation(held_images, held_labels)
    assert test_only.also is None
    assert torch.equal(both.after.confusion, test_only.after.confusion)
    assert torch.equal(both.also.confusion, held_only.after.confusion)
    assert torch.equal(both.also.losses, held_only.after.losses)
    assert not torch.equal(both.also.confusion.sum((1, 2)), both.after.confusion.sum((1, 2)))


def test_validation_picks_among_the_averaged_iterates_with_ema(tiny_data):
    settings = {**PICKS_EARLY, "ema": 0.5}
    whole = datadistill.distill(data=tiny_data, **settings)
    best = whole.meta["metrics"]["selected"]["epoch"]
    assert best < settings["epochs"]
    stopped = datadistill.distill(data=tiny_data, **{**settings, "epochs": best})
    assert torch.equal(whole.images, stopped.images) and torch.equal(whole.lrs, stopped.lrs)


def test_stop_accuracy_with_validation_stops_on_the_held_out_accuracy(tiny_data):
    """At 0.88 the test split is reached at epoch 2, the held-out images only at epoch 3."""
    result = datadistill.distill(data=tiny_data, **{**PICKS_EARLY, "stop_accuracy": 0.88})
    history = result.meta["metrics"]["history"]
    assert history[1]["accuracy_mean"] >= 0.88 > history[1]["validation_accuracy"]
    assert result.meta["metrics"]["epochs_run"] == 3
    assert history[2]["validation_accuracy"] >= 0.88


def test_validation_run_resumes_exactly(tmp_path, tiny_data):
    """The pick made before the checkpoint survives it; also for a user's own module."""
    whole = datadistill.distill(data=tiny_data, module=TinyConvNet(), **PICKS_EARLY)
    datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                        **{**PICKS_EARLY, "epochs": 5})
    resumed = datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                                  resume=True, epochs=6, progress=False)
    assert torch.equal(whole.images, resumed.images) and torch.equal(whole.lrs, resumed.lrs)
    assert whole.meta["metrics"]["selected"] == resumed.meta["metrics"]["selected"]
    assert resumed.meta["metrics"]["selected"]["epoch"] <= 5  # picked before the checkpoint


def test_bad_settings_are_one_line_errors(tiny_data):
    with pytest.raises(DistillError, match="--steps must be at least 1"):
        datadistill.distill(data=tiny_data, **{**TINY, "steps": 0})
    with pytest.raises(DistillError, match=r"--ema must lie in \[0, 1\)"):
        datadistill.distill(data=tiny_data, **{**TINY, "ema": 1.0})
    with pytest.raises(DistillError, match="--init must be one of"):
        datadistill.distill(data=tiny_data, **{**TINY, "init": "pretrained"})
    with pytest.raises(DistillError, match="--backgrad-keep-every must be 0"):
        datadistill.distill(data=tiny_data, **{**TINY, "backgrad_keep_every": -1})
    with pytest.raises(DistillError, match="unknown initialization scheme"):
        datadistill.distill(data=tiny_data, **{**TINY, "init_scheme": "zeros"})


def test_digits_end_to_end_beats_random_real():
    data = datadistill.load_dataset("digits")
    result = datadistill.distill(data=data, steps=5, distill_epochs=2, epochs=100, lr=0.05,
                                 eval_nets=10,
                                 progress=False, device="cpu")
    metrics = result.meta["metrics"]
    assert metrics["final"]["accuracy_mean"] > 0.8
    assert metrics["final"]["accuracy_mean"] > metrics["random_real"]["accuracy_mean"]


def test_synthetic_dataset_helper_is_learnable():
    """The test data the other tests distil: a plain net trained on it goes far above chance."""
    from .conftest import TinyConvNet

    data = make_dataset(classes=4)
    assert data.num_classes == 4 and data.image_shape == (1, 4, 4)
    torch.manual_seed(0)
    net = TinyConvNet(classes=4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(data.train_images), data.train_labels).backward()
        optimizer.step()
    accuracy = (net(data.test_images).argmax(1) == data.test_labels).float().mean()
    assert accuracy > 0.9  # chance is 0.25


def test_documented_plain_pytorch_training_loop(tmp_path, tiny_data):
    """The README's example: train an ordinary module on the loaded steps by hand."""
    import torch.nn.functional as F

    from datadistill.evaluate import test_nets, train_nets
    from datadistill.functional import FunctionalModel

    from .conftest import TinyConvNet

    datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                        **{**TINY, "epochs": 15})
    distilled = datadistill.load(tmp_path)
    net = datadistill.init_weights(TinyConvNet(), "xavier-normal", seed=1)
    fmodel = FunctionalModel(net)
    start = {k: v.detach().clone().unsqueeze(0) for k, v in net.named_parameters()}
    for x, y, lr in distilled.steps():
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= lr * p.grad
    by_hand = {k: v.detach().unsqueeze(0) for k, v in net.named_parameters()}
    by_engine = train_nets(fmodel, start, list(distilled.steps()))
    for k in by_hand:
        assert torch.allclose(by_hand[k], by_engine[k], atol=1e-5)
    test = (tiny_data.test_images, tiny_data.test_labels)
    assert test_nets(fmodel, by_hand, *test).mean > test_nets(fmodel, start, *test).mean + 0.2


def test_learned_labels_with_fewer_images_than_classes(tmp_path, tiny_data):
    """2 images per step for 3 classes, labels learned: the artifact stores soft labels (S, n,
    K) that moved from their start, and evaluate, show and the steps() API take them."""
    result = datadistill.distill(data=tiny_data, labels="learned", images_per_step=2,
                                 out=tmp_path, **TINY)
    assert result.images.shape == (2, 2, 1, 4, 4) and result.labels.shape == (2, 2, 3)
    assert torch.allclose(result.labels.sum(-1), torch.ones(2, 2))
    start = torch.tensor([[0, 1], [2, 0]])  # the classes go round from step to step
    assert torch.equal(result.labels.argmax(-1), start)
    assert not torch.allclose(result.labels.max(-1).values, torch.tensor(0.9))  # learned
    loaded = datadistill.load(tmp_path)
    assert torch.equal(loaded.labels, result.labels)
    x, y, lr = next(iter(loaded.steps()))
    assert y.shape == (2, 3) and torch.nn.functional.cross_entropy(torch.zeros(2, 3), y) > 0
    from datadistill.evaluate import evaluate
    from datadistill.plots import caption

    after = evaluate(tmp_path, nets=3, data=tiny_data, module=TinyConvNet())["after"]
    assert after["nets"] == 3 and 0 <= after["accuracy_mean"] <= 1
    assert caption(torch.tensor([0.1, 0.7, 0.2]), ("a", "b", "c")) == "b .70 c .20"


@pytest.mark.parametrize("labels", ["learned", "direct"])
def test_learned_labels_resume_equals_one_run(tmp_path, tiny_data, labels):
    settings = dict(TINY, labels=labels, image_init="kmeans")
    whole = datadistill.distill(data=tiny_data, **settings)
    datadistill.distill(data=tiny_data, out=tmp_path, **{**settings, "epochs": 2})
    resumed = datadistill.distill(data=tiny_data, out=tmp_path, resume=True, epochs=4,
                                  progress=False)
    assert torch.equal(whole.labels, resumed.labels)
    assert torch.equal(whole.images, resumed.images)


def test_init_from_starts_at_another_runs_last_iterate_with_another_model(tmp_path, tiny_data):
    """A run warm-started from another (a vanishing outer lr, so it barely moves) holds that
    run's images, labels and lrs, though it trains another model."""
    first = datadistill.distill(data=tiny_data, labels="learned", out=tmp_path, **TINY)
    warm = datadistill.distill(data=tiny_data, labels="learned", module=TinyConvNet(),
                               init_from=str(tmp_path), **{**TINY, "epochs": 1, "lr": 1e-12})
    assert torch.allclose(warm.images, first.images, atol=1e-6)
    assert torch.allclose(warm.labels, first.labels, atol=1e-6)
    assert torch.allclose(warm.lrs, first.lrs, atol=1e-6)
    assert warm.meta["config"]["init_from"] == str(tmp_path)
    cold = datadistill.distill(data=tiny_data, labels="learned", module=TinyConvNet(),
                               **{**TINY, "epochs": 1, "lr": 1e-12})
    assert not torch.allclose(cold.images, first.images, atol=1e-2)


@pytest.mark.parametrize("change, message", [
    (dict(images_per_class=1), "with --images-per-class 2;"),
    (dict(labels="fixed"), "--labels learned"),
    (dict(images_per_class=1, images_per_step=6),  # the same shapes, another class layout
     "with --images-per-class 2, --images-per-step 0;"),
    (dict(init_from="no-such-run"), "no checkpoint.safetensors there")])
def test_init_from_refuses_a_run_of_another_layout(tmp_path, tiny_data, change, message):
    datadistill.distill(data=tiny_data, labels="learned", images_per_class=2, out=tmp_path,
                        **TINY)
    settings = {**TINY, "labels": "learned", "images_per_class": 2, "init_from": str(tmp_path),
                **change}
    with pytest.raises(DistillError, match=message):
        datadistill.distill(data=tiny_data, **settings)


def test_backend_is_chosen_once_and_recorded(tiny_data):
    """Any user module runs in PyTorch; meta.json says so; asking for the compiled kernel
    where it cannot run is a one-line error before any work."""
    result = datadistill.distill(data=tiny_data, module=TinyConvNet(), **TINY)
    assert result.meta["backend"] == "pytorch"
    with pytest.raises(DistillError, match="--backend compiled runs only the registered LeNet"):
        datadistill.distill(data=tiny_data, module=TinyConvNet(), backend="compiled", **TINY)


@pytest.mark.parametrize("lr_per_step", [True, False], ids=["lr-per-step", "one-lr"])
def test_windowed_flat_set_with_minibatches_and_clipping_resumes_exactly(tmp_path, tiny_data,
                                                                         lr_per_step):
    """A flat set (one batch of 6 images), 8 inner steps with momentum on minibatches of 4,
    windows of 3 drawn anew each meta-iteration, clipping, one learned lr per step or one
    for all: an interrupted run resumes to the same result."""
    settings = dict(TINY, steps=1, images_per_class=2, distill_epochs=8, minibatch=4, window=3,
                    clip=1.5, labels="learned", momentum=0.5, lr_per_step=lr_per_step)
    whole = datadistill.distill(data=tiny_data, module=TinyConvNet(), **settings)
    assert whole.images.shape == (1, 6, 1, 4, 4) and whole.lrs.shape == (8,)
    assert whole.lrs.unique().numel() == (8 if lr_per_step else 1)
    assert not torch.allclose(whole.lrs, torch.full((8,), 0.02))  # learned, not the start
    datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                        **{**settings, "epochs": 2})
    resumed = datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                                  resume=True, epochs=4, progress=False)
    assert torch.equal(whole.images, resumed.images)
    assert torch.equal(whole.lrs, resumed.lrs)
    assert 0 <= resumed.meta["metrics"]["final"]["accuracy_mean"] <= 1


def test_dsa_in_distillation_changes_the_result_and_resumes_exactly(tmp_path, tiny_data,
                                                                    monkeypatch):
    """--dsa augments each inner step's images with draws from the run's generator, so an
    interrupted run resumes to the same images."""
    settings = dict(TINY, steps=1, images_per_class=2, distill_epochs=4, window=2, dsa=True)
    whole = datadistill.distill(data=tiny_data, module=TinyConvNet(), **settings)
    assert whole.meta["config"]["dsa"]
    with monkeypatch.context() as patch:  # the same random draws, the images left as they are
        patch.setattr(DSA, "__call__", lambda self, images, generator: images)
        unaugmented = datadistill.distill(data=tiny_data, module=TinyConvNet(), **settings)
    assert not torch.allclose(whole.images, unaugmented.images)
    datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                        **{**settings, "epochs": 2})
    resumed = datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                                  resume=True, epochs=4, progress=False)
    assert torch.equal(whole.images, resumed.images)


def test_clipping_holds_the_norm_to_a_multiple_of_its_running_mean():
    from datadistill.runstate import clip_gradient
    from datadistill.state import DistilledSteps

    steps = DistilledSteps(torch.zeros(1, 2, 1, 2, 2, requires_grad=True),
                           torch.tensor([[0, 1]]), torch.zeros(3, requires_grad=True))
    steps.images.grad, steps.raw_lrs.grad = torch.ones(1, 2, 1, 2, 2), torch.zeros(3)
    mean = clip_gradient(steps, 2.0, 0.0)  # the first norm starts the running mean
    assert mean == pytest.approx(8 ** 0.5)
    steps.images.grad = 10 * torch.ones(1, 2, 1, 2, 2)  # norm 10 sqrt(8): clipped to 2 means
    mean = clip_gradient(steps, 2.0, mean)
    assert float(steps.images.grad.norm()) == pytest.approx(2 * 8 ** 0.5)
    assert mean == pytest.approx(0.9 * 8 ** 0.5 + 0.1 * 2 * 8 ** 0.5)


def test_iterations_run_exactly_that_many_meta_iterations(tiny_data, monkeypatch):
    """--iterations counts meta-iterations whatever the data's size (here 3 an epoch)."""
    from datadistill.methods.unroll import Unroll

    calls = []
    real_loss = Unroll.loss
    monkeypatch.setattr(Unroll, "loss", lambda self, *a: calls.append(1) or real_loss(self, *a))
    result = datadistill.distill(data=tiny_data, iterations=5, **{**TINY, "epochs": 1})
    assert len(calls) == 5 and result.meta["metrics"]["epochs_run"] == 2
    assert result.meta["config"]["iterations"] == 5


def test_a_run_says_what_it_will_run_how_long_and_what_its_final_checks_are(tiny_data, capsys):
    datadistill.distill(data=tiny_data, **{**TINY, "progress": True})
    said = capsys.readouterr().out
    assert "unroll on synthetic: 12 meta-iterations to run (3 an epoch" in said
    assert "s a meta-iteration: about" in said and "for the 9 left" in said
    assert "final checks: 4 fresh nets on the set's steps and lrs" in said


def test_final_checks_none_skips_the_few_step_figures(tiny_data, capsys):
    result = datadistill.distill(data=tiny_data, final_checks="none", **{**TINY, "progress": True})
    assert "final" not in result.meta["metrics"] and "random_real" not in result.meta["metrics"]
    assert "final checks" not in capsys.readouterr().out


def test_final_checks_converge_scores_the_set_as_evaluate_does(tmp_path, capsys):
    data = make_dataset(n_train=96, classes=3, size=4)
    result = datadistill.distill(data=data, module=TinyConvNet(), final_checks="converge",
                                 out=tmp_path, **{**TINY, "progress": True, "eval_nets": 2})
    assert "2 fresh nets trained to convergence" in capsys.readouterr().out
    report = result.meta["metrics"]["converge"]
    assert report["protocol"] == "converge" and report["settings"]["epochs"] == 1000
    assert report["after"]["nets"] == 2 and report["model"] == "TinyConvNet"
    assert result.meta["metrics"]["final"] == report["after"]
    assert "random_real" not in result.meta["metrics"]
