"""evaluate's figures beside the accuracy: majority class, hard labels, the random-real floor
(one definition), DD-Ranking's scores, --plain and the lr search on training images."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from datadistill import scorecard
from datadistill.cli import main
from datadistill.converge import ConvergeSettings
from datadistill.evaluate import ConvergeSetting, build_context
from datadistill.scores import (augmentation_robust_score, dd_ranking, label_robust_score,
                                majority_class_rate)

from .conftest import make_dataset

QUICK = ["--dataset", "digits", "--steps", "1", "--distill-epochs", "1", "--epochs", "1",
         "--eval-nets", "2", "--no-progress", "--device", "cpu"]
E, INV_E = math.e, math.exp(-1)


def test_majority_class_rate_of_an_imbalanced_split():
    assert majority_class_rate(torch.tensor([0, 0, 0, 1, 2, 0, 1, 0])) == pytest.approx(5 / 8)


def test_lrs_and_ars_against_hand_computed_values():
    # IOR 0.30, HLR 0.10: alpha = 0.5 * 0.3 - 0.5 * 0.1 = 0.1
    assert label_robust_score(0.3, 0.1) == pytest.approx((math.exp(0.1) - INV_E) / (E - INV_E))
    # gaps 0.2 (DSA) and 0.4 (none): beta = 0.3
    assert augmentation_robust_score(0.2, 0.4) == pytest.approx(
        (math.exp(0.3) - INV_E) / (E - INV_E))
    assert label_robust_score(0.0, 1.0, weight=0.0) == pytest.approx(0.0)  # the worst
    assert augmentation_robust_score(1.0, 1.0) == pytest.approx(1.0)  # the best
    scores = dd_ranking(0.8, 0.7, 0.5, 0.9, (0.2, 0.4))
    assert scores["ior"] == pytest.approx(0.3) and scores["hlr"] == pytest.approx(0.2)
    assert scores["lrs"] == pytest.approx(label_robust_score(0.3, 0.2))
    missing = dd_ranking(0.8, 0.7, 0.5, None, None)
    assert missing["lrs"] is None and "--full-data-accuracy" in missing["lrs_unavailable"]
    assert missing["ars"] is None and "without augmentation" in missing["ars_unavailable"]


def _setting(data, labels: torch.Tensor, images: torch.Tensor, epochs: int = 30):
    """A converge-protocol setting of a small MLP on ``images`` with ``labels``."""
    config = {"init": "random", "init_scheme": "default", "seed": 0}
    _, fmodel, init = build_context(config, data.name, "mlp", None, None, "cpu", data, None,
                                    None)
    settings = ConvergeSettings(epochs=epochs, lr=0.05, batch_size=32)
    return ConvergeSetting(data, fmodel, init, images, labels, 2, settings, False, "", 0, "mlp")


@pytest.fixture
def real_set():
    data = make_dataset(n_train=120, n_test=60)
    return data, data.train_images[:30], data.train_labels[:30]


def test_hard_labels_are_the_argmax_of_learned_labels(real_set):
    data, images, classes = real_set
    onehot = torch.nn.functional.one_hot(classes, 3).float()
    shifted = torch.nn.functional.one_hot((classes + 1) % 3, 3).float()
    right = scorecard.converge_extras(_setting(data, 0.6 * onehot + 0.4 * shifted, images),
                                      {"accuracy_mean": 1.0, "accuracy_std": 0.0, "nets": 2},
                                      scorecard.Scoring())
    wrong = scorecard.converge_extras(_setting(data, 0.4 * onehot + 0.6 * shifted, images),
                                      {"accuracy_mean": 1.0, "accuracy_std": 0.0, "nets": 2},
                                      scorecard.Scoring(full_data_accuracy=1.0))
    assert right["hard_labels"]["accuracy_mean"] > 0.8
    assert wrong["hard_labels"]["accuracy_mean"] < 0.2  # trained on the argmax: the next class
    assert wrong["scores"]["hlr"] == pytest.approx(1.0 - wrong["hard_labels"]["accuracy_mean"])
    assert right["random_real"]["images"] == 30 and "ars" in right["scores"]


def test_lr_search_never_reads_the_test_split(real_set):
    data, images, classes = real_set
    setting = _setting(data, classes, images, epochs=5)
    wrong_test = replace(data, test_labels=(data.test_labels + 1) % 3,
                         test_images=torch.zeros_like(data.test_images))
    found = scorecard.lr_search(setting)
    assert scorecard.lr_search(replace(setting, data=wrong_test)) == found
    assert found["chosen_lr"] in found["lrs"] and len(found["lrs"]) == len(scorecard.LR_FACTORS)
    held = scorecard.search_split(data, 0)
    assert all(any(torch.equal(x, t) for t in data.train_images) for x in held.test_images)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    assert main(["distill", "--out", str(root / "run"), *QUICK]) == 0
    return root


def test_plain_skips_the_extra_runs(digits_run, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("--plain drew the random-real floor")

    monkeypatch.setattr(scorecard, "random_real_set", refuse)
    assert main(["evaluate", str(digits_run / "run"), "--nets", "2", "--device", "cpu",
                 "--plain", "--no-save", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert 0 < record["majority_class_rate"] < 1 and record["wall_time_s"] > 0
    assert not {"hard_labels", "random_real", "scores"} & set(record)


def test_evaluate_stores_the_new_figures(digits_run, capsys):
    run = digits_run / "run"
    assert main(["evaluate", str(run), "--nets", "2", "--device", "cpu",
                 "--full-data-accuracy", "0.95"]) == 0
    out = capsys.readouterr().out
    assert "majority class:" in out and "random real:" in out and "LRS" in out
    record = json.loads((run / "evaluations" / "few-step.json").read_text())
    assert record["hard_labels"]["same_as_main"] and record["wall_time_s"] > 0
    scores = record["scores"]
    assert scores["hlr"] == pytest.approx(0.95 - record["after"]["accuracy_mean"])
    assert scores["ior"] == pytest.approx(record["after"]["accuracy_mean"]
                                          - record["random_real"]["accuracy_mean"])
    assert scores["ars"] is None and scores["lrs"] is not None
    assert main(["report", str(run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["lrs"] == pytest.approx(scores["lrs"])


def test_distill_and_baseline_share_one_floor(digits_run):
    run, out = digits_run / "run", digits_run / "floor"
    assert main(["baseline", "--method", "random", "--like", str(run), "--nets", "2",
                 "--out", str(out)]) == 0
    distill_floor = json.loads((run / "meta.json").read_text())["metrics"]["random_real"]
    baseline = json.loads((out / "meta.json").read_text())["metrics"]
    assert baseline["final"]["accuracy_mean"] == pytest.approx(distill_floor["accuracy_mean"])
    assert baseline["baseline"]["best"]["lr"] == distill_floor["lr"]
