"""torch.distributed under torchrun: each rank's share of the nets, sums across ranks.

``torchrun --nproc-per-node N -m datadistill ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
``init_from_env`` joins the process group (nccl on CUDA, gloo on CPU). Without them every
helper here is the single-process identity, so the rest of the code never branches on it.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous part of ``n`` items (parts differ in size by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def sum_(self, tensor: Tensor) -> Tensor:
        """All-reduce (sum) in place; returns the tensor. NCCL gets a GPU copy of CPU tensors."""
        if self.size > 1:
            if dist.get_backend() == "nccl" and not tensor.is_cuda:
                on_gpu = tensor.cuda()
                dist.all_reduce(on_gpu)
                tensor.copy_(on_gpu)
            else:
                dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def current() -> World:
    """The world of the initialized process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_env() -> World:
    """Join the process group torchrun describes in the environment (once); else one process."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)
    return current()


def leave_process_group() -> None:
    """Destroy the open process group: a rank that exits with it open can abort in gloo.

    Garbage left in reference cycles is collected first, while the group still stands: freed
    at interpreter exit instead, it aborted about one two-rank run in twelve here.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
