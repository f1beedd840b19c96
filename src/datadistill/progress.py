"""Progress of long phases: one tqdm bar per phase, shown by rank 0 on a terminal only."""
from __future__ import annotations

from tqdm import tqdm

from .distributed import current


def phase_bar(total: int, description: str, unit: str = "it") -> tqdm:
    """A bar of ``total`` units naming its phase; off on other ranks and where stderr is not a
    terminal (tqdm's ``disable=None``), so logs, pipes and tests see none."""
    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, leave=False,
                disable=None if current().is_main else True)
