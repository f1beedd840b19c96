"""One --backend for every command: ``pytorch`` runs no compiled code anywhere; ``auto`` does
where a kernel applies, and the reports say which backend ran."""
import json

import pytest

from datadistill import kernels
from datadistill.cli import main

MNIST = ["--dataset", "mnist-5k", "--device", "cpu"]
CONVERGE = ["--protocol", "converge", "--epochs", "1", "--nets", "1"]


@pytest.fixture
def kernel_calls(monkeypatch):
    """Every compiled kernel loaded while the test runs, by name (none is really built)."""
    loaded: list[str] = []

    def refuse(name: str) -> None:
        loaded.append(name)
        return None  # as where no compiler works: the caller falls back to PyTorch

    monkeypatch.delenv("DATADISTILL_NO_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_compiled", refuse)
    return loaded


def _commands(root, backend: str) -> list[list[str]]:
    """distill, evaluate (both protocols), baseline (both protocols) and pretrain, all on
    LeNet or ConvNet, where kernels apply."""
    run, pool = str(root / "run"), str(root / "pool")
    return [
        ["distill", "--out", run, *MNIST, "--epochs", "1", "--batch-size", "2000", "--steps", "2",
         "--distill-epochs", "1", "--eval-nets", "2", "--no-progress", "--backend", backend],
        ["evaluate", run, "--nets", "2", "--device", "cpu", "--backend", backend],
        ["evaluate", run, *CONVERGE, "--model", "convnet", "--device", "cpu",
         "--backend", backend],
        ["baseline", "--method", "random", "--out", str(root / "random"), *MNIST, "--steps", "1",
         "--distill-epochs", "1", "--nets", "2", "--search-nets", "2", "--backend", backend],
        ["baseline", "--method", "random", "--out", str(root / "random-converge"), *MNIST,
         *CONVERGE, "--model", "convnet", "--backend", backend],
        ["pretrain", "--dataset", "mnist-5k", "--models", "2", "--held-out", "1", "--epochs", "1",
         "--out", pool, "--device", "cpu", "--backend", backend],
    ]


@pytest.mark.parametrize("backend", ["pytorch", "auto"])
def test_the_backend_reaches_every_command_and_pytorch_loads_no_kernel(tmp_path, kernel_calls,
                                                                      backend):
    for command in _commands(tmp_path, backend):
        before = len(kernel_calls)
        assert main(command) == 0, command
        if backend == "auto":  # the check can fail: auto does reach for a kernel each time
            assert len(kernel_calls) > before, command
    if backend == "pytorch":
        assert kernel_calls == []
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["backend"] == "pytorch"  # auto found no kernel built, so PyTorch ran


def test_reports_name_the_backend(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["distill", "--out", run, *MNIST, "--epochs", "1", "--batch-size", "4000",
                 "--steps", "1", "--distill-epochs", "1", "--eval-nets", "1", "--no-progress",
                 "--backend", "pytorch"]) == 0
    capsys.readouterr()
    assert main(["evaluate", run, "--nets", "1", "--json", "--backend", "pytorch"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "pytorch"
    assert main(["evaluate", run, *CONVERGE, "--json", "--backend", "pytorch"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "pytorch" and report["runner"] == "pytorch"
