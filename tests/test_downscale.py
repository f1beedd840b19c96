"""--downscale F (IDC's multi-formation): F x F times as many images per class stored at 1/F
of the side, enlarged bilinearly whenever a net trains on them."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import datadistill
from datadistill.baselines.write import baseline_artifact
from datadistill.cli import main
from datadistill.converge import ConvergeSettings
from datadistill.resize import multi_formed, resize_images
from datadistill.errors import DistillError

from .conftest import TinyConvNet

TINY = dict(steps=1, images_per_class=1, distill_epochs=4, epochs=4, batch_size=32, lr=0.05,
            eval_nets=2, labels="learned", image_init="herding", progress=False, device="cpu")


def _rank(images: torch.Tensor) -> int:
    """The rank of the images as vectors (one row per image), to float32's precision."""
    return int(torch.linalg.matrix_rank(images.reshape(-1, images[0, 0].numel()).double(),
                                        rtol=1e-4))


def test_resize_keeps_full_size_images_and_is_differentiable():
    images = torch.randn(2, 3, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert resize_images(images, (6, 6)) is images
    assert resize_images(images, (3, 3)).shape == (2, 3, 1, 3, 3)
    assert multi_formed(images, 1) is images
    assert torch.autograd.gradcheck(lambda x: resize_images(resize_images(x, (3, 3)), (6, 6)),
                                    (images,))


def test_a_downscaled_run_learns_four_small_images_per_class_and_saves_them_enlarged(
        tmp_path, tiny_data):
    """12 images of 2x2 for 3 classes at 1 per class (the pixels of 3 images of 4x4); the
    artifact holds them enlarged to 4x4, so its 12 images span at most the 4 dimensions of
    bilinearly enlarged 2x2 images; the run, with a user module, resumes exactly."""
    whole = datadistill.distill(data=tiny_data, module=TinyConvNet(), downscale=2, **TINY)
    assert whole.images.shape == (1, 12, 1, 4, 4) and whole.labels.shape == (1, 12, 3)
    assert torch.equal(whole.labels.argmax(-1)[0], torch.arange(3).repeat_interleave(4))
    assert _rank(whole.images) <= 4
    plain = datadistill.distill(data=tiny_data, module=TinyConvNet(), images_per_class=4,
                                **{k: v for k, v in TINY.items() if k != "images_per_class"})
    assert _rank(plain.images) > 4  # full-size images are not so confined
    assert whole.meta["config"]["downscale"] == 2
    metrics = whole.meta["metrics"]
    assert 0 <= metrics["final"]["accuracy_mean"] <= 1 and "random_real" in metrics
    datadistill.distill(data=tiny_data, module=TinyConvNet(), downscale=2, out=tmp_path,
                        **{**TINY, "epochs": 2})
    resumed = datadistill.distill(data=tiny_data, module=TinyConvNet(), out=tmp_path,
                                  resume=True, epochs=4, progress=False)
    assert torch.equal(whole.images, resumed.images)
    assert torch.equal(datadistill.load(tmp_path).images, resumed.images)


def test_evaluate_and_export_take_the_enlarged_images(tmp_path):
    """A registered model on digits (8x8 stored as 4x4): the few-step and the converge
    protocols and the exchange export take the artifact as it is."""
    datadistill.distill(dataset="digits", downscale=2, out=tmp_path, **TINY)
    stored = datadistill.load(tmp_path)
    assert stored.images.shape == (1, 40, 1, 8, 8) and _rank(stored.images) <= 16
    few_step = datadistill.evaluate(tmp_path, nets=2)["after"]
    assert few_step["nets"] == 2 and few_step["accuracy_mean"] > 0.3
    converge = datadistill.evaluate_converge(tmp_path, nets=1, device="cpu",
                                             settings=ConvergeSettings(epochs=100, lr=0.05))
    assert converge["images"] == 40 and converge["after"]["accuracy_mean"] > 0.3
    exported = datadistill.export_set(tmp_path, tmp_path / "set.safetensors")
    assert exported["images"].shape == (40, 1, 8, 8) and exported["labels"].shape == (40, 10)


@pytest.fixture(scope="module")
def multi_formed_run(tmp_path_factory):
    """A --downscale 2 run on digits: 40 images of 4x4 enlarged to 8x8."""
    out = tmp_path_factory.mktemp("multi-formed-run")
    datadistill.distill(dataset="digits", downscale=2, out=out, **TINY)
    return out


def _assert_multi_formed_floor(folder, method: str) -> None:
    """Four images per class, each 4x4 enlarged to 8x8 (so all of rank <= 16), recorded."""
    floor = datadistill.load(folder)
    assert floor.images.shape == (1, 40, 1, 8, 8) and _rank(floor.images) <= 16
    assert torch.equal(floor.labels.reshape(-1).cpu(), torch.arange(10).repeat_interleave(4))
    assert floor.meta["config"]["downscale"] == 2 and floor.meta["baseline"] == method


@pytest.mark.parametrize("method", ["herding", "kmeans", "optimized", "knn-random"])
def test_few_step_floor_like_a_multi_formed_run_holds_four_enlarged_images_per_class(
        multi_formed_run, tmp_path, method):
    report = baseline_artifact(method, tmp_path / method, like=multi_formed_run, nets=2,
                               search_nets=2, sets=5)
    _assert_multi_formed_floor(tmp_path / method, method)
    assert report["final"]["accuracy_mean"] > 0.3


def test_few_step_floor_with_downscale_flag_holds_four_enlarged_images_per_class(tmp_path):
    assert main(["baseline", "--method", "herding", "--dataset", "digits", "--steps", "1",
                 "--images-per-class", "1", "--distill-epochs", "4", "--downscale", "2",
                 "--nets", "2", "--search-nets", "2", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    _assert_multi_formed_floor(tmp_path, "herding")


def test_multi_formed_converge_floor_holds_four_enlarged_real_images_per_class(tmp_path, capsys):
    assert main(["baseline", "--method", "herding", "--dataset", "digits", "--steps", "1",
                 "--images-per-class", "1", "--downscale", "2", "--protocol", "converge",
                 "--epochs", "100", "--lr", "0.05", "--nets", "1", "--device", "cpu", "--json",
                 "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 40 and report["after"]["accuracy_mean"] > 0.3
    floor = datadistill.load(tmp_path)
    assert floor.images.shape == (1, 40, 1, 8, 8) and _rank(floor.images) <= 16
    assert floor.meta["config"]["downscale"] == 2


def test_downscaling_other_data_than_images_is_refused(tiny_data):
    with pytest.raises(DistillError, match="holds audio data: drop --downscale"):
        datadistill.distill(data=replace(tiny_data, kind="audio"), downscale=2, **TINY)
