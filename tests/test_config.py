"""Every command that trains or writes something stores its settings, and `--config` of
them reproduces it: the same tensors, the same figures."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from datadistill.artifacts import load
from datadistill.cli import main
from datadistill.config import (BaselineConfig, EvaluateConfig, ExpertsConfig, PretrainConfig,
                                read_config_file)
from datadistill.experts import load_experts
from datadistill.pools import load_pool

DISTILL = ["--dataset", "digits", "--steps", "2", "--distill-epochs", "1", "--epochs", "1",
           "--eval-nets", "2", "--no-progress", "--device", "cpu", "--final-checks", "none"]


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("config") / "run"
    assert main(["distill", "--out", str(out), *DISTILL]) == 0
    return out


@pytest.mark.parametrize("flags,stored", [
    (["--nets", "3", "--plain"], "few-step-plain"),
    (["--protocol", "converge", "--nets", "1", "--epochs", "2", "--plain", "--batch-size", "64"],
     "converge-*-e2-plain"),
])
def test_evaluate_again_from_its_saved_record(run, capsys, flags, stored):
    assert main(["evaluate", str(run), *flags, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    [record] = (run / "evaluations").glob(f"{stored}.json")
    assert json.loads(record.read_text())["config"] == first["config"]
    assert main(["evaluate", str(run), "--config", str(record), "--no-save", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["config"] == first["config"] and again["after"] == first["after"]


def test_baseline_again_from_its_meta_json(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["baseline", "--method", "random", "--dataset", "digits", "--steps", "2",
                 "--distill-epochs", "1", "--nets", "2", "--search-nets", "2",
                 "--device", "cpu", "--out", str(first)]) == 0
    assert main(["baseline", "--config", str(first / "meta.json"), "--out", str(again)]) == 0
    a, b = load(first), load(again)
    assert torch.equal(a.images, b.images) and torch.equal(a.lrs, b.lrs)
    assert a.meta["metrics"]["final"] == b.meta["metrics"]["final"]
    assert a.meta["baseline_config"] == b.meta["baseline_config"]
    assert BaselineConfig(**read_config_file(first, BaselineConfig)).nets == 2


def test_pretrain_again_from_its_manifest(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["pretrain", "--dataset", "digits", "--models", "3", "--held-out", "1",
                 "--epochs", "1", "--group", "3", "--device", "cpu", "--out", str(first)]) == 0
    assert main(["pretrain", "--config", str(first), "--out", str(again)]) == 0
    a, b = load_pool(first), load_pool(again)
    assert _tensors_equal(a.params, b.params) and a.manifest == b.manifest
    assert PretrainConfig(**a.manifest["config"]).models == 3


def test_pool_import_again_from_its_manifest(tmp_path, capsys):
    assert main(["pretrain", "--dataset", "digits", "--models", "2", "--held-out", "1",
                 "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "pool")]) == 0
    pool = load_pool(tmp_path / "pool")
    (tmp_path / "mine").mkdir()
    for k in range(2):
        save_file(pool.model(k), tmp_path / "mine" / f"net{k}.safetensors")
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["pool-import", str(tmp_path / "mine"), "--dataset", "digits", "--held-out",
                 "1", "--device", "cpu", "--out", str(first)]) == 0
    assert main(["pool-import", str(tmp_path / "mine"), "--config", str(first),
                 "--out", str(again)]) == 0
    assert load_pool(first).manifest == load_pool(again).manifest


def test_experts_again_from_experts_json(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["experts", "--dataset", "digits", "--experts", "1", "--epochs", "1",
                 "--device", "cpu", "--out", str(first)]) == 0
    assert main(["experts", "--config", str(first), "--out", str(again)]) == 0
    a, b = load_experts(first), load_experts(again)
    assert _tensors_equal(a.trajectories[0], b.trajectories[0]) and a.manifest == b.manifest
    assert ExpertsConfig(**a.manifest["config"]).schedule.epochs == 1


def test_flags_override_the_file(run, capsys):
    record = run / "evaluations" / "override.toml"
    record.parent.mkdir(exist_ok=True)
    record.write_text('nets = 2\nplain = true\nprotocol = "few-step"\n')
    assert main(["evaluate", str(run), "--config", str(record), "--nets", "1", "--no-save",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["after"]["nets"] == 1 and result["config"]["plain"] is True
    assert EvaluateConfig(**result["config"]).nets == 1


@pytest.mark.parametrize("argv,expected", [
    (["pretrain", "--out", "OUT", "--models", "3"], "--dataset is required (or --config FILE"),
    (["experts", "--out", "OUT", "--dataset", "digits"], "--experts is required"),
    (["baseline", "--out", "OUT", "--config", "RUN/meta.json"],
     "holds no BaselineConfig settings (a file of another command"),
    (["evaluate", "RUN", "--config", "RUN/meta.json"], "meta.json: unknown setting"),
    (["experts", "--out", "OUT", "--config", "BAD"], "experts must be an integer, got 'two'"),
])
def test_bad_or_missing_settings_are_one_line(run, tmp_path, capsys, argv, expected):
    bad = tmp_path / "bad.json"
    bad.write_text('{"dataset": "digits", "experts": "two"}')
    argv = [a.replace("RUN", str(run)).replace("OUT", str(tmp_path / "out"))
            .replace("BAD", str(bad)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: ") and expected in err, err
    assert err.count("\n") == 1
