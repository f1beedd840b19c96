"""Real gloo process groups on the loopback: 2 ranks must equal 1 process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import datadistill
from datadistill.distributed import World, init_from_env, leave_process_group
from datadistill.evaluate import evaluate_steps, schedule
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit

from .conftest import TinyConvNet, make_dataset

SETTINGS = dict(steps=2, distill_epochs=2, images_per_class=1, epochs=3, batch_size=32,
                nets_per_iteration=2, eval_nets=6, progress=False)
KRR = dict(method="krr", labels="learned", steps=1, images_per_class=2, epochs=3,
           batch_size=32, nets_per_iteration=2, progress=False)  # no inner steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluation(world_size: int = 1):
    data = make_dataset()
    module = TinyConvNet()
    gen = torch.Generator().manual_seed(3)
    images, labels = data.train_images[:6].view(2, 3, 1, 4, 4), data.train_labels[:6].view(2, 3)
    steps = schedule(images, labels, 0.1, 2)
    return evaluate_steps(FunctionalModel(module), RandomInit(module), steps, data.test_images,
                          data.test_labels, nets=7, generator=gen, nets_per_batch=3,
                          test_before=True).after


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert init_from_env() == World(rank, world_size)
    result = datadistill.distill(data=make_dataset(), module=TinyConvNet(), **SETTINGS)
    regressed = datadistill.distill(data=make_dataset(), module=TinyConvNet(), **KRR)
    evaluation = _evaluation()
    if rank == 0:
        final = result.meta["metrics"]["final"]
        save_file({"images": result.images, "lrs": result.lrs,
                   "krr_images": regressed.images, "krr_labels": regressed.labels,
                   "final_accuracy": torch.tensor(final["accuracy_mean"]),
                   "accuracies": evaluation.accuracies, "losses": evaluation.losses}, out)
    dist.barrier()  # neither rank tears gloo down while the other still uses it
    leave_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("dist") / "rank0.safetensors"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return load_file(out)


def test_two_ranks_with_one_net_each_equal_one_process_with_two_nets(two_ranks):
    single = datadistill.distill(data=make_dataset(), module=TinyConvNet(), **SETTINGS)
    assert torch.allclose(two_ranks["images"], single.images, atol=1e-5)
    assert torch.allclose(two_ranks["lrs"], single.lrs, atol=1e-5)
    assert float(two_ranks["final_accuracy"]) == pytest.approx(
        single.meta["metrics"]["final"]["accuracy_mean"], abs=1e-6)


def test_kernel_regression_on_two_ranks_equals_one_process(two_ranks):
    single = datadistill.distill(data=make_dataset(), module=TinyConvNet(), **KRR)
    assert torch.allclose(two_ranks["krr_images"], single.images, atol=1e-5)
    assert torch.allclose(two_ranks["krr_labels"], single.labels, atol=1e-5)


def test_evaluation_across_two_ranks_equals_one(two_ranks):
    single = _evaluation()
    assert torch.equal(two_ranks["accuracies"], single.accuracies)
    assert torch.allclose(two_ranks["losses"], single.losses, atol=1e-5)


def test_shares_cover_every_item_once():
    for n in range(0, 9):
        parts = [World(rank, 3).share(n) for rank in range(3)]
        assert [i for part in parts for i in part] == list(range(n))


def test_torchrun_runs_the_cli_unchanged(tmp_path):
    """No extra flags: by default each process trains one net per meta-iteration."""
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()),
               "-m", "datadistill", "distill", "--dataset", "digits", "--epochs", "1",
               "--steps", "1", "--distill-epochs", "1", "--eval-nets", "4", "--no-progress", "--out", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("distilled ") == 1  # rank 0 alone prints
    assert (tmp_path / "run" / "distilled.safetensors").is_file()
    assert datadistill.load(tmp_path / "run").meta["metrics"]["final"]["nets"] == 4


def test_the_cli_leaves_the_process_group_it_ran_in():
    """A rank that exits with its gloo group open can abort (SIGABRT) at interpreter exit."""
    from datadistill.cli import main

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                            rank=0, world_size=1)
    try:
        assert main(["list"]) == 0
        assert not dist.is_initialized()
    finally:
        leave_process_group()
