"""Ship a run folder as a zoo set: ``python scripts/add_to_zoo.py RUN NAME --summary TEXT
[--check ARGS] [--tolerance T] [--overwrite]``.

Copies the artifact, ``meta.json`` and the saved evaluations of that artifact into
``src/datadistill/zoo_sets/NAME/`` (replacing the set NAME only with ``--overwrite``), runs
the quick check (``datadistill evaluate RUN ARGS --plain``, seconds to a minute, which
``tests/test_zoo.py`` reruns) and writes ``card.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from datadistill.artifacts import ARTIFACT_FILE, META_FILE
from datadistill.evaluate import EVALUATIONS, artifact_digest
from datadistill.zoo import CARD_FILE, ROOT


def quick_check(run: Path, args: list[str]) -> float:
    """The mean accuracy of ``datadistill evaluate RUN ARGS --json --no-save``."""
    command = [sys.executable, "-m", "datadistill", "evaluate", str(run), *args, "--json",
               "--no-save"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"add_to_zoo: the quick check failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout)["after"]["accuracy_mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--summary", required=True)
    parser.add_argument("--check", default="--nets 5 --plain",
                        help="evaluate flags of the quick check")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--overwrite", action="store_true", help="replace the set NAME")
    args = parser.parse_args()
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.name):
        sys.exit(f"add_to_zoo: NAME {args.name!r} must be lower-case letters, digits and '-'")
    folder = ROOT / args.name
    if folder.exists():
        if not args.overwrite:
            sys.exit(f"add_to_zoo: zoo:{args.name} exists; pass --overwrite to replace it")
        shutil.rmtree(folder)
    (folder / EVALUATIONS).mkdir(parents=True)
    digest = artifact_digest(args.run)
    for name in (ARTIFACT_FILE, META_FILE):
        shutil.copy(args.run / name, folder / name)
    for path in sorted((args.run / EVALUATIONS).glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("artifact_sha256") == digest:  # an evaluation of this very set
            record["run"] = f"zoo:{args.name}"
            record["command"] = record["command"].replace(str(args.run), f"zoo:{args.name}")
            (folder / EVALUATIONS / path.name).write_text(json.dumps(record, indent=2) + "\n")
    check = shlex.split(args.check)
    card = {"summary": args.summary,
            "check": {"args": check, "accuracy": quick_check(folder, check),
                      "tolerance": args.tolerance}}
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    print(f"zoo:{args.name}: quick check {100 * card['check']['accuracy']:.2f}%")


if __name__ == "__main__":
    main()
