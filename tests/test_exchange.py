"""Sets as plain tensors: export, import (safetensors, .pt, DC's and MTT's layouts),
renormalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import datadistill
from datadistill.errors import DistillError
from datadistill.data import Dataset
from datadistill.exchange import PUBLISHED_STATS, export_set, import_set

from .conftest import make_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    datadistill.distill(data=make_dataset(), steps=2, distill_epochs=1, epochs=1, eval_nets=2,
                        progress=False, out=out)
    return out


def test_export_then_import_gives_the_same_set(run, tmp_path):
    exported = export_set(run, tmp_path / "set.safetensors")
    assert set(load_file(tmp_path / "set.safetensors")) == {"images", "labels", "mean", "std", "lrs"}
    assert exported["images"].shape == (6, 1, 4, 4) and exported["labels"].shape == (6,)
    back = import_set(tmp_path / "set.safetensors", "synthetic", tmp_path / "imported",
                      model="mlp", data=make_dataset())
    original = datadistill.load(run)
    assert torch.equal(back.images, original.images)  # the step layout is kept
    assert torch.equal(back.labels, original.labels) and torch.equal(back.lrs, original.lrs)
    assert datadistill.load(tmp_path / "imported").meta["imported"].endswith("set.safetensors")


@pytest.mark.parametrize("layout", ["dict", "pair"])
def test_pt_files_of_tensors_are_read(layout, tmp_path):
    images, labels = torch.randn(6, 1, 4, 4), torch.arange(6) % 3
    obj = {"dict": {"images": images, "labels": labels}, "pair": (images, labels)}[layout]
    torch.save(obj, tmp_path / "set.pt")
    back = import_set(tmp_path / "set.pt", "synthetic", tmp_path / "run", model="mlp",
                      data=make_dataset())
    assert torch.equal(back.images[0], images) and torch.equal(back.labels[0], labels)
    assert back.num_steps == 0  # no lrs: the converge protocol evaluates it


def test_images_in_another_normalisation_are_moved_into_the_dataset_s(tmp_path):
    pixels = torch.rand(3, 1, 4, 4)
    save_file({"images": (pixels - 0.5) / 0.25, "labels": torch.arange(3),
               "mean": torch.tensor([0.5]), "std": torch.tensor([0.25])}, tmp_path / "s.safetensors")
    data = make_dataset()  # mean 0, std 1: normalised images are the pixels
    back = import_set(tmp_path / "s.safetensors", "synthetic", tmp_path / "run", model="mlp", data=data)
    torch.testing.assert_close(back.images[0], pixels)


def test_pickled_objects_and_bad_layouts_are_refused(tmp_path):
    torch.save({"images": torch.randn(2, 1, 4, 4), "labels": torch.arange(2),
                "extra": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(DistillError, match="cannot be read as a set"):
        import_set(tmp_path / "pickled.pt", "synthetic", tmp_path / "a", data=make_dataset())
    save_file({"images": torch.randn(2, 1, 4, 4)}, tmp_path / "nolabels.safetensors")
    with pytest.raises(DistillError, match="has no labels tensor"):
        import_set(tmp_path / "nolabels.safetensors", "synthetic", tmp_path / "b", data=make_dataset())
    save_file({"images": torch.randn(2, 1, 5, 5), "labels": torch.arange(2)}, tmp_path / "s.safetensors")
    with pytest.raises(DistillError, match="pass the --dataset the set was made for"):
        import_set(tmp_path / "s.safetensors", "synthetic", tmp_path / "c", data=make_dataset())
    assert not any((tmp_path / d).exists() for d in "abc")


def _as_mnist(data: Dataset) -> Dataset:
    """The synthetic set under MNIST's name, with its own normalisation (mean 0.5, std 0.25)."""
    return Dataset("mnist", data.train_images, data.train_labels, data.test_images,
                   data.test_labels, (0.5,), (0.25,), data.class_names, "mlp")


