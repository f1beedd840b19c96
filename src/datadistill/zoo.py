"""Ready-made distilled sets shipped with the package: ``zoo:NAME`` names one anywhere a run
folder is taken (``load``, ``evaluate``, ``export``).

Each set is an ordinary run folder under ``zoo_sets/NAME/``: ``distilled.safetensors``,
``meta.json`` (the settings that made it), ``evaluations/`` (its measured scores, each with
the command that measured it) and a ``card.json``: a one-line summary and a quick check
(evaluate flags, the accuracy they gave and a tolerance) that the tests rerun.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DistillError

PREFIX = "zoo:"
ROOT = Path(__file__).parent / "zoo_sets"
CARD_FILE = "card.json"


@dataclass(frozen=True)
class ZooSet:
    """One shipped set: its folder and its card."""

    name: str
    folder: Path
    card: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())


def names() -> list[str]:
    """The shipped sets' names, sorted."""
    if not ROOT.is_dir():
        return []
    return sorted(p.name for p in ROOT.iterdir() if (p / CARD_FILE).is_file())


def get(name: str) -> ZooSet:
    """The set ``name``, or a one-line error listing the sets."""
    if name not in names():
        raise DistillError(f"no zoo set {name!r}; `datadistill zoo` lists them: "
                           f"{', '.join(names()) or 'none shipped'}")
    folder = ROOT / name
    return ZooSet(name, folder, json.loads((folder / CARD_FILE).read_text()))


def catalogue() -> list[ZooSet]:
    """Every shipped set."""
    return [get(name) for name in names()]


def is_zoo(run: str | Path) -> bool:
    """Whether ``run`` names a zoo set (``zoo:NAME``)."""
    return str(run).startswith(PREFIX)


def resolve(run: str | Path) -> Path:
    """The folder of ``run``: a zoo set's for ``zoo:NAME``, else ``run`` itself."""
    return get(str(run)[len(PREFIX):]).folder if is_zoo(run) else Path(run)
