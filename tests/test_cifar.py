"""The CIFAR-10 path: torchvision's file format, augmentation, AlexCifarNet end to end."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision

import datadistill
from datadistill.data import crop_flip


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A tiny dataset in CIFAR-10's python format (torchvision's checksums patched out)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, (10, 3072))

    def batch(n: int) -> dict:
        labels = [i % 10 for i in range(n)]
        noise = rng.integers(-40, 40, (n, 3072))
        data = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        return {"data": data, "labels": labels}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump(batch(40), handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, handle)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    return tmp_path


def test_cifar10_loads_from_torchvision_files(cifar_root):
    data = datadistill.load_dataset("cifar10", root=cifar_root)
    assert data.train_images.shape == (200, 3, 32, 32) and data.test_images.shape == (40, 3, 32, 32)
    assert data.augment and data.default_model == "alexcifarnet"


def test_crop_flip_moves_pixels_but_keeps_them_real():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    for i in range(2):  # every output pixel comes from the same image and channel
        for c in range(3):
            assert torch.isin(out[i, c], images[i, c]).all()
    # without padding a crop is the whole image, flipped or not
    plain = crop_flip(images, torch.Generator().manual_seed(1), pad=0)
    for i in range(2):
        assert torch.equal(plain[i], images[i]) or torch.equal(plain[i], images[i].flip(-1))


def test_alexcifarnet_distills_end_to_end(cifar_root, tmp_path):
    result = datadistill.distill(dataset="cifar10", data_root=str(cifar_root), steps=1,
                                 distill_epochs=1, epochs=2, batch_size=64, eval_nets=2,
                                 distill_lr=0.001, progress=False, device="cpu",
                                 out=tmp_path / "run")
    assert result.images.shape == (1, 10, 3, 32, 32)
    assert result.meta["model"]["class"] == "AlexCifarNet"
    assert (tmp_path / "run" / "distilled.png").is_file()