def _from_published(images: torch.Tensor) -> torch.Tensor:
    """Images in DC's/MTT's MNIST normalisation (0.1307, 0.3081) moved into ``_as_mnist``'s."""
    return (images * 0.3081 + 0.1307 - 0.5) / 0.25


def test_dc_results_file_is_read_and_denormalised(tmp_path):
    """DC/DSA/DM's main.py: torch.save({'data': [[image_syn, label_syn], ...] per experiment,
    'accs_all_exps': {model: [NumPy float64, ...]}}, 'res_DC_MNIST_ConvNet_1ipc.pt')."""
    assert PUBLISHED_STATS["mnist"] == ((0.1307,), (0.3081,))  # DC's utils.py get_dataset
    images, labels = torch.randn(6, 1, 4, 4), torch.arange(6) % 3
    torch.save({"data": [[images, labels], [images + 1, labels]],
                "accs_all_exps": {"ConvNet": [np.float64(0.91), np.float64(0.9)]}},
               tmp_path / "res_DC_MNIST_ConvNet_2ipc.pt")
    back = import_set(tmp_path / "res_DC_MNIST_ConvNet_2ipc.pt", "mnist", tmp_path / "run",
                      model="mlp", data=_as_mnist(make_dataset()))
    torch.testing.assert_close(back.images[0], _from_published(images))  # the first experiment
    assert torch.equal(back.labels[0], labels) and back.meta["imported_layout"] == "dc"


@pytest.mark.parametrize("zca", [False, True])
def test_mtt_images_and_labels_files_are_read(zca, tmp_path):
    """MTT's distill.py: torch.save(image_syn, 'images_best.pt') and torch.save(label_syn,
    'labels_best.pt'); with --zca also 'images_zca_<it>.pt', the whitening undone (pixels)."""
    images, labels = torch.randn(6, 1, 4, 4), torch.arange(6) % 3
    name = "images_zca_500.pt" if zca else "images_best.pt"
    torch.save(images, tmp_path / name)
    torch.save(labels, tmp_path / ("labels_500.pt" if zca else "labels_best.pt"))
    back = import_set(tmp_path / name, "mnist", tmp_path / "run", model="mlp",
                      data=_as_mnist(make_dataset()))
    expected = (images - 0.5) / 0.25 if zca else _from_published(images)
    torch.testing.assert_close(back.images[0], expected)
    assert torch.equal(back.labels[0], labels) and back.num_steps == 0


@pytest.mark.parametrize("obj,found", [
    ({"weights": torch.zeros(2)}, "holds a dict of 'weights'; a .pt set is a dict with images"),
    ([torch.zeros(2), torch.zeros(2), torch.zeros(2)], "holds a list of 3 (Tensor)"),
    ({"data": [[torch.zeros(2)]]}, "holds a list of 1 (Tensor)"),
    (torch.zeros(2, 1, 4, 4), "holds a tensor (2, 1, 4, 4) and no labels_<it>.pt lies beside"),
])
def test_pt_files_of_other_structures_are_named_with_the_accepted_layouts(obj, found, tmp_path):
    torch.save(obj, tmp_path / "set.pt")
    with pytest.raises(DistillError, match=found.replace("(", r"\(").replace(")", r"\)")) as err:
        import_set(tmp_path / "set.pt", "synthetic", tmp_path / "run", data=make_dataset())
    assert "MTT's images_<it>.pt beside labels_<it>.pt" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_foreign_set_of_a_dataset_without_published_statistics_is_refused(tmp_path):
    torch.save({"data": [[torch.randn(3, 1, 4, 4), torch.arange(3)]]}, tmp_path / "res.pt")
    with pytest.raises(DistillError, match="is a DC set; the normalisation of 'synthetic' "
                                           "there is not known here"):
        import_set(tmp_path / "res.pt", "synthetic", tmp_path / "run", data=make_dataset())
