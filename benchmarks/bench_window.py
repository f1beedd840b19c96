"""Windowed meta-iteration (random-start truncation) on LeNet/MNIST shapes: speed and memory.

    .venv/bin/python benchmarks/bench_window.py [--rounds 3] [--json out.json]

Setting (issue 15): a flat set of 10 images per class (100 images, learned labels), T = 200
inner steps on the whole set, a window of W = 60 steps that keeps a graph, 1,024 real
images, one net. ``straightforward`` is what one writes with plain PyTorch (the way RaT-BPTT's
public code works): ``torch.func.functional_call`` on the module, the steps before the window
under ``torch.no_grad``-free detached gradients, ``create_graph=True`` through the window,
one backward. ``datadistill`` is ``backends.choose_meta_gradient`` under ``--backend auto`` (the compiled LeNet
on a CPU). Both run the same window each round; rounds interleave the two; medians are
reported. Memory: each T in {60, 600} with W = 60 in a fresh process, how far the resident
set peaks above its size before one meta-iteration (Linux).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402

from datadistill.backends import choose_meta_gradient  # noqa: E402
from datadistill.functional import FunctionalModel  # noqa: E402
from datadistill.init_distributions import RandomInit  # noqa: E402
from datadistill.models import build_model  # noqa: E402
from datadistill.state import DistilledSteps, inverse_softplus  # noqa: E402


def make_case(total_steps: int = 200, per_class: int = 10, batch: int = 1024, seed: int = 0,
              downscale: int = 1):
    """LeNet, a flat set (1, 10 × per_class, 1, 28, 28) with learned labels, T raw lrs, one
    net's initial weights and a real batch (synthetic tensors of MNIST's shapes); with
    ``downscale`` F the set stores F × F as many images at 28 / F a side (``--downscale``;
    for the backends only: ``straightforward`` does not enlarge them)."""
    gen = torch.Generator().manual_seed(seed)
    module = build_model("lenet", (1, 28, 28), 10)
    per_class, side = per_class * downscale ** 2, 28 // downscale
    n = 10 * per_class
    classes = torch.arange(10).repeat_interleave(per_class)
    steps = DistilledSteps(torch.randn(1, n, 1, side, side, generator=gen),
                           (4.4 * F.one_hot(classes, 10).float()).unsqueeze(0),
                           torch.full((total_steps,), inverse_softplus(0.01)),
                           full_size=(28, 28) if downscale > 1 else None)
    params = RandomInit(module).sample(1, gen)
    real_x = torch.randn(batch, 1, 28, 28, generator=gen)
    real_y = torch.randint(0, 10, (batch,), generator=gen)
    return module, steps, params, real_x, real_y


def fresh(steps: DistilledSteps) -> DistilledSteps:
    return DistilledSteps(*(t.detach().clone().requires_grad_() for t in
                            (steps.images, steps.labels, steps.raw_lrs)),
                          full_size=steps.full_size)


def straightforward(module, steps: DistilledSteps, params, real_x, real_y,
                    window: range) -> float:
    """Plain PyTorch truncated backprop; accumulates ``.grad`` of the learnable tensors."""
    theta = {k: v[0].detach() for k, v in params.items()}
    images, targets = steps.images[0], F.softmax(steps.labels[0], -1)
    lrs = F.softplus(steps.raw_lrs)
    for t in range(window.start):  # no graph before the window
        theta = {k: v.requires_grad_() for k, v in theta.items()}
        loss = F.cross_entropy(functional_call(module, theta, (images.detach(),)),
                               targets.detach())
        grads = torch.autograd.grad(loss, list(theta.values()))
        theta = {k: (v - lrs[t].detach() * g).detach() for (k, v), g in zip(theta.items(), grads)}
    theta = {k: v.requires_grad_() for k, v in theta.items()}
    for t in window:
        loss = F.cross_entropy(functional_call(module, theta, (images,)), targets)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {k: v - lrs[t] * g for (k, v), g in zip(theta.items(), grads)}
    module.eval()
    meta_loss = F.cross_entropy(functional_call(module, theta, (real_x,)), real_y)
    module.train()
    meta_loss.backward(inputs=list(steps.learnable().values()))
    return float(meta_loss.detach())


def ours(module, steps: DistilledSteps, params, real_x, real_y, window: range,
         choice: str = "auto") -> float:
    backend = choose_meta_gradient(FunctionalModel(module, choice), params, steps, real_x)
    return float(backend.run(params, steps, real_x, real_y, window).mean())


def timed(run, case, window: range) -> float:
    module, steps, params, real_x, real_y = case
    steps = fresh(steps)
    start = time.perf_counter()
    run(module, steps, params, real_x, real_y, window)
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable], case, rounds: int
                ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of every run in each round (rounds interleave the runs, each round on one
    random window of 60 steps) and their medians."""
    gen = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        last = int(torch.randint(60, 201, (1,), generator=gen))
        for name, run in runs.items():
            times[name].append(timed(run, case, range(last - 60, last)))
    return times, {name: statistics.median(values) for name, values in times.items()}


def _status_kib(field: str) -> int:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith(field + ":"))
    return int(line.split()[1])


def peak_rise(total_steps: int, window: int) -> float:
    """MiB the resident set peaks above its size before one meta-iteration of ours (Linux:
    the high-water mark is reset through /proc/self/clear_refs first)."""
    case = make_case(total_steps)
    steps = fresh(case[1])
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current size
    ours(case[0], steps, case[2], case[3], case[4], range(total_steps - window, total_steps))
    return (_status_kib("VmHWM") - before) / 1024


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        print(json.dumps({"peak_rise_mib": peak_rise(int(sys.argv[2]), int(sys.argv[3]))}))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    times, medians = interleaved(
        {"straightforward": straightforward, "datadistill": ours}, make_case(), args.rounds)
    ratio = medians["straightforward"] / medians["datadistill"]
    print(f"T=200 W=60, 100 images, learned labels: straightforward "
          f"{medians['straightforward']:.3f} s, datadistill {medians['datadistill']:.3f} s "
          f"per meta-iteration: x{ratio:.2f}")
    peaks = {}
    for total in (60, 600):
        out = subprocess.run([sys.executable, __file__, "--peak", str(total), "60"],
                             capture_output=True, text=True, check=True).stdout
        peaks[total] = json.loads(out.strip().splitlines()[-1])["peak_rise_mib"]
    print(f"peak memory rise, W=60: T=60 {peaks[60]:.1f} MiB, T=600 {peaks[600]:.1f} MiB "
          f"({peaks[600] / peaks[60]:.2f}x)")
    print(machine(), time.strftime("%Y-%m-%d"))
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": times, "ratio": ratio,
                                               "peak_rise_mib": peaks}, indent=2))


if __name__ == "__main__":
    main()
