"""Datasets: shipped data, torchvision files, and clear errors."""
from __future__ import annotations

import pytest
import torch

from datadistill import list_datasets, load_dataset
from datadistill.data import hold_out
from datadistill.errors import DistillError

from .conftest import make_dataset


def test_registry_lists_every_dataset():
    assert set(list_datasets()) >= {"mnist", "mnist-5k", "fashion-mnist", "cifar10", "digits"}


def test_mnist_5k_is_real_split_and_normalized():
    data = load_dataset("mnist-5k")
    assert data.train_images.shape == (4000, 1, 28, 28)
    assert data.test_images.shape == (1000, 1, 28, 28)
    assert data.num_classes == 10
    assert torch.bincount(data.train_labels).min() > 300  # every class is well represented
    # normalized with MNIST's statistics: the mean pixel maps near 0, std near 1
    assert abs(data.train_images.mean().item()) < 0.1
    assert abs(data.train_images.std().item() - 1) < 0.1
    again = load_dataset("mnist-5k")
    assert torch.equal(again.test_labels, data.test_labels)  # deterministic split


def test_digits_statistics_come_from_the_training_split():
    data = load_dataset("digits")
    assert data.train_images.shape == (1437, 1, 8, 8) and data.test_images.shape[0] == 360
    assert abs(data.train_images.mean().item()) < 1e-4
    assert data.denormalize(data.train_images[:5]).min() >= 0


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"),
                                         ("cifar10", "CIFAR10")])
def test_missing_files_name_the_files_and_the_place(tmp_path, name, folder):
    with pytest.raises(DistillError) as info:
        load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and folder in message and "--download" in message


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DistillError, match="unknown dataset 'imagenet'; choose one of: .*mnist-5k"):
        load_dataset("imagenet")


def test_full_mnist_from_shared_data(mnist_root):
    data = load_dataset("mnist", root=mnist_root)
    assert data.train_images.shape == (60000, 1, 28, 28)
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert data.default_model == "lenet"


def test_gzipped_idx_files_are_unpacked(tmp_path):
    """Fashion-MNIST as Debian ships it: gzipped IDX files, read after unpacking in place."""
    import gzip

    import numpy as np

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, array, code):
        header = bytes([0, 0, code, array.ndim]) + b"".join(
            int(n).to_bytes(4, "big") for n in array.shape)
        with gzip.open(path, "wb") as handle:
            handle.write(header + array.tobytes())

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 20)):
        idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 8)
        idx(raw / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8), 8)
    data = load_dataset("fashion-mnist", root=tmp_path)
    assert data.train_images.shape == (30, 1, 28, 28) and data.test_images.shape == (20, 1, 28, 28)
    assert data.class_names[0] == "T-shirt"


def test_usps_and_svhn_read_torchvision_files_written_here(tmp_path, monkeypatch):
    import bz2

    import torchvision

    import numpy as np
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for name, n in (("usps.bz2", 12), ("usps.t.bz2", 6)):  # libsvm lines, pixels in [-1, 1]
        lines = [f"{i % 10 + 1} " + " ".join(f"{j + 1}:{v:.3f}" for j, v in
                                              enumerate(rng.uniform(-1, 1, 256))) for i in range(n)]
        (tmp_path / name).write_bytes(bz2.compress("\n".join(lines).encode()))
    usps = load_dataset("usps", tmp_path)
    assert usps.train_images.shape == (12, 1, 28, 28) and usps.test_images.shape == (6, 1, 28, 28)
    assert usps.train_labels.tolist()[:3] == [0, 1, 2] and usps.mean == (0.1597,)
    for name, n in (("train_32x32.mat", 8), ("test_32x32.mat", 4)):
        savemat(tmp_path / name, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                  "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})  # 10 means 0
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)  # md5s
    svhn = load_dataset("svhn", tmp_path)
    assert svhn.train_images.shape == (8, 3, 32, 32) and svhn.test_labels.tolist() == [1, 2, 3, 4]
    assert svhn.default_model == "lenet"
    with pytest.raises(DistillError, match="USPS not found.*usps.bz2"):
        load_dataset("usps", tmp_path / "empty")


def test_digits28_is_a_second_digit_domain_in_mnist_shape():
    data = load_dataset("digits28")
    assert data.train_images.shape == (1437, 1, 28, 28) and data.default_model == "lenet"


def test_hold_out_sets_apart_training_examples_and_keeps_the_test_split():
    data = make_dataset()
    train, validation = hold_out(data, 24, torch.Generator().manual_seed(0))
    assert train.train_images.shape[0] == 72 and validation.test_images.shape[0] == 24
    original = data.train_images.flatten(1)

    def matches(images: torch.Tensor) -> torch.Tensor:  # (part, original): same image
        return (images.flatten(1)[:, None] == original[None]).all(-1)

    counts = matches(train.train_images).sum(0) + matches(validation.test_images).sum(0)
    assert (counts == 1).all()  # each training example lands in exactly one part
    for images, labels in ((validation.test_images, validation.test_labels),
                           (train.train_images, train.train_labels)):
        assert torch.equal(labels, data.train_labels[matches(images).int().argmax(1)])
    assert torch.equal(validation.train_images, validation.test_images)  # only the held-out
    again, _ = hold_out(data, 24, torch.Generator().manual_seed(0))
    assert torch.equal(again.train_images, train.train_images)  # same seed, same split
    assert torch.equal(train.test_images, data.test_images)
    assert torch.equal(train.test_labels, data.test_labels)
    with pytest.raises(DistillError, match="--validation must be below the 96 training"):
        hold_out(data, 96, torch.Generator())
