"""Run folders: a finished run is refused unless resumed or overwritten, an overwrite swaps
the new files in only once written, and a folder being written is locked."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import datadistill
from datadistill.artifacts import ARTIFACT_FILE, CHECKPOINT_FILE, META_FILE, load_tensors
from datadistill.errors import DistillError
from datadistill.pools import MANIFEST_FILE, POOL_FILE
from datadistill.runfolder import LOCK_FILE, RESULT_FILES, STAGING, claim

QUICK = dict(dataset="digits", steps=1, distill_epochs=1, epochs=1, eval_nets=2, progress=False)
CLI_QUICK = ["--dataset", "digits", "--steps", "1", "--distill-epochs", "1", "--eval-nets", "2",
             "--no-progress", "--device", "cpu"]


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _visible(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_result_files_are_the_files_the_writers_write():
    assert set(RESULT_FILES) == {META_FILE, ARTIFACT_FILE, CHECKPOINT_FILE, MANIFEST_FILE,
                                 POOL_FILE}


def test_a_finished_run_is_refused_then_replaced_with_overwrite(tmp_path):
    datadistill.distill(out=tmp_path, **QUICK)
    before = _files(tmp_path)
    with pytest.raises(DistillError, match="already holds a run .*pass --overwrite to replace "
                                           "it, or --resume to continue it"):
        datadistill.distill(out=tmp_path, seed=5, **QUICK)
    assert _files(tmp_path) == before
    (tmp_path / "notes.txt").write_text("the old run's")
    datadistill.distill(out=tmp_path, seed=5, overwrite=True, **QUICK)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["config"]["seed"] == 5 and not (tmp_path / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no lock, no staging


def test_a_failed_overwrite_leaves_the_old_run_untouched(tmp_path):
    datadistill.distill(out=tmp_path, **QUICK)
    before = _files(tmp_path)
    with pytest.raises(DistillError, match="distillation diverged"):
        datadistill.distill(out=tmp_path, distill_lr=1e30, overwrite=True, **QUICK)
    assert _files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(before)


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(DistillError, match="pass one of them"):
        datadistill.distill(out=tmp_path, resume=True, overwrite=True, **QUICK)


def test_a_held_lock_refuses_a_second_writer_and_is_released(tmp_path):
    with claim(tmp_path / "run") as folder:
        assert folder == tmp_path / "run" and (folder / LOCK_FILE).is_file()
        with pytest.raises(DistillError, match=f"is being written by pid {os.getpid()} on host"):
            datadistill.distill(out=folder, **QUICK)
    assert not (tmp_path / "run").exists()  # created for the lock, left empty: removed
    datadistill.distill(out=tmp_path / "run", **QUICK)
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_dead_process_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename,
                                                  "started": time.time()}))
    (tmp_path / STAGING).mkdir()  # the dead run's unfinished overwrite
    datadistill.distill(out=tmp_path, **QUICK)
    assert f"took over {tmp_path / LOCK_FILE} from pid {dead}" in capsys.readouterr().err
    assert not (tmp_path / LOCK_FILE).exists() and not (tmp_path / STAGING).exists()


def test_concurrent_runs_into_one_folder(tmp_path):
    """A second run started while the first writes is refused in one line and leaves the
    folder to the first (interrupted here once the second is refused: only its checkpoint)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "datadistill", "distill", "--out", str(out), *CLI_QUICK]
    first = subprocess.Popen([*command, "--epochs", "100000", "--checkpoint-every", "1"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        while not (out / CHECKPOINT_FILE).is_file():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run([*command, "--epochs", "1", "--seed", "5"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130, first.stderr.read()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"is being written by pid {first.pid} on host" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE]  # the lock released
    _, info = load_tensors(out / CHECKPOINT_FILE)
    assert info["config"]["seed"] == 0 and info["config"]["epochs"] == 100000


# run the CLI, killed with SIGKILL at the Nth fsync of a file named argv[1] (argv[2] = N):
# its data is then in the temporary file, not yet moved over the real one
KILLER = """
import os, signal, sys
name, count = sys.argv[1], [int(sys.argv[2])]
real_fsync = os.fsync
def fsync(fd):
    real_fsync(fd)
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("." + name):
        count[0] -= 1
        if count[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
os.fsync = fsync
from datadistill.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _killed_at(name: str, nth: int, *argv: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLER, name, str(nth), *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = ["distill", "--out", str(out), *CLI_QUICK, "--epochs", "3"]
    _killed_at(CHECKPOINT_FILE, 2, *argv)  # while writing epoch 2's
    _, info = load_tensors(out / CHECKPOINT_FILE)
    assert info["epoch"] == 1 and _visible(out) == [CHECKPOINT_FILE]
    datadistill.distill(out=out, resume=True, progress=False)  # the stale lock is taken over
    assert datadistill.load(out).meta["metrics"]["epochs_run"] == 3
    assert not any(p.name.startswith(".") for p in out.iterdir())  # lock, temporary file gone


def test_kill_9_during_an_overwrites_artifact_write_leaves_the_old_run(tmp_path):
    out = tmp_path / "run"
    datadistill.distill(out=out, **QUICK)
    before = _files(out)
    _killed_at(ARTIFACT_FILE, 1, "distill", "--out", str(out), "--overwrite", *CLI_QUICK,
               "--epochs", "1", "--seed", "5")
    assert {k: v for k, v in _files(out).items() if not k.startswith(".")} == before
    datadistill.distill(out=out, overwrite=True, seed=5, **QUICK)
    assert datadistill.load(out).meta["config"]["seed"] == 5
