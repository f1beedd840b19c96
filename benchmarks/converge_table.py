"""The converge-protocol table of docs/results-converge.md, from the JSON reports of a folder of runs.

    .venv/bin/python benchmarks/converge_table.py runs/conv
    .venv/bin/python benchmarks/converge_table.py runs/conv-ours --block converge-ours

Reads every ``NAME.json`` that ``datadistill baseline|evaluate --protocol converge --json``
wrote into the folder and the wall times in its ``log.txt`` (lines ``NAME rc=0 wall=Ns``),
and puts one row per report into the ``converge`` block of docs/results-converge.md (or ``--block``),
ordered by dataset, number of images, model and name (not by file times, which a copy changes).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import percent, write_block  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results-converge.md"


def rows(folder: Path) -> list[str]:
    walls = dict(re.findall(r"^(\S+) rc=0 wall=(\d+)s", (folder / "log.txt").read_text(), re.M))
    reports = []
    for path in folder.glob("*.json"):
        text = path.read_text().strip()
        if text and path.stem in walls:
            reports.append((path, json.loads(text)))
    reports.sort(key=lambda item: (item[1]["dataset"], item[1]["images"], item[1]["model"],
                                   item[0].stem))
    out = []
    for path, report in reports:
        s = report["settings"]
        dsa = "DSA" if report["dsa"] else "none"
        out.append(f"| `{path.stem}` | {report['dataset']} | {report['images']} | "
                   f"{report['model']} | {s['epochs']} | {dsa} | {report['after']['nets']} | "
                   f"**{percent(report['after'])}** | {walls[path.stem]} s |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--block", default="converge", help="the block of docs/results-converge.md")
    args = parser.parse_args()
    lines = ["| report | dataset | images | model | epochs | augmentation | nets | "
             "accuracy (%) | wall |", "|---|---|---|---|---|---|---|---|---|", *rows(args.folder)]
    print(write_block(RESULTS, args.block, "The converge protocol: ConvNets, floors and ceilings",
                      lines))


if __name__ == "__main__":
    main()
