"""Baselines: image layouts, the lr x epochs grid, k-NN, and artifacts that evaluate/show accept."""
from __future__ import annotations

import json

import pytest
import torch

from datadistill.baselines import IMAGE_BASELINES, baseline_images, knn_accuracy, run_baseline
from datadistill.baselines.run import METHODS
from datadistill.cli import main
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.models import build_model

from .conftest import make_dataset


@pytest.mark.parametrize("name", IMAGE_BASELINES.names())
def test_image_baselines_have_the_distilled_layout(name):
    data = make_dataset()
    images, labels = baseline_images(name, data, 2, 2, torch.Generator().manual_seed(0))
    assert images.shape == (2, 6, 1, 4, 4)
    assert torch.equal(labels, torch.tensor([[0, 0, 1, 1, 2, 2]] * 2))
    if name in ("random", "herding"):  # real images of the right class
        for img, label in zip(images.flatten(0, 1), labels.flatten()):
            same = (data.train_images == img).flatten(1).all(1)
            assert same.any() and (data.train_labels[same] == label).all()


def test_average_is_the_class_mean_and_herding_tracks_it():
    data = make_dataset()
    gen = torch.Generator().manual_seed(0)
    average, _ = baseline_images("average", data, 1, 1, gen)
    assert torch.allclose(average[0, 1], data.train_images[data.train_labels == 1].mean(0))
    herded, _ = baseline_images("herding", data, 4, 1, gen)
    randoms, _ = baseline_images("random", data, 4, 1, gen)
    mean0 = data.train_images[data.train_labels == 0].mean(0)
    assert (herded[:, 0].mean(0) - mean0).norm() < (randoms[:, 0].mean(0) - mean0).norm()


def test_knn_on_prototypes_is_accurate():
    data = make_dataset()
    assert knn_accuracy(data.train_images, data.train_labels, data.test_images,
                        data.test_labels, 1, "l2") > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reports_a_best_cell(method):
    data = make_dataset()
    module = build_model("mlp", (1, 4, 4), 3)
    images, labels, lrs, report = run_baseline(
        method, data, FunctionalModel(module), RandomInit(module), steps=2, images_per_class=1,
        learned_lrs=torch.full((4,), 0.05), nets=4, search_nets=2, sets=5)
    assert images.shape[:2] == (2, 3)
    assert 0 <= report["final"]["accuracy_mean"] <= 1
    if not method.startswith("knn"):
        assert len(report["grid"]) == 7 * 3  # learned + 6 constant lrs, x 3 epoch counts
        assert len(lrs) == 2 * report["best"]["epochs"]
        assert report["final"]["accuracy_mean"] > 0.5  # separable prototypes


def test_baseline_cli_writes_an_artifact_evaluate_accepts_and_reports_each_net(tmp_path, capsys):
    out = tmp_path / "kmeans"
    assert main(["baseline", "--method", "kmeans", "--dataset", "digits", "--steps", "2",
                 "--nets", "3", "--search-nets", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "distilled.png").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--nets", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["after"]["accuracy_mean"] > result["before"]["accuracy_mean"]
    assert len(result["after"]["per_class_accuracy"]) == 10
    per_net = result["after"]["per_net_accuracy"]
    assert len(per_net) == 3 and sum(per_net) / 3 == pytest.approx(result["after"]["accuracy_mean"])
    assert main(["evaluate", str(out), "--nets", "3"]) == 0
    worst = f"worst {100 * min(per_net):.2f}%"
    assert worst in capsys.readouterr().out


def test_a_flat_set_baseline_searches_inner_steps_around_its_t(tmp_path):
    """Per-step batches keep the paper's 1/3/5 passes; a flat set (one batch, T inner steps)
    is searched at T/4, T/2, T and 2T steps, so its best cell trains as long as the run."""
    from datadistill.evaluate import grid_epochs

    assert grid_epochs(10, 3) == grid_epochs(1, 3) == (1, 3, 5)
    assert grid_epochs(1, 200) == (50, 100, 200, 400)
    out = tmp_path / "herding"
    assert main(["baseline", "--method", "herding", "--dataset", "digits", "--steps", "1",
                 "--distill-epochs", "12", "--images-per-class", "2", "--nets", "2",
                 "--search-nets", "2", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "meta.json").read_text())["metrics"]["baseline"]
    assert sorted({row["epochs"] for row in report["grid"]}) == [3, 6, 12, 24]


def test_converge_baselines_write_what_evaluate_takes(tmp_path, capsys):
    """A k-means floor and the full-data ceiling under the converge protocol; the floor's
    artifact evaluates again under the same protocol to the same figure."""
    common = ["--protocol", "converge", "--epochs", "30", "--nets", "2", "--device", "cpu",
              "--json"]
    assert main(["baseline", "--method", "kmeans", "--steps", "1", "--images-per-class", "3",
                 "--dataset", "digits", "--out", str(tmp_path / "kmeans"), *common]) == 0
    floor = json.loads(capsys.readouterr().out)
    assert floor["images"] == 30 and floor["model"] == "mlp" and floor["after"]["nets"] == 2
    assert floor["runner"] == "pytorch"  # the fused kernel is ConvNet's
    assert len(floor["curve"]["train_loss"]) == 30
    assert main(["evaluate", str(tmp_path / "kmeans"), *common]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["after"]["accuracy_mean"] == floor["after"]["accuracy_mean"]
    plain = [a for a in common if a != "--json"]  # the printed report names the worst net
    assert main(["evaluate", str(tmp_path / "kmeans"), *plain]) == 0
    assert f"worst {100 * min(floor['after']['per_net_accuracy']):.2f}%" in capsys.readouterr().out
    assert main(["baseline", "--method", "full", "--dataset", "digits", "--out",
                 str(tmp_path / "full"), *common]) == 0
    ceiling = json.loads(capsys.readouterr().out)
    assert ceiling["images"] == 1437 and ceiling["after"]["accuracy_mean"] > 0.9
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["meta.json"]
