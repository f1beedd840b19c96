"""Results tables from run folders: one row per (run, evaluation), read from the JSON the
commands wrote (meta.json and RUN/evaluations/*.json), so a row cannot drift from its run."""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

from .artifacts import ARTIFACT_FILE, META_FILE, load
from .baselines.run import SETTINGS as BASELINE_SETTINGS
from .config import DistillConfig
from .converge import ConvergeSettings
from .errors import DistillError
from .evaluate import EVALUATIONS, artifact_digest
from .zoo import is_zoo, resolve

# (row key, column heading) in table order; the command last (the widest)
COLUMNS = (("run", "run"), ("dataset", "dataset"), ("made_by", "made by"),
           ("images_per_class", "ipc"), ("model", "model"), ("protocol", "protocol"),
           ("evaluated_on", "evaluated on"), ("accuracy", "accuracy %"), ("nets", "nets"),
           ("hard_labels", "hard labels %"), ("random_real", "random real %"),
           ("lrs", "LRS"), ("ars", "ARS"), ("distill_s", "distill s"),
           ("evaluation_s", "evaluation s"), ("command", "command"))
CONVERGE_FLAGS = {"bfloat16": "bf16"}  # ConvergeSettings fields whose flag is not their name


def report_rows(runs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of every run folder, in the order given."""
    return [row for run in runs for row in run_rows(resolve(run), str(run))]


def run_rows(run: Path, name: str | None = None) -> list[dict[str, Any]]:
    """One row for meta.json's own figure (if any) and one per saved evaluation; ``name``:
    the run as given (``zoo:NAME`` for a shipped set, whose command writes runs/NAME)."""
    meta = _read_json(run / META_FILE, f"{run} holds no {META_FILE}; pass a run folder "
                                       "written by distill, baseline or import")
    metrics = meta.get("metrics", {})
    out = Path("runs") / run.name if is_zoo(name or "") else run
    common = {"run": name or str(run), "dataset": meta["dataset"]["name"],
              "made_by": _made_by(meta), "images_per_class": _images_per_class(run, meta),
              "model": _model(meta), "distill_s": metrics.get("wall_time_s"),
              "set_command": set_command(out, meta)}
    records = _own_figure(meta) + [(path.stem, _evaluation(run, path)) for path in
                                   sorted((run / EVALUATIONS).glob("*.json"))]
    return [{**common, **_scores(record, meta), "protocol": protocol}
            for protocol, record in records]


def _read_json(path: Path, missing: str) -> dict[str, Any]:
    if not path.is_file():
        raise DistillError(missing)
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DistillError(f"{path} is not valid JSON ({exc}); re-run the command that wrote "
                           "it") from None


def _evaluation(run: Path, path: Path) -> dict[str, Any]:
    """A saved evaluation, refused if the artifact has changed since (resumed, replaced)."""
    record = _read_json(path, f"{path} is missing")
    if record.get("artifact_sha256") != artifact_digest(run):
        raise DistillError(f"{path} scored another artifact than {run}'s (resumed or replaced "
                           f"since); re-run `{record.get('command')}` or delete it")
    return record


def _made_by(meta: dict[str, Any]) -> str:
    if "baseline" in meta:
        return f"baseline {meta['baseline']}"
    return "import" if "imported" in meta else meta["config"].get("method", "unroll")


def _model(meta: dict[str, Any]) -> str:
    return meta["model"].get("name") or meta["model"]["class"]


def _images_per_class(run: Path, meta: dict[str, Any]) -> float | str:
    """Images in the artifact over the classes ("all": the whole training set)."""
    if not (run / ARTIFACT_FILE).is_file():
        return "all"
    images = load(run).images  # (steps, n, C, H, W)
    count = images.shape[0] * images.shape[1] / len(meta["dataset"]["class_names"])
    return int(count) if count.is_integer() else count


def _own_figure(meta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """meta.json's own evaluation as (protocol, evaluation record): a converge baseline's
    report or the few-step final figure (none for a method without inner steps, an import)."""
    metrics = meta.get("metrics", {})
    if "converge" in metrics:
        return [("converge-dsa" if metrics["converge"]["dsa"] else "converge",
                 metrics["converge"])]
    if "final" in metrics:
        return [("few-step", {"protocol": "few-step", "after": metrics["final"]})]
    return []


def _scores(record: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Accuracy (mean, std, nets; the set's own labels), the hard-label accuracy, the
    random-real floor (the evaluation's own, else distill's few-step one), DD-Ranking's LRS and
    ARS where the evaluation has them, wall time and command."""
    after = record["after"]
    few_step = record.get("protocol", "few-step") == "few-step"
    floor = record.get("random_real") or (
        meta.get("metrics", {}).get("random_real") if few_step else None) or {}
    hard, scores = record.get("hard_labels") or {}, record.get("scores") or {}
    return {"evaluated_on": record.get("model") or _model(meta),
            "accuracy_mean": after["accuracy_mean"], "accuracy_std": after["accuracy_std"],
            "nets": after.get("nets"), "hard_labels_mean": hard.get("accuracy_mean"),
            "hard_labels_std": hard.get("accuracy_std"),
            "random_real_mean": floor.get("accuracy_mean"),
            "random_real_std": floor.get("accuracy_std"), "lrs": scores.get("lrs"),
            "ars": scores.get("ars"),
            "evaluation_s": record.get("wall_time_s"), "command": record.get("command")}


def set_command(run: Path, meta: dict[str, Any]) -> str:
    """The command that makes the run's set again: its settings that differ from the
    defaults as flags."""
    config = meta["config"]
    if "baseline" in meta:
        words = ["baseline", "--method", meta["baseline"], *_baseline_flags(meta),
                 *_flags(config, asdict(DistillConfig()), BASELINE_SETTINGS)]
    elif "imported" in meta:
        words = ["import", meta["imported"], "--dataset", meta["dataset"]["name"],
                 *_flags(config, asdict(DistillConfig()), ("model", "data_root"))]
    else:
        words = ["distill", *_flags(config, asdict(DistillConfig()),
                                    [f.name for f in fields(DistillConfig)])]
    return shlex.join(["datadistill", *words, "--out", str(run)])


def _baseline_flags(meta: dict[str, Any]) -> list[str]:
    """A baseline's protocol, its held-out nets, grid-search nets and draws as recorded, and
    its converge settings and DSA."""
    metrics = meta["metrics"]
    final, grid = metrics.get("final", {}), metrics.get("baseline", {})
    recorded = (("--nets", final.get("nets")), ("--search-nets", grid.get("search_nets")),
                ("--sets", grid.get("sets", final.get("draws"))))
    nets = [word for flag, value in recorded if value is not None for word in (flag, str(value))]
    if "converge" not in metrics:
        return nets
    converge = metrics["converge"]
    dsa = ["--dsa", "--dsa-ops", ",".join(converge["dsa"])] if converge["dsa"] else []
    return ["--protocol", "converge", *nets, *dsa,
            *_flags(converge["settings"], asdict(ConvergeSettings()), converge["settings"],
                    CONVERGE_FLAGS)]


def _flags(values: dict[str, Any], defaults: dict[str, Any], names: Sequence[str],
           renamed: dict[str, str] | None = None) -> list[str]:
    """``--name value`` (``--flag`` / ``--no-flag`` for booleans) for each of ``names``
    whose value differs from its default."""
    words = []
    for name in names:
        if name not in values or name not in defaults or values[name] == defaults[name]:
            continue
        flag = (renamed or {}).get(name, name).replace("_", "-")
        value = values[name]
        if isinstance(value, bool):
            words.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            words += [f"--{flag}", str(value)]
    return words


def _cells(row: dict[str, Any]) -> dict[str, str]:
    """A row's values as table text: percentages, seconds, and the full reproducing command
    (the set's, then the evaluation's)."""
    def percent(mean: float | None, std: float | None) -> str:
        return "-" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}"

    def score(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    ipc = row["images_per_class"]
    return {**{key: str(row[key]) for key in ("run", "dataset", "made_by", "model",
                                             "protocol", "evaluated_on")},
            "images_per_class": ipc if isinstance(ipc, str) else f"{ipc:g}",
            "accuracy": percent(row["accuracy_mean"], row["accuracy_std"]),
            "nets": "-" if row["nets"] is None else str(row["nets"]),
            "hard_labels": percent(row["hard_labels_mean"], row["hard_labels_std"]),
            "random_real": percent(row["random_real_mean"], row["random_real_std"]),
            "lrs": score(row["lrs"]), "ars": score(row["ars"]),
            "distill_s": seconds(row["distill_s"]), "evaluation_s": seconds(row["evaluation_s"]),
            "command": " && ".join(c for c in (row["set_command"], row["command"]) if c)}


def text_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text columns under a heading."""
    table = [[heading for _, heading in COLUMNS]]
    table += [[_cells(row)[key] for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in table)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub Markdown table; the command in code spans."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    body = [[f"`{cell}`" if key == "command" else cell
             for key, cell in ((k, _cells(row)[k]) for k, _ in COLUMNS)] for row in rows]
    return "\n".join([line([heading for _, heading in COLUMNS]),
                      "|" + "---|" * len(COLUMNS), *map(line, body)])
