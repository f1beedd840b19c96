"""Bad input through the real command line: exit 2, one line naming problem and fix, no
traceback, no partial output folder, earlier runs' files byte-identical; and no finished
optimisation lost to a later failure."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import datadistill
from datadistill.artifacts import ARTIFACT_FILE, Distilled
from datadistill.cli import main
from datadistill.errors import DistillError
from datadistill.exchange import export_set
from datadistill.pools import Schedule, pretrain
from datadistill.runfolder import claim

from .conftest import make_dataset

QUICK = ["--dataset", "digits", "--steps", "1", "--distill-epochs", "1", "--epochs", "1",
         "--eval-nets", "2", "--no-progress", "--device", "cpu"]

CONVERGE = ["--protocol", "converge", "--epochs", "1", "--device", "cpu"]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Artifacts the bad inputs point at: a k-NN baseline, a custom-module run, a damaged run,
    a run folder being written (this process holds its lock), and bad data files."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["baseline", "--method", "knn-random", "--dataset", "digits", "--sets", "1",
                 "--out", str(root / "knn")]) == 0
    datadistill.distill(dataset="digits", module=_mlp(), steps=1, distill_epochs=1, epochs=1,
                        eval_nets=2, progress=False, out=root / "custom")
    assert main(["distill", "--out", str(root / "damaged"), *QUICK]) == 0
    path = root / "damaged" / ARTIFACT_FILE
    _flip(path, -5)  # one flipped byte inside the tensor data
    datadistill.distill(dataset="digits", steps=1, distill_epochs=1, epochs=1, eval_nets=2,
                        progress=False, out=root / "damaged-checkpoint")
    _flip(root / "damaged-checkpoint" / "checkpoint.safetensors", 9 + 40)  # in the header
    datadistill.distill(data=make_dataset(), steps=1, distill_epochs=1, epochs=1, eval_nets=2,
                        progress=False, out=root / "custom-data")
    (root / "a-file").write_text("not a folder")
    export_set(root / "knn", root / "set.safetensors")
    pretrain("digits", models=3, out=root / "damaged-pool", held_out=1, group=3,
             schedule=Schedule(epochs=1, lr=1e-3, decay_epochs=1), progress=False)
    _flip(root / "damaged-pool" / "pool.safetensors", -7)
    _bad_data_files(root)
    with claim(root / "running"):
        yield root


def _bad_data_files(root) -> None:
    """A pickled (object) array, keys of neither .npz layout, a set and an artifact holding
    NaN, and a text CSV of one class."""
    np.savez(root / "object.npz", X=np.array([[1.0, 2.0]] * 20, dtype=object),
             y=np.arange(20) % 2)
    np.savez(root / "other-keys.npz", data=np.zeros((20, 4)), target=np.arange(20) % 2)
    tensors = load_file(root / "set.safetensors")
    tensors["images"][0, 0, 0, 0] = float("nan")
    save_file(tensors, root / "nan.safetensors")
    knn = datadistill.load(root / "knn")
    Distilled(knn.images, knn.labels, torch.tensor([float("inf")]), None, knn.meta).save(
        root / "nan-run")
    torch.save({"state_dict": torch.zeros(2)}, root / "weights.pt")  # not a set
    rows = "".join(f"document number {i},only\n" for i in range(40))
    (root / "one-class.csv").write_text("text,label\n" + rows)


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


BAD_INPUTS = [
    # (command line with RUNS for the fixture's folder and OUT for a fresh output path, expected)
    (["distill", "--out", "RUNS/a-file", *QUICK], "is a file, not a folder"),
    (["distill", "--out", "OUT", *QUICK, "--steps", "40", "--images-per-class", "10"],
     "asks for 400 images per class"),
    (["evaluate", "RUNS/knn", "--epochs", "2"], "holds no learning rates (a k-NN baseline"),
    (["evaluate", "RUNS/knn"], "holds no learning rates (a k-NN baseline"),
    (["evaluate", "RUNS/custom"], "distilled for your own module (Sequential)"),
    (["evaluate", "RUNS/damaged"], "do not match the stored SHA-256 digest"),
    (["distill", "--out", "RUNS/damaged-checkpoint", "--resume"], "is damaged"),
    (["distill", "--out", "OUT", *QUICK, "--init-from", "RUNS/knn"],
     "no checkpoint.safetensors there"),
    (["distill", "--out", "OUT", *QUICK, "--init-from", "RUNS/damaged-checkpoint"], "is damaged"),
    (["distill", "--out", "OUT", *QUICK, "--images-per-class", "2", "--init-from", "RUNS/damaged"],
     "it was distilled with --images-per-class 1; set this run's alike"),
    (["distill", "--out", "OUT", *QUICK, "--init", "pretrained-random", "--pool",
      "RUNS/damaged-pool"], "is damaged"),
    (["evaluate", "RUNS/custom-data"], "distilled on a dataset of your own ('synthetic')"),
    (["evaluate", "RUNS/knn", "--nets", "0"], "--nets must be at least 1"),
    (["pretrain", "--dataset", "digits", "--models", "3", "--group", "0", "--out", "OUT"],
     "--group must be at least 1"),
    (["baseline", "--method", "random", "--distill-epochs", "0", "--dataset", "digits",
      "--out", "OUT"], "--distill-epochs must be at least 1"),
    (["baseline", "--method", "optimized", "--sets", "0", "--dataset", "digits", "--out", "OUT"],
     "--sets must be at least 1"),
    (["baseline", "--method", "random", "--dataset", "digits", "--pool", "RUNS/nopool",
      "--out", "OUT"], "no pool in"),
    # the README's error section: unknown names, missing files, bad settings, divergence,
    # damaged artifacts
    (["distill", "--out", "OUT", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["distill", "--out", "OUT", *QUICK, "--model", "resnet"], "unknown model 'resnet'"),
    (["distill", "--out", "OUT", *QUICK, "--init-scheme", "zeros"],
     "unknown initialization scheme 'zeros'"),
    (["distill", "--out", "OUT", "--dataset", "mnist", "--data-root", "RUNS/empty"], "MNIST"),
    (["distill", "--out", "OUT", "--resume"], "no checkpoint.safetensors"),
    (["show", "RUNS/missing"], "no distilled.safetensors"),
    (["distill", "--out", "OUT", *QUICK, "--steps", "0"], "--steps must be at least 1"),
    (["distill", "--out", "OUT", *QUICK, "--stop-accuracy", "0.5"], "add --eval-every"),
    (["distill", "--out", "OUT", *QUICK, "--distill-lr", "1e30"], "distillation diverged"),
    # text and audio data
    (["distill", "--out", "OUT", *QUICK[2:], "--dataset", "text:RUNS/missing.csv"],
     "is neither a folder"),
    (["distill", "--out", "OUT", *QUICK[2:], "--dataset", "tokens:RUNS/missing"],
     "is neither a folder"),
    (["distill", "--out", "OUT", *QUICK[2:], "--dataset", "audio:RUNS/missing"],
     "is not a folder of one subfolder of WAV files"),
    (["distill", "--out", "OUT", *QUICK[2:], "--dataset", "npz:RUNS/a-file"], "cannot read"),
    (["distill", "--out", "OUT", *QUICK, "--dataset", "digits@some/encoder"], "takes no encoder"),
    (["distill", "--out", "OUT", *QUICK, "--model", "seqcnn"], "seqcnn takes sequences"),
    # the flags of learned labels, flat sets, windows, clipping and backends
    (["distill", "--out", "OUT", *QUICK, "--images-per-step", "-1"], "--images-per-step must be"),
    (["distill", "--out", "OUT", *QUICK, "--minibatch", "-2"], "--minibatch must be 0"),
    (["distill", "--out", "OUT", *QUICK, "--momentum", "1"], "--momentum must lie in [0, 1)"),
    (["distill", "--out", "OUT", *QUICK, "--window", "-3"], "--window must be 0"),
    (["distill", "--out", "OUT", *QUICK, "--clip", "-1"], "--clip must be 0"),
    (["distill", "--out", "OUT", *QUICK, "--ema", "1"], "--ema must lie in [0, 1)"),
    (["distill", "--out", "OUT", *QUICK, "--ema", "-0.5"], "--ema must lie in [0, 1)"),
    (["distill", "--out", "OUT", *QUICK, "--validation", "-1"], "--validation must be 0"),
    (["distill", "--out", "OUT", *QUICK, "--validation", "100"], "add --eval-every N"),
    (["distill", "--out", "OUT", *QUICK, "--validation", "100", "--eval-every", "2"],
     "N at most --epochs"),
    (["distill", "--out", "OUT", *QUICK, "--validation", "100", "--eval-every", "1",
      "--objective", "attack", "--attack-class", "0", "--target-class", "1"],
     "drop it for --objective attack"),
    (["distill", "--out", "OUT", *QUICK, "--validation", "1797", "--eval-every", "1"],
     "--validation must be below the 1437 training examples of digits"),
    (["distill", "--out", "OUT", *QUICK, "--dsa-ops", "crop"], "--dsa-ops chooses"),
    (["distill", "--out", "OUT", *QUICK, "--dsa", "--dsa-ops", "crop,mirror"],
     "unknown DSA operation mirror"),
    (["distill", "--out", "OUT", *QUICK, "--dsa", "--backend", "compiled"], "without --dsa"),
    (["distill", "--out", "OUT", *QUICK, "--label-lr", "-0.1"], "--label-lr must be"),
    (["distill", "--out", "OUT", *QUICK, "--downscale", "0"], "--downscale must be at least 1"),
    (["distill", "--out", "OUT", *QUICK, "--downscale", "5"],
     "--downscale 5 leaves digits's 8x8 images under 2 px a side"),
    (["distill", "--out", "OUT", *QUICK, "--downscale", "3"],
     "--downscale 3 does not divide digits's 8x8 images"),
    (["baseline", "--method", "random", "--dataset", "digits", "--out", "OUT", "--downscale",
      "3"], "--downscale 3 does not divide digits's 8x8 images"),
    (["baseline", "--method", "random", "--like", "RUNS/knn", "--out", "OUT", *CONVERGE],
     "--like takes a few-step run's setting"),
    (["baseline", "--method", "random", "--dataset", "digits", "--out", "OUT", *CONVERGE,
      "--downscale", "5"], "--downscale 5 leaves digits's 8x8 images under 2 px a side"),
    (["baseline", "--method", "full", "--dataset", "digits", "--out", "OUT", *CONVERGE,
      "--downscale", "2"], "--method full trains on the whole training set as it is"),
    (["distill", "--out", "OUT", *QUICK, "--label-confidence", "1.5"], "--label-confidence is"),
    (["distill", "--out", "OUT", *QUICK, "--backend", "compiled"], "--backend compiled runs only"),
    (["distill", "--out", "OUT", *QUICK, "--log-dir", "RUNS/a-file"], "--log-dir"),
    # methods, their flags, experts and the loop's length and final checks
    (["distill", "--out", "OUT", *QUICK, "--method", "nope"], "unknown method 'nope'"),
    (["distill", "--out", "OUT", *QUICK, "--method", "dm", "--window", "2"],
     "--method dm has no inner steps, so --window 2 would be ignored"),
    (["distill", "--out", "OUT", *QUICK, "--method", "dc", "--images-per-class", "3"],
     "set --match-outer-loop and --match-inner-loop"),
    (["distill", "--out", "OUT", *QUICK, "--match-outer-loop", "-1"],
     "--match-outer-loop must be 0"),
    (["distill", "--out", "OUT", *QUICK, "--method", "dc", "--match-net-lr", "0"],
     "--match-net-lr must be positive"),
    (["distill", "--out", "OUT", *QUICK, "--method", "mtt"], "--method mtt needs --experts"),
    (["distill", "--out", "OUT", *QUICK, "--method", "mtt", "--experts", "RUNS/missing"],
     "no experts in"),
    (["distill", "--out", "OUT", *QUICK, "--expert-epochs", "0"],
     "--expert-epochs must be at least 1"),
    (["distill", "--out", "OUT", *QUICK, "--lr-lr", "-1"], "--lr-lr must be 0"),
    (["distill", "--out", "OUT", *QUICK, "--iterations", "-5"], "--iterations must be 0"),
    (["experts", "--dataset", "digits", "--experts", "0", "--out", "OUT"],
     "--experts must be at least 1"),
    (["experts", "--dataset", "digits", "--experts", "2", "--epochs", "0", "--out", "OUT"],
     "--epochs and --batch-size must be at least 1"),
    (["report", "RUNS/empty"], "holds no meta.json; pass a run folder"),
    # the converge protocol, its baselines, export and import
    (["evaluate", "RUNS/knn", *CONVERGE, "--epochs", "0"], "--epochs must be at least 1"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--nets", "0"], "--nets must be at least 1"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--batch-size", "0"], "--batch-size must be at least 1"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--lr", "0"], "--lr must be positive"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--momentum", "-1"], "--momentum must be 0 or more"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--weight-decay", "-1"], "--weight-decay must be 0"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--nets-per-batch", "-1"], "--nets-per-batch must be"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--test-every", "-1"], "--test-every must be"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--dsa", "--dsa-ops", "crop,mirror"],
     "unknown DSA operation mirror"),
    (["distill", "--out", "OUT", *QUICK, "--dsa", "--backend", "compiled"], "without --dsa"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--curve", "RUNS/a-file"], "is not a .png file path"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--model", "resnet"], "unknown model 'resnet'"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--init-scheme", "zeros"],
     "unknown initialization scheme 'zeros'"),
    (["evaluate", "RUNS/knn", "--model", "convnet"], "--model belongs to the converge protocol"),
    (["evaluate", "RUNS/knn", "--bf16"], "--bf16 belongs to the converge protocol"),
    # evaluate's scores beside the accuracy
    (["evaluate", "RUNS/knn", *CONVERGE, "--full-data-accuracy", "99"],
     "--full-data-accuracy is a fraction in (0, 1], got 99.0; e.g. 0.99"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--plain", "--full-data-accuracy", "0.9"],
     "--plain skips the scores that the full-data accuracy feeds"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--full-data", "--full-data-accuracy", "0.9"],
     "--full-data computes what --full-data-accuracy gives; pass one"),
    (["evaluate", "RUNS/knn", "--lr-search"], "--lr-search belongs to the converge protocol"),
    (["evaluate", "RUNS/knn", "--full-data"], "--full-data belongs to the converge protocol"),
    (["baseline", "--method", "random", "--dataset", "digits", "--out", "OUT", "--bf16"],
     "--bf16 belongs to the converge protocol"),
    (["baseline", "--method", "random", "--dataset", "digits", "--out", "OUT", "--dsa"],
     "--dsa belongs to the converge protocol"),
    (["evaluate", "RUNS/knn", *CONVERGE, "--bf16", "--nets-per-batch", "2"],
     "--bf16 trains one net at a time"),
    (["baseline", "--method", "full", "--dataset", "digits", "--out", "OUT"],
     "add --protocol converge"),
    (["baseline", "--method", "knn-random", *CONVERGE, "--dataset", "digits", "--out", "OUT"],
     "has no converge-protocol form"),
    (["baseline", "--method", "random", *CONVERGE, "--dataset", "digits", "--out", "OUT",
      "--dsa", "--dsa-ops", "spin"], "unknown DSA operation spin"),
    (["export", "RUNS/knn", "--out", "RUNS/a-file"], "is not a .safetensors file path"),
    (["export", "RUNS/missing", "--out", "OUT/set.safetensors"], "no distilled.safetensors"),
    (["import", "RUNS/missing.pt", "--dataset", "digits", "--out", "OUT"], "is not a set file"),
    (["import", "RUNS/knn/distilled.safetensors", "--dataset", "digits", "--out", "OUT"],
     "do not match the layout images (N, C, H, W)"),  # a run's (steps, n, ...) file
    (["import", "RUNS/set.safetensors", "--dataset", "digits", "--out", "OUT", "--model",
      "resnet"], "unknown model 'resnet'"),
    (["import", "RUNS/set.safetensors", "--dataset", "digits28", "--out", "OUT"],
     "pass the --dataset the set was made for"),
    (["import", "RUNS/weights.pt", "--dataset", "digits", "--out", "OUT"],
     "holds a dict of 'state_dict'; a .pt set is a dict with images and labels tensors, an "
     "(images, labels) pair, DC/DSA/DM's res_*.pt"),
    # run folders: a finished run and a running one are refused; bad data (also under
    # --overwrite of a finished run, which stays as it was)
    (["distill", "--out", "RUNS/knn", *QUICK, "--seed", "5"],
     "already holds a run (meta.json); pass --overwrite to replace it, or --resume to continue"),
    (["baseline", "--method", "random", "--dataset", "digits", "--out", "RUNS/knn"],
     "pass --overwrite to replace it, or choose another --out"),
    (["distill", "--out", "RUNS/running", *QUICK], f"is being written by pid {os.getpid()} on"),
    (["distill", "--out", "RUNS/knn", "--resume", "--overwrite"], "pass one of them"),
    (["distill", "--out", "RUNS/knn", "--overwrite", *QUICK[2:], "--dataset",
      "npz:RUNS/object.npz"], "array 'X' holds Python objects (pickled), which are never loaded"),
    (["import", "RUNS/nan.safetensors", "--dataset", "digits", "--out", "RUNS/knn",
      "--overwrite"], "images hold NaN or infinite values; replace them"),
    (["evaluate", "RUNS/nan-run"], "lrs hold NaN or infinite values; re-run the command"),
    (["distill", "--out", "RUNS/knn", "--overwrite", *QUICK[2:], "--dataset",
      "text:RUNS/one-class.csv"], "holds one class only ('only')"),
    (["distill", "--out", "OUT", *QUICK[2:], "--dataset", "npz:RUNS/other-keys.npz"],
     "holds data, target; an .npz dataset holds X (N, ...) features and y (N,) integer labels "
     "(or X_train, y_train)"),
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a[:2]) + f" [{i}]"
                                                           for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(argv, expected, runs, tmp_path):
    out = tmp_path / "out"
    args = [a.replace("RUNS", str(runs)).replace("OUT", str(out)) for a in argv]
    before = sorted(p.name for p in runs.iterdir())
    files = _digests(runs)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "datadistill", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datadistill: error: "), done.stderr
    assert expected in lines[0]
    assert not out.exists()  # no partial output folder
    assert sorted(p.name for p in runs.iterdir()) == before
    assert _digests(runs) == files  # every earlier run byte-identical


def _digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_misspelt_api_setting_names_the_closest():
    with pytest.raises(DistillError, match="unknown setting 'epoch'; did you mean 'epochs'"):
        datadistill.distill(dataset="digits", epoch=3)


def test_a_report_failing_after_training_keeps_the_artifact(tmp_path, monkeypatch, capsys):
    """The random-real comparison and the picture run after the artifact is written; their
    failure is one warning line, recorded in the metrics."""
    import datadistill.plots as plots

    distill_module = sys.modules["datadistill.distill"]  # the package exports the function

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(distill_module, "_random_real", broken)
    monkeypatch.setattr(plots, "save_grid", broken)
    assert main(["distill", "--out", str(tmp_path / "run"), *QUICK]) == 0
    err = capsys.readouterr().err
    assert "random real failed (RuntimeError: boom); the distilled artifact is saved" in err
    assert "picture failed" in err
    loaded = datadistill.load(tmp_path / "run")
    assert loaded.images.shape[:2] == (1, 10)
    metrics = loaded.meta["metrics"]
    assert "final" in metrics and set(metrics["failed"]) == {"random_real", "picture"}


def test_custom_module_artifact_evaluates_on_its_own_module(tmp_path):
    """An MLP's images evaluated on the MLP (a LeNet gives them about chance)."""
    torch.manual_seed(0)
    datadistill.distill(dataset="mnist-5k", module=nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), epochs=2,
        image_init="real", eval_nets=4, progress=False, out=tmp_path)
    meta = datadistill.load(tmp_path).meta
    assert meta["model"]["name"] is None and meta["model"]["class"] == "Sequential"
    result = datadistill.evaluate(tmp_path, nets=8, module=nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)))
    assert result["after"]["accuracy_mean"] > 0.5


def test_damaged_tensor_data_is_reported_on_load(tmp_path):
    datadistill.distill(dataset="digits", steps=1, distill_epochs=1, epochs=1, eval_nets=2,
                        progress=False, out=tmp_path)
    path = tmp_path / ARTIFACT_FILE
    assert datadistill.load(tmp_path).lrs.shape == (1,)  # intact: loads
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    _flip(path, 8 + header_len + 3)  # inside the tensor data
    with pytest.raises(DistillError, match="do not match the stored SHA-256 digest"):
        datadistill.load(tmp_path)


def test_nets_the_processes_cannot_share_are_refused_on_every_rank(monkeypatch, tiny_data):
    """Under torchrun (faked: rank 1 of 2) a fixed init's one net is refused before any work,
    on every rank alike, so none waits in an all-reduce."""
    from datadistill.distributed import World

    monkeypatch.setattr(sys.modules["datadistill.distill"], "current", lambda: World(1, 2))
    with pytest.raises(DistillError, match="cannot be shared by 2 processes"):
        datadistill.distill(data=tiny_data, init="fixed", steps=1, distill_epochs=1, epochs=1,
                            progress=False)
