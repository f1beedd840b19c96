"""Sets as plain tensors: export, import (safetensors, .pt, DC's layout), renormalisation."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import datadistill
from datadistill.errors import DistillError
from datadistill.exchange import export_set, import_set

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


@pytest.mark.parametrize("layout", ["dict", "pair", "dc"])
def test_pt_files_of_tensors_are_read(layout, tmp_path):
    images, labels = torch.randn(6, 1, 4, 4), torch.arange(6) % 3
    obj = {"dict": {"images": images, "labels": labels}, "pair": (images, labels),
           "dc": {"data": [[images, labels]], "accs_all_exps": {}}}[layout]
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
