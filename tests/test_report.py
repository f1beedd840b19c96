"""evaluate saves its report in the run folder; `report` makes results tables from the JSON."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import fields

import pytest

import datadistill
from datadistill.cli import build_parser, main
from datadistill.config import DistillConfig

CONVERGE = ["--protocol", "converge", "--epochs", "1", "--nets", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny distillation run, evaluated once under the converge protocol."""
    out = tmp_path_factory.mktemp("runs") / "run"
    datadistill.distill(dataset="digits", steps=1, distill_epochs=1, epochs=1, eval_nets=2,
                        progress=False, out=out)
    assert main(["evaluate", str(out), *CONVERGE]) == 0
    return out


def _evaluations(run) -> list[str]:
    return sorted(p.name for p in (run / "evaluations").iterdir())


def _report(argv, capsys) -> str:
    capsys.readouterr()
    assert main(["report", *argv]) == 0
    return capsys.readouterr().out


def test_evaluate_saves_its_report_with_wall_time_and_command(run):
    record = json.loads((run / "evaluations" / "converge-mlp-e1.json").read_text())
    assert record["protocol"] == "converge" and record["model"] == "mlp"
    assert record["after"]["nets"] == 1 and record["settings"]["epochs"] == 1
    assert record["command"] == shlex.join(["datadistill", "evaluate", str(run), *CONVERGE])
    assert 0 < record["wall_time_s"] < 600
    assert len(record["artifact_sha256"]) == 64


def test_json_prints_the_saved_record(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run), "--nets", "2", "--lr", "0.01", "--epochs", "2",
                 "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "evaluations" / "few-step-lr0.01-e2.json").read_text())
    assert printed == saved and saved["protocol"] == "few-step" and saved["wall_time_s"] > 0


def test_no_save_writes_nothing_and_times_the_evaluation(run, capsys):
    before = _evaluations(run)
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["evaluate", str(run), *CONVERGE, "--dsa", "--no-save", "--json"]) == 0
    elapsed = time.perf_counter() - start
    record = json.loads(capsys.readouterr().out)
    assert _evaluations(run) == before and "artifact_sha256" not in record
    assert 0 < record["wall_time_s"] <= elapsed and record["command"].endswith("--no-save --json")


def test_markdown_has_one_row_per_evaluation(run, capsys):
    lines = _report([str(run), "--markdown"], capsys).splitlines()
    assert lines[0].startswith("| run | dataset | made by | ipc |") and lines[1].startswith("|---|")
    rows = lines[2:]
    assert len(rows) == 1 + len(_evaluations(run))  # meta.json's few-step figure, then each
    meta = json.loads((run / "meta.json").read_text())
    final = meta["metrics"]["final"]
    assert f"| {100 * final['accuracy_mean']:.2f} ± {100 * final['accuracy_std']:.2f} |" in rows[0]
    after = json.loads((run / "evaluations" / "converge-mlp-e1.json").read_text())["after"]
    converge = next(row for row in rows if "| converge-mlp-e1 |" in row)
    assert f"| {100 * after['accuracy_mean']:.2f} ± {100 * after['accuracy_std']:.2f} | 1 |" \
        in converge
    assert f"--out {run} && datadistill evaluate {run} --protocol converge" in converge


def test_text_table_is_aligned(run, capsys):
    lines = _report([str(run)], capsys).splitlines()
    assert len(lines) == 2 + len(_evaluations(run))
    assert len({line.index("digits") for line in lines[1:]}) == 1
    assert lines[0].index("dataset") == lines[1].index("digits")


def test_set_command_gives_back_the_runs_settings(run, capsys):
    rows = json.loads(_report([str(run), "--json"], capsys))
    assert rows[0]["protocol"] == "few-step" and rows[0]["made_by"] == "unroll"
    assert rows[0]["images_per_class"] == 1 and rows[0]["distill_s"] > 0
    words = shlex.split(rows[0]["set_command"])
    assert words[:2] == ["datadistill", "distill"]
    args = build_parser().parse_args(words[1:])
    config, defaults = json.loads((run / "meta.json").read_text())["config"], DistillConfig()
    changed = {f.name for f in fields(DistillConfig) if config[f.name] != getattr(defaults, f.name)}
    assert {"dataset", "steps", "epochs", "progress"} <= changed
    assert {name: getattr(args, name) for name in changed} == {n: config[n] for n in changed}
    assert not any(hasattr(args, f.name) for f in fields(DistillConfig) if f.name not in changed)
    assert args.out == str(run)


def test_report_refuses_a_folder_without_meta(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} holds no meta.json" in err


def test_report_refuses_an_evaluation_of_another_artifact(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "evaluations" / "converge-mlp-e1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "artifact_sha256": "0" * 64}))
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scored another artifact" in err and "delete it" in err


def test_evaluate_refuses_an_unwritable_run_folder(run, monkeypatch, capsys):
    before = _evaluations(run)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a non-root user
    assert main(["evaluate", str(run), *CONVERGE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write into" in err and "--no-save" in err
    assert _evaluations(run) == before


def test_a_baselines_command_gives_back_its_settings(tmp_path, capsys):
    out = str(tmp_path / "floor")
    assert main(["baseline", "--method", "random", "--dataset", "digits", "--steps", "2",
                 "--protocol", "converge", "--epochs", "1", "--nets", "1", "--momentum", "0.5",
                 "--device", "cpu", "--out", out]) == 0
    rows = json.loads(_report([out, "--json"], capsys))
    assert [(row["protocol"], row["made_by"], row["images_per_class"]) for row in rows] == [
        ("converge", "baseline random", 2)]
    args = build_parser().parse_args(shlex.split(rows[0]["set_command"])[1:])
    assert (args.command, args.method, args.protocol, args.dataset, args.steps, args.epochs,
            args.nets, args.momentum, args.out) == (
        "baseline", "random", "converge", "digits", 2, 1, 1, 0.5, out)
