"""Data files shipped inside installed Python packages (the offline datasets and encoders)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import DistillError


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(f"the Python package {package!r} is not installed; "
                           f"pip install {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0], *parts)
