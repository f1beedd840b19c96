"""Seeds and devices."""
from __future__ import annotations

import hashlib
import os

import torch

from .errors import DistillError


def derive_seed(seed: int, purpose: str) -> int:
    """An independent seed per purpose (data order, inits, evaluation nets, ...)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded for one purpose."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":  # under torchrun, each process takes the GPU of its local rank
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DistillError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda asked for but CUDA is not available; use --device cpu")
    return device
