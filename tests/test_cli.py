"""The command line: distill, resume, show, evaluate, list, and one-line errors."""
from __future__ import annotations

import json

import pytest

from datadistill.cli import main

QUICK = ["--dataset", "digits", "--steps", "2", "--distill-epochs", "1", "--epochs", "2",
         "--eval-nets", "3", "--no-progress", "--device", "cpu"]


def test_distill_show_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "distilled" in printed and "random real" in printed
    (out / "distilled.png").unlink()
    assert main(["show", str(out)]) == 0
    assert (out / "distilled.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["evaluate", str(out), "--nets", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["after"]["nets"] == 4 and 0 <= result["after"]["accuracy_mean"] <= 1
    assert result["before"]["nets"] == 4 and result["epochs"] == 1 and result["lr"] == "learned"


def test_resume_extends_a_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["distill", "--out", out, *QUICK]) == 0
    assert main(["distill", "--out", out, "--resume", "--epochs", "3", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["config"]["epochs"] == 3


@pytest.mark.parametrize("argv,expected", [
    (["distill", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["distill", "--dataset", "digits", "--model", "resnet"], "unknown model 'resnet'"),
    (["evaluate", "no/such/run"], "no distilled.safetensors in no/such/run"),
    (["distill", "--out", "nowhere", "--resume"], "no checkpoint.safetensors in nowhere"),
])
def test_errors_are_one_line_with_exit_code_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_artifact_is_reported(tmp_path, capsys):
    (tmp_path / "distilled.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert main(["show", str(tmp_path)]) == 2
    assert "is damaged" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    assert "mnist-5k" in printed and "lenet" in printed and "xavier-normal" in printed


def test_linreg_prints_the_table(capsys):
    assert main(["linreg", "--dim", "2", "--iterations", "300"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["M", "D"] and len(lines) >= 3
