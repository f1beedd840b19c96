"""Run folders: a finished run is never replaced by accident, and two runs never share one.

Every command that writes a run folder passes through ``claim`` (``writes_run_folder``
wraps the function that does the writing). It refuses a folder that holds a result unless
told ``resume`` (continue it) or ``overwrite`` (replace it), and holds ``.lock`` in the
folder until the command ends, so a second process refuses. With ``overwrite`` the new run
is written into ``.overwrite`` inside the folder and replaces the old files only once it is
complete. Under torchrun rank 0 alone takes the lock; the other ranks share its verdict.
"""
from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from .distributed import current
from .errors import DistillError

# the files artifacts.py and pools.py write: a folder holding one of them holds a result
RESULT_FILES = ("meta.json", "distilled.safetensors", "checkpoint.safetensors",
                "manifest.json", "pool.safetensors")
LOCK_FILE = ".lock"
STAGING = ".overwrite"  # an --overwrite run's files until they replace the old ones
REPLACED = ".replaced"  # the old files while they are swapped out

F = TypeVar("F", bound=Callable[..., Any])


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """Refuse an output path that cannot become a run folder, before any work is done."""
    if out.exists() and not out.is_dir():
        raise DistillError(f"{flag} {out} is a file, not a folder; choose another {flag}")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DistillError(f"cannot write into {parent}; choose another {flag}")


def writes_run_folder(function: F) -> F:
    """Run ``function(..., out=..., ...)`` under ``claim(out)``; the wrapper also takes
    ``overwrite=False`` (and reads the function's own ``resume``, if it has one)."""
    signature = inspect.signature(function)
    resumable = "resume" in signature.parameters

    @functools.wraps(function)
    def wrapper(*args: Any, overwrite: bool = False, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("out") is None:
            return function(*args, **kwargs)
        resume = bool(bound.arguments.get("resume", False))
        with claim(Path(bound.arguments["out"]), resume, overwrite, resumable) as folder:
            bound.arguments["out"] = folder
            return function(*bound.args, **bound.kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def claim(out: Path, resume: bool = False, overwrite: bool = False,
          resumable: bool = False) -> Iterator[Path]:
    """Lock ``out`` for this run and yield the folder to write into (``out``, or its staging
    folder under ``overwrite`` when it holds a result); released however the run ends."""
    if resume and overwrite:
        raise DistillError("--resume continues the run in --out and --overwrite replaces it; "
                           "pass one of them")
    world = current()
    refused, staged, lock, old = None, False, None, []
    created = not out.exists()
    if world.is_main:
        try:
            check_out_folder(out)
            out.mkdir(parents=True, exist_ok=True)
            lock = _lock(out)
            staged = _check_result(out, resume, overwrite, resumable)
            old = _entries(out)
        except DistillError as exc:
            refused = exc
    if world.size > 1:  # every rank refuses alike; the others learn where rank 0 writes
        verdict = world.sum_(torch.tensor([refused is not None, staged], dtype=torch.int64))
        if verdict[0] and refused is None:
            refused = DistillError(f"--out {out} is refused (rank 0 says why)")
        staged = bool(verdict[1])
    folder = out / STAGING if staged else out
    try:
        if refused is not None:
            raise refused
        if world.is_main and staged:
            folder.mkdir()
        yield folder
        if world.is_main and staged:
            _swap_in(out, old)
    finally:
        if world.is_main:
            _release(out, lock, created)


def _check_result(out: Path, resume: bool, overwrite: bool, resumable: bool) -> bool:
    """Refuse a folder holding a result unless resumed or overwritten; whether to stage."""
    for leftover in (STAGING, REPLACED):  # a killed run's (this process holds the lock)
        shutil.rmtree(out / leftover, ignore_errors=True)
    for unfinished in out.glob(".*.tmp"):  # atomic writes a killed run left half-done
        unfinished.unlink()
    result = next((name for name in RESULT_FILES if (out / name).exists()), None)
    if result is None or resume:
        return False
    if not overwrite:
        other = "--resume to continue it" if resumable else "choose another --out"
        raise DistillError(f"--out {out} already holds a run ({result}); pass --overwrite to "
                           f"replace it, or {other}")
    return True


def _entries(folder: Path) -> list[str]:
    """The folder's visible entries (its hidden lock, staging and temporary files aside)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _release(out: Path, lock: int | None, created: bool) -> None:
    """Drop an unfinished staging folder, free the lock, and remove a folder this run
    created and left empty."""
    if lock is not None:
        shutil.rmtree(out / STAGING, ignore_errors=True)
        (out / LOCK_FILE).unlink(missing_ok=True)  # before closing: see _lock's inode check
        os.close(lock)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _swap_in(out: Path, old: list[str]) -> None:
    """Move the old run's entries aside, the staged ones in, then delete the old ones."""
    aside = out / REPLACED
    aside.mkdir()
    for name in old:
        os.replace(out / name, aside / name)
    for entry in sorted((out / STAGING).iterdir()):
        os.replace(entry, out / entry.name)
    shutil.rmtree(aside)


def _lock(out: Path) -> int:
    """Hold ``out/.lock`` (an flock the kernel frees when the process dies, even by kill -9)
    with this process's pid and host; refuse if a live process holds it."""
    path = out / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DistillError(f"--out {out} is being written by {_describe(holder)}; wait for "
                               "it to end or choose another --out") from None
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # else its holder released it (unlinked) meanwhile: take the new one
            break
        os.close(fd)
    holder = _read_holder(fd)
    if holder and _alive_here(holder):  # a filesystem that ignores flock: pid and host tell
        os.close(fd)
        raise DistillError(f"--out {out} is being written by {_describe(holder)}; wait for "
                           "it to end or choose another --out")
    if holder:
        print(f"datadistill: warning: took over {path} from {_describe(holder)}, which is no "
              "longer running", file=sys.stderr)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    return fd


def _read_holder(fd: int) -> dict[str, Any]:
    """The pid, host and start time recorded in a lock file ({} if none or unreadable)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the holder is another live process on this host."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) \
            or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    """'pid 123 on host h since 2024-01-01 12:00' from a lock file's record."""
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since}"
