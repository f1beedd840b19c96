"""Shared by the result scripts: a marked block of a docs/results-*.md page, replaced in place."""
from __future__ import annotations

import re
from pathlib import Path


def write_block(results: Path, name: str, title: str, lines: list[str]) -> str:
    """Put ``lines`` between ``<!-- name:begin/end -->`` (appended under ``title`` the first time)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join([begin, *lines, end])
    text = results.read_text() if results.is_file() else "# Measured results\n"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## {title}\n\n{block}\n"
    results.write_text(text)
    return block


def percent(summary: dict, key: str = "accuracy") -> str:
    """``mean ± std`` in percent (just the mean for a single net)."""
    mean, std = 100 * summary[f"{key}_mean"], 100 * summary[f"{key}_std"]
    return f"{mean:.1f}" if summary.get("nets") == 1 else f"{mean:.1f} ± {std:.1f}"
