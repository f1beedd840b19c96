"""Distilled artifacts and checkpoints: safetensors + JSON, written atomically, no pickle."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ._version import __version__
from .data import Dataset
from .distributed import current
from .errors import DistillError
from .functional import Params
from .zoo import resolve

ARTIFACT_FILE = "distilled.safetensors"
META_FILE = "meta.json"
GRID_FILE = "distilled.png"
CHECKPOINT_FILE = "checkpoint.safetensors"
_META_KEY = "datadistill"
_DIGEST_KEY = "sha256"
_INIT_PREFIX = "init."


def run_meta(config: dict[str, Any], data: Dataset, model: dict[str, Any],
             metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The JSON record stored with every artifact: config, dataset, model, versions, metrics."""
    return {
        "format": "datadistill/1", **extra, "config": config,
        "dataset": {"name": data.name, "kind": data.kind, "mean": list(data.mean), "std": list(data.std),
                    "class_names": list(data.class_names), "image_shape": list(data.image_shape),
                    "train_size": int(data.train_images.shape[0]),
                    "test_size": int(data.test_images.shape[0])},
        "model": model,
        "versions": {"datadistill": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "metrics": metrics,
    }


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees either the old file or the whole new one.

    Under torchrun only rank 0 writes (every file of datadistill goes through here).
    """
    if not current().is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
    """Atomically write tensors (made contiguous, on CPU) with ``info`` as JSON metadata and
    a SHA-256 digest of both (safetensors itself has no checksum)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {_META_KEY: json.dumps(info)}
    digest = _digest(st_save(tensors, metadata=metadata))
    atomic_write(path, st_save(tensors, metadata={**metadata, _DIGEST_KEY: digest}))


def _digest(file: bytes) -> str:
    """SHA-256 of a safetensors file's tensor layout, datadistill metadata and tensor data
    (everything but the digest itself)."""
    header_len = int.from_bytes(file[:8], "little")
    header = json.loads(file[8:8 + header_len])
    metadata = header.pop("__metadata__", {})
    covered = json.dumps([header, metadata.get(_META_KEY)], sort_keys=True).encode()
    return hashlib.sha256(covered + file[8 + header_len:]).hexdigest()


def load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by ``save_tensors``; a damaged file gives a one-line error."""
    if not path.is_file():
        raise DistillError(f"no {path.name} in {path.parent}: pass the --out folder of a "
                           "distillation run")
    data = path.read_bytes()
    damaged = f"{path} is damaged or not a datadistill file"
    try:
        tensors = st_load(data)
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        metadata = header["__metadata__"]
        info = json.loads(metadata[_META_KEY])
        digest = _digest(data)
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise DistillError(f"{damaged} ({exc}); re-run the command that wrote it") from None
    stored = metadata.get(_DIGEST_KEY)  # files written before digests were stored have none
    if stored is not None and digest != stored:
        raise DistillError(f"{damaged}: its contents do not match the stored SHA-256 digest; "
                           "re-run the command that wrote it")
    return tensors, info


def check_finite(tensors: dict[str, Tensor], source: str | Path, fix: str) -> None:
    """Refuse NaN or infinite values in the floating-point tensors; ``fix`` ends the line."""
    bad = [name for name, tensor in tensors.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise DistillError(f"{source}: {', '.join(bad)} hold NaN or infinite values; {fix}")


def after_saving(metrics: dict[str, Any], name: str, make: Callable[[], Any]) -> None:
    """``metrics[name] = make()``; a failure is one warning line (the artifact is written)."""
    try:
        value = make()
    except Exception as exc:  # noqa: BLE001 (a finished run is never lost to a report)
        if current().size > 1:  # the other ranks would wait in a collective: stop them all
            raise
        print(f"datadistill: warning: {name.replace('_', ' ')} failed ({type(exc).__name__}: "
              f"{exc}); the distilled artifact is saved", file=sys.stderr)
        metrics.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"
        return
    if value is not None:
        metrics[name] = value


@dataclass
class Distilled:
    """Distilled data: T = len(lrs) inner steps, step t uses images[t % S] with lrs[t].

    images: (S, n, C, H, W) in the dataset's normalized space; labels: (S, n);
    lrs: (T,) learning rates; init: the fixed initial weights when distilled for one.
    """

    images: Tensor
    labels: Tensor
    lrs: Tensor
    init: Params | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return self.lrs.shape[0]

    def steps(self) -> Iterator[tuple[Tensor, Tensor, float]]:
        """(images, labels, lr) for every inner GD step, in training order."""
        for t in range(self.num_steps):
            s = t % self.images.shape[0]
            yield self.images[s], self.labels[s], float(self.lrs[t])

    def save(self, out_dir: str | Path) -> None:
        """Write ``distilled.safetensors`` and ``meta.json`` (each atomically) into ``out_dir``."""
        out = Path(out_dir)
        tensors = {"images": self.images, "labels": self.labels, "lrs": self.lrs}
        for k, v in (self.init or {}).items():
            tensors[_INIT_PREFIX + k] = v
        save_tensors(out / ARTIFACT_FILE, tensors, self.meta)
        atomic_write(out / META_FILE, (json.dumps(self.meta, indent=2) + "\n").encode())


def load(path: str | Path) -> Distilled:
    """Load distilled data from a run folder (or its ``distilled.safetensors``, or a shipped
    set: ``zoo:NAME``)."""
    path = resolve(path)
    file = path / ARTIFACT_FILE if path.is_dir() or not path.suffix else path
    tensors, meta = load_tensors(file)
    missing = {"images", "labels", "lrs"} - set(tensors)
    if missing:
        raise DistillError(f"{file} lacks {', '.join(sorted(missing))}; re-run the distillation")
    check_finite(tensors, file, "re-run the command that wrote it")
    init = {k[len(_INIT_PREFIX):]: v for k, v in tensors.items() if k.startswith(_INIT_PREFIX)}
    return Distilled(tensors["images"], tensors["labels"], tensors["lrs"], init or None, meta)
