"""--log-dir (TensorBoard scalars and image grids) and distill --config FILE."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

import datadistill
from datadistill.cli import main
from datadistill.config import read_config_file
from datadistill.errors import DistillError

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator)

TINY = dict(dataset="digits", steps=1, distill_epochs=1, epochs=2, eval_every=1, eval_nets=2,
            progress=False, device="cpu")
QUICK = ["--dataset", "digits", "--steps", "1", "--distill-epochs", "1", "--epochs", "1",
         "--eval-nets", "2", "--no-progress", "--device", "cpu"]


def _events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _per_epoch(result) -> int:
    return math.ceil(result.meta["dataset"]["train_size"] / result.meta["config"]["batch_size"])


def test_log_dir_has_scalars_and_images(tmp_path):
    log_dir = tmp_path / "tb"
    result = datadistill.distill(**TINY, log_dir=str(log_dir))
    per_epoch = _per_epoch(result)  # digits: 1,437 training images, 1,024 a batch -> 2
    events = _events(log_dir)
    scalars = set(events.Tags()["scalars"])
    iterations = list(range(1, 2 * per_epoch + 1))
    for tag in ("meta_loss", "lr/mean", "lr/min", "lr/max", "lr/t01", "grad_norm/total",
                "grad_norm/images", "grad_norm/raw_lrs"):
        assert tag in scalars, tag
        assert [e.step for e in events.Scalars(tag)] == iterations, tag
    assert all(math.isfinite(e.value) and e.value > 0 for e in events.Scalars("meta_loss"))
    lr = [e.value for e in events.Scalars("lr/t01")]
    assert lr[-1] == pytest.approx(float(result.lrs[0]), rel=1e-5)  # after the last update
    for tag in ("eval/accuracy_mean", "eval/accuracy_std", "eval/loss_mean"):
        assert [e.step for e in events.Scalars(tag)] == [per_epoch, 2 * per_epoch], tag
    accuracies = [e.value for e in events.Scalars("eval/accuracy_mean")]
    assert all(0 <= a <= 1 for a in accuracies)
    assert accuracies[-1] == pytest.approx(result.meta["metrics"]["history"][-1]["accuracy_mean"])
    images = events.Images("distilled")  # the start, then the end of each epoch
    assert [e.step for e in images] == [0, per_epoch, 2 * per_epoch]
    n = result.images.shape[1]  # one step of ten 8x8 digits, one pixel apart
    assert (images[0].height, images[0].width) == (8 + 2, n * 9 + 1)
    assert images[0].encoded_image_string.startswith(b"\x89PNG")


def test_validation_accuracy_is_logged_at_each_evaluation(tmp_path):
    log_dir = tmp_path / "tb"
    result = datadistill.distill(**TINY, validation=300, log_dir=str(log_dir))
    per_epoch = _per_epoch(result)  # digits without 300 held out: 1,137 images -> 2 batches
    logged = _events(log_dir).Scalars("eval/validation_accuracy")
    assert [e.step for e in logged] == [per_epoch, 2 * per_epoch]
    scored = [h["validation_accuracy"] for h in result.meta["metrics"]["history"]]
    assert [e.value for e in logged] == pytest.approx(scored)


def test_one_shared_lr_is_logged_once(tmp_path):
    log_dir = tmp_path / "tb"
    result = datadistill.distill(**{**TINY, "distill_epochs": 3, "epochs": 1},
                                 lr_per_step=False, log_dir=str(log_dir))
    scalars = set(_events(log_dir).Tags()["scalars"])
    assert "lr/t01" in scalars and "lr/t02" not in scalars
    last = _events(log_dir).Scalars("lr/t01")[-1].value
    assert result.lrs.tolist() == pytest.approx([last] * 3, rel=1e-5)


def test_resume_appends_and_a_fresh_run_replaces(tmp_path):
    log_dir, out = str(tmp_path / "tb"), str(tmp_path / "run")
    settings = {**TINY, "epochs": 1, "eval_every": 0}
    result = datadistill.distill(**settings, out=out, log_dir=log_dir)
    per_epoch = _per_epoch(result)
    datadistill.distill(out=out, resume=True, epochs=2, progress=False)  # log_dir from the run
    steps = [e.step for e in _events(log_dir).Scalars("meta_loss")]
    assert steps == list(range(1, 2 * per_epoch + 1))
    assert [e.step for e in _events(log_dir).Images("distilled")] == [0, per_epoch, 2 * per_epoch]
    datadistill.distill(**settings, log_dir=log_dir)  # a new run in the same folder
    assert [e.step for e in _events(log_dir).Scalars("meta_loss")] == list(range(1, per_epoch + 1))


def test_bad_log_dir_is_one_line_before_any_work(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = tmp_path / "run"
    assert main(["distill", "--out", str(out), "--log-dir", str(taken), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err == (f"datadistill: error: --log-dir {taken} is a file, not a folder; "
                   "choose another --log-dir\n")
    assert not out.exists()


def test_config_from_meta_json_with_a_flag_overridden(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["distill", "--out", str(first), *QUICK, "--seed", "3", "--distill-lr", "0.03"]) == 0
    assert main(["distill", "--config", str(first / "meta.json"), "--out", str(second),
                 "--epochs", "2"]) == 0
    old = json.loads((first / "meta.json").read_text())["config"]
    new = json.loads((second / "meta.json").read_text())["config"]
    assert new["epochs"] == 2 and new["seed"] == 3 and new["distill_lr"] == 0.03
    assert {k: v for k, v in new.items() if k != "epochs"} == {
        k: v for k, v in old.items() if k != "epochs"}
    assert read_config_file(first) == old  # a run folder means its meta.json


def test_config_from_toml(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('dataset = "digits"\nsteps = 1\ndistill_epochs = 1\nepochs = 1\n'
                      'eval_nets = 2\nprogress = false\ndevice = "cpu"\ndistill_lr = 0.05\n'
                      'lr = 1\n')
    assert read_config_file(config)["lr"] == 1.0
    out = tmp_path / "run"
    assert main(["distill", "--config", str(config), "--out", str(out), "--seed", "7"]) == 0
    stored = json.loads((out / "meta.json").read_text())["config"]
    assert (stored["dataset"], stored["distill_lr"], stored["seed"], stored["lr"]) == (
        "digits", 0.05, 7, 1.0)


@pytest.mark.parametrize("name,text,expected", [
    ("typo.toml", 'dataset = "digits"\nepoch = 3\n', "unknown setting 'epoch'; did you mean 'epochs'?"),
    ("typo.json", '{"config": {"dataset": "digits", "log_dirr": "tb"}}',
     "unknown setting 'log_dirr'; did you mean 'log_dir'?"),
    ("wrong.toml", 'steps = "ten"\n', "steps must be an integer, got 'ten'"),
    ("broken.toml", 'steps = \n', "cannot be read"),
    ("settings.ini", "steps = 1\n", "unknown format '.ini'"),
])
def test_bad_config_file_is_exit_2_with_one_line(tmp_path, capsys, name, text, expected):
    config = tmp_path / name
    config.write_text(text)
    assert main(["distill", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"datadistill: error: --config {config}") and expected in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_yaml_config_or_a_one_line_error_without_pyyaml(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: digits\nsteps: 2\n")
    if importlib.util.find_spec("yaml") is None:
        with pytest.raises(DistillError, match="reading YAML needs PyYAML") as caught:
            read_config_file(config)
        assert "\n" not in str(caught.value)
    else:
        assert read_config_file(config) == {"dataset": "digits", "steps": 2}


def test_only_rank_0_writes(tmp_path, monkeypatch, tiny_data):
    import torch

    from datadistill import tracking
    from datadistill.distributed import World
    from datadistill.state import new_steps

    steps = new_steps(torch.zeros(1, 3, 1, 4, 4), torch.arange(3).view(1, 3), 2, 0.02, 3)
    monkeypatch.setattr(tracking, "current", lambda: World(rank=1, size=2))
    other = tracking.Tracker(str(tmp_path / "rank1"), tiny_data, steps)
    other.iteration(1, 0.5, steps)
    other.epoch(1, steps)
    other.close()
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setattr(tracking, "current", lambda: World(rank=0, size=2))
    main_rank = tracking.Tracker(str(tmp_path / "rank0"), tiny_data, steps)
    main_rank.iteration(1, 0.5, steps)  # no gradients yet: no grad_norm scalars
    main_rank.close()
    tags = _events(tmp_path / "rank0").Tags()
    assert "meta_loss" in tags["scalars"] and "grad_norm/total" not in tags["scalars"]
    assert tags["images"] == ["distilled"]
