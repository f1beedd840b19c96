"""Peak memory of one meta-iteration at T = 30 and T = 300 inner steps, per reverse mode.

    .venv/bin/python benchmarks/bench_memory.py [--settings lenet-mnist]

LeNet runs twice: through the compiled kernel (datadistill's default on a CPU) and with
DATADISTILL_NO_KERNELS=1 (PyTorch only). Each measurement runs in a fresh process: after setup it records the resident-set high-water
mark, runs one meta-iteration, and reports how far the high-water mark rose (CPU), or
torch.cuda.max_memory_allocated (GPU). Back-gradient keeps every k-th weight with
k = ceil(sqrt(T)) and recomputes the rest.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import SETTINGS, machine, make_case  # noqa: E402

CASES = [(t, mode) for t in (30, 300) for mode in ("backgrad", "full")
         if not (mode == "full" and t == 300)]  # full backprop at T=300 is what backgrad avoids


def measure(setting: str, total_steps: int, mode: str) -> dict:
    """One meta-iteration in this process; the rise of the memory high-water mark in MiB."""
    from datadistill.functional import FunctionalModel
    from datadistill.init_distributions import RandomInit
    from datadistill.backends import choose_meta_gradient
    from datadistill.state import DistilledSteps

    arch, shape = SETTINGS[setting]
    module, images, labels, raw, real_x, real_y, gen = make_case(
        arch, shape, steps=10, epochs=total_steps // 10)
    params = RandomInit(module).sample(1, gen)
    steps = DistilledSteps(images.requires_grad_(), labels, raw.requires_grad_())
    keep = math.ceil(math.sqrt(total_steps)) if mode == "backgrad" else 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    choose_meta_gradient(FunctionalModel(module, "auto"), params, steps, real_x, mode, keep,
                         512).run(params, steps, real_x, real_y)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"setting": setting, "T": total_steps, "mode": mode, "keep_every": keep,
            "peak_rise_mib": peak / 1024, "seconds": seconds}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] in SETTINGS:
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    variants = [(s, kernels) for s in args.settings
                for kernels in ((True, False) if SETTINGS[s][0] == "lenet" else (False,))]
    for setting, kernels in variants:
        name = f"{setting}{' compiled' if kernels else ''}"
        env = {**os.environ, "DATADISTILL_NO_KERNELS": "" if kernels else "1"}
        rows = []
        for total, mode in CASES:
            out = subprocess.run([sys.executable, __file__, setting, str(total), mode], env=env,
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{name:31s} T={total:3d} {mode:8s} keep={row['keep_every']:2d} "
                  f"peak +{row['peak_rise_mib']:7.1f} MiB  {row['seconds']:6.2f} s", flush=True)
        small = next(r for r in rows if r["T"] == 30 and r["mode"] == "backgrad")
        large = next(r for r in rows if r["T"] == 300)
        print(f"{name}: backgrad T=300 / T=30 peak = "
              f"{large['peak_rise_mib'] / small['peak_rise_mib']:.2f}x", flush=True)
    print(machine(), time.strftime("%Y-%m-%d"))


if __name__ == "__main__":
    main()
