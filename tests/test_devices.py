"""On a CUDA GPU, where one is present, the core gives the CPU's results, in float64 so that
rounding cannot hide a difference: the windowed meta-gradient (learned labels, minibatches,
momentum, DSA) of a user's module, the converge protocol's training (one net as its own
module, and stacked nets), and a run of the command line. Every test also runs with the CPU
as the device, which checks the test itself where no GPU is."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from datadistill.augment import DSA
from datadistill.cli import main
from datadistill.converge import ConvergeSettings, train_to_convergence
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.inner_loop import meta_gradient
from datadistill.models import build_model
from datadistill.state import DistilledSteps

from .test_inner_loop import _windowed_problem

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


def _steps_on(steps: DistilledSteps, device: str) -> DistilledSteps:
    """A copy of ``steps`` on ``device``, its learnable tensors fresh leaves there."""
    moved = {k: v.detach().to(device).requires_grad_(v.requires_grad)
             for k, v in steps.learnable().items()}
    on_device = steps.with_tensors(moved)
    if not steps.learns_labels:
        on_device = replace(on_device, labels=steps.labels.to(device))
    order = None if steps.order is None else steps.order.to(device)
    return replace(on_device, order=order)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["full", "backgrad"])
def test_windowed_meta_gradient_on_the_device_equals_the_cpus(device, mode):
    fmodel, params, steps, real_x, real_y = _windowed_problem(True, 4, 0.5, DSA())
    runs = []
    for where in ("cpu", device):
        on_device = _steps_on(steps, where)
        losses = meta_gradient(FunctionalModel(copy.deepcopy(fmodel.module).to(where)),
                               {k: v.to(where) for k, v in params.items()}, on_device,
                               real_x.to(where), real_y.to(where), mode, keep_every=2,
                               window=range(2, 5))
        assert losses.device.type == torch.device(where).type
        runs.append((losses.cpu(), {k: v.grad.cpu() for k, v in on_device.learnable().items()}))
    (cpu_losses, cpu_grads), (losses, grads) = runs
    torch.testing.assert_close(losses, cpu_losses, rtol=1e-9, atol=1e-12)
    assert set(grads) == {"images", "raw_lrs", "label_logits"}
    for name, grad in grads.items():
        assert cpu_grads[name].abs().max() > 0, name
        torch.testing.assert_close(grad, cpu_grads[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nets", [1, 2])
def test_converge_training_on_the_device_equals_the_cpus(device, nets):
    """Soft targets, DSA, minibatches of 5 of 12 images: one net trains as its own module
    copy, two as stacked parameters."""
    module = build_model("convnet-w16", (1, 8, 8), 4).double()
    params = RandomInit(module, "default").sample(nets, torch.Generator().manual_seed(0))
    draws = torch.Generator().manual_seed(1)
    images = torch.randn(12, 1, 8, 8, dtype=torch.float64, generator=draws)
    targets = torch.softmax(torch.randn(12, 4, dtype=torch.float64, generator=draws), 1)
    settings = ConvergeSettings(epochs=3, lr=0.05, batch_size=5)
    runs = []
    for where in ("cpu", device):
        trained = train_to_convergence(
            FunctionalModel(copy.deepcopy(module).to(where)),
            {k: v.to(where) for k, v in params.items()}, images.to(where), targets.to(where),
            settings, DSA(("crop", "scale", "rotate")), torch.Generator().manual_seed(2))
        assert {v.device.type for v in trained.values()} == {torch.device(where).type}
        runs.append({k: v.cpu() for k, v in trained.items()})
    for k in params:
        assert not torch.equal(runs[0][k], params[k])
        torch.testing.assert_close(runs[1][k], runs[0][k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_distill_and_evaluate_run_on_the_device(tmp_path, capsys, device):
    """Learned labels and a window through the command line; the backend is PyTorch's on a
    GPU (the compiled LeNet is a CPU kernel)."""
    out = tmp_path / "run"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    assert main(["distill", "--out", str(out), "--dataset", "digits", "--steps", "2",
                 "--distill-epochs", "2", "--window", "2", "--labels", "learned", "--epochs",
                 "1", "--eval-nets", "2", "--no-progress", "--device", device]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["device"] == device
    if device == "cuda":  # the run held tensors on the GPU
        assert meta["backend"] == "pytorch" and torch.cuda.max_memory_allocated() > 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--nets", "2", "--json", "--device", device]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["after"]["nets"] == 2 and 0 <= result["after"]["accuracy_mean"] <= 1
