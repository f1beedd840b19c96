"""Compiled CPU fast paths, built at first use with the system's C compiler.

LeNet for N nets on shared images (``lenet.c``, wrapped by ``lenet.py``), used by the
meta-gradient and by evaluation; ConvNet's instance norm -> ReLU -> 2x2 average pool in one pass
(``normpool.c``, wrapped by ``normpool.py``), used by the converge protocol's held-out nets.
A compiler without OpenMP (Apple clang) builds them single-threaded, one without
``-march=native`` for the generic CPU; where no compiler works, callers fall back to PyTorch.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

# the builds tried in order, each cached under its own key: the last needs only a C compiler
BUILDS = (("-O3", "-march=native", "-fopenmp"), ("-O3", "-march=native"), ("-O3",))
LINK = ("-shared", "-fPIC")


# argument types of the kernels' C functions
POINTER, INT64, INT, FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


def float32_on_cpu(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is float32 on the CPU: what the compiled kernels take."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def call(library: str, name: str, argtypes: Sequence[Any], *args: Any) -> None:
    """Call the function ``name`` of ``kernels/<library>.c`` (built: ``load`` returned it):
    tensors go as pointers, None as NULL; the thread count comes last."""
    function = _function(load(library), name, tuple(argtypes))
    function(*(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args),
             torch.get_num_threads())


@lru_cache(maxsize=None)
def _function(library: ctypes.CDLL, name: str, argtypes: tuple[Any, ...]) -> Callable[..., None]:
    """The C function ``name`` with its argument types."""
    function = getattr(library, name)
    function.argtypes, function.restype = list(argtypes), None
    return function


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$DATADISTILL_CACHE`` or ``~/.cache/datadistill``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "datadistill"
    return Path(os.environ.get("DATADISTILL_CACHE", default))


def _machine_key() -> str:
    """-march=native code runs only on this kind of CPU: the cache key names it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def load(name: str) -> ctypes.CDLL | None:
    """The compiled library of ``kernels/<name>.c``, compiled once per source, flags and CPU,
    or None (with one warning) if no C compiler works, or if the environment sets
    ``DATADISTILL_NO_KERNELS`` to anything but empty or ``0`` (e.g. ``1``)."""
    off = os.environ.get("DATADISTILL_NO_KERNELS", "") not in ("", "0")
    return None if off else _compiled(name)


@lru_cache(maxsize=None)
def _compiled(name: str) -> ctypes.CDLL | None:
    """The first of ``BUILDS`` already in the cache, else the first that compiles."""
    source = Path(__file__).with_name(f"{name}.c")
    compiler = os.environ.get("CC", "cc")
    libraries = [library_path(name, source, compiler, flags) for flags in BUILDS]
    library = next((lib for lib in libraries if lib.exists()), None)
    errors = []
    for flags, candidate in zip(BUILDS, libraries):
        if library is not None:
            break
        try:
            _build(compiler, flags, source, candidate)
            library = candidate
        except (OSError, subprocess.SubprocessError) as error:
            errors.append(_reason(error))
    if library is None:
        _warn(f"could not compile the {name} kernel with {compiler} ({errors[-1]})")
        return None
    try:
        return ctypes.CDLL(str(library))
    except OSError as error:
        _warn(f"could not load the compiled {name} kernel {library} ({error})")
        return None


def library_path(name: str, source: Path, compiler: str, flags: tuple[str, ...]) -> Path:
    """Where a build is cached: keyed by the source, compiler, flags and CPU features."""
    key = hashlib.sha256(
        f"{source.read_text()}{compiler}{flags}{LINK}{_machine_key()}".encode()).hexdigest()
    return cache_dir() / f"{name}-{key[:16]}.so"


def _build(compiler: str, flags: tuple[str, ...], source: Path, library: Path) -> None:
    """Compile ``source`` into ``library``, atomically (a concurrent reader sees all or
    nothing)."""
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        subprocess.run([compiler, *flags, *LINK, str(source), "-o", str(built), "-lm"],
                       check=True, capture_output=True, text=True, timeout=300)
        os.replace(built, library)


def _reason(error: Exception) -> str:
    """The last line of a failed compiler's output, else the error itself."""
    output = getattr(error, "stderr", None) or ""
    if isinstance(output, bytes):  # TimeoutExpired keeps the raw bytes
        output = output.decode(errors="replace")
    return output.strip().splitlines()[-1] if output.strip() else str(error)


def _warn(problem: str) -> None:
    warnings.warn(f"datadistill: {problem}; using plain PyTorch instead (slower); set "
                  "DATADISTILL_NO_KERNELS=1 to skip the kernels", RuntimeWarning, stacklevel=4)
