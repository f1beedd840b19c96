"""Seconds per meta-iteration: datadistill's modes beside the yardstick, in one run.

    .venv/bin/python benchmarks/bench_meta_iteration.py [--rounds 5] [--json out.json]

Settings: MNIST/LeNet at the paper's setting (10 steps x 3 epochs, 1 image per class per
step, 1,024 real images) with 1 and 4 nets per iteration, and CIFAR-10-shaped
AlexCifarNet (synthetic tensors). The yardstick runs its nets one after another. Ours runs
in PyTorch only (``pytorch-full``, ``pytorch-backgrad``) and, for LeNet, through the
compiled kernel (``compiled``: what datadistill does by default on a CPU). Rounds
interleave the methods so drifting machine speed hits them alike; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from yardstick import FlatNet, textbook, yardstick_iteration  # noqa: E402

from datadistill.functional import FunctionalModel  # noqa: E402
from datadistill.init_distributions import RandomInit  # noqa: E402
from datadistill.backends import choose_meta_gradient  # noqa: E402
from datadistill.state import DistilledSteps  # noqa: E402
from datadistill.models import build_model  # noqa: E402

SETTINGS = {
    "lenet-mnist": ("lenet", (1, 28, 28)),
    "alexcifarnet-cifar10": ("alexcifarnet", (3, 32, 32)),
}


def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
            f"cpu capability {torch.backends.cpu.get_cpu_capability()}")


def make_case(arch: str, shape: tuple[int, int, int], steps: int = 10, epochs: int = 3,
              batch: int = 1024, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    module = build_model(arch, shape, 10)
    images = torch.randn(steps, 10, *shape, generator=gen)
    labels = torch.arange(10).repeat(steps, 1)
    raw = torch.full((steps * epochs,), -3.9)
    real_x = torch.randn(batch, *shape, generator=gen)
    real_y = torch.randint(0, 10, (batch,), generator=gen)
    return module, images, labels, raw, real_x, real_y, gen


def time_ours(case, nets: int, mode: str, chunk: int, kernels: bool = True) -> float:
    """Seconds of one meta-iteration; ``kernels=False`` runs the PyTorch backend only."""
    module, images, labels, raw, real_x, real_y, gen = case
    params = RandomInit(module).sample(nets, gen)
    steps = DistilledSteps(images.clone().requires_grad_(), labels, raw.clone().requires_grad_())
    backend = choose_meta_gradient(FunctionalModel(module, "auto" if kernels else "pytorch"),
                                   params, steps, real_x, mode, 1, chunk)
    start = time.perf_counter()
    backend.run(params, steps, real_x, real_y)
    return time.perf_counter() - start


def time_yardstick(case, nets: int) -> float:
    module, images, labels, raw, real_x, real_y, gen = case
    flat = FlatNet(textbook(module))
    inits = [flat.flatten({k: v[0] for k, v in RandomInit(module).sample(1, gen).items()})
             for _ in range(nets)]
    leaves = [images[s].clone().requires_grad_() for s in range(images.shape[0])]
    raw_leaf = raw.clone().requires_grad_()
    start = time.perf_counter()
    for w0 in inits:
        yardstick_iteration(flat, w0, leaves, list(labels), raw_leaf, real_x, real_y)
    return time.perf_counter() - start


def meta_iteration_flops(case, nets: int) -> int:
    """FLOPs of one full-backprop meta-iteration in PyTorch (torch.utils.flop_counter; the
    compiled kernel does the same work but is invisible to the counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        time_ours(case, nets, "full", 512, kernels=False)
    return counter.get_total_flops()


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 matrix-multiply throughput (GFLOP/s), the floor's yardstick."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    gflops = matmul_gflops()
    print(f"fp32 matrix multiply: {gflops:.0f} GFLOP/s", flush=True)
    for name in args.settings:
        arch, shape = SETTINGS[name]
        case = make_case(arch, shape)
        for nets in (1, 4):
            flops = meta_iteration_flops(case, nets)
            floor = flops / (gflops * 1e9)
            rows.append({"setting": name, "nets": nets, "gflop": flops / 1e9, "floor_s": floor})
            print(f"{name:22s} nets={nets} {flops / 1e9:.2f} GFLOP per meta-iteration -> "
                  f"{1e3 * floor:.1f} ms at {gflops:.0f} GFLOP/s", flush=True)
            methods = {"yardstick": lambda: time_yardstick(case, nets)}
            for mode in ("full", "backgrad"):
                methods[f"pytorch-{mode}"] = (lambda m=mode: time_ours(case, nets, m, 512, False))
            if arch == "lenet":  # the compiled kernel (both modes run it: same gradient)
                methods["compiled"] = lambda: time_ours(case, nets, "backgrad", 512)
            for fn in methods.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {k: [] for k in methods}
            for _ in range(args.rounds):
                for key, fn in methods.items():
                    times[key].append(fn())
            base = statistics.median(times["yardstick"])
            for key, values in times.items():
                med = statistics.median(values)
                rows.append({"setting": name, "nets": nets, "method": key, "seconds": med,
                             "speedup_vs_yardstick": base / med})
                print(f"{name:22s} nets={nets} {key:15s} {med:7.3f} s/it  "
                      f"x{base / med:4.2f} vs yardstick", flush=True)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "matmul_gflops": gflops,
              "rows": rows}
    print(report["machine"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
