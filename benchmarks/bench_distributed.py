"""Meta-iterations on 1 process against 2 torchrun processes (gloo, CPU), one run.

    .venv/bin/python benchmarks/bench_distributed.py [--nets 2] [--iterations 20]

The MNIST/LeNet setting of the paper (10 steps x 3 epochs, 1 image per class per step,
1,024 real images) with ``--nets`` initial weights per meta-iteration: one process with
all its threads running them as one batch, against ``torchrun --nproc-per-node 2`` where
each rank runs half the nets on one thread and the image and lr gradients are all-reduced.
Reports nets per second and the share of the time spent in the all-reduce.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine, make_case  # noqa: E402

from datadistill.distributed import init_from_env  # noqa: E402
from datadistill.functional import FunctionalModel  # noqa: E402
from datadistill.init_distributions import RandomInit  # noqa: E402
from datadistill.backends import choose_meta_gradient  # noqa: E402
from datadistill.state import DistilledSteps  # noqa: E402


def timed_iterations(nets: int, iterations: int) -> dict:
    """Seconds per meta-iteration and in the all-reduce, on this rank."""
    world = init_from_env()
    module, images, labels, raw, real_x, real_y, gen = make_case("lenet", (1, 28, 28))
    fmodel = FunctionalModel(module)
    steps = DistilledSteps(images.requires_grad_(), labels, raw.requires_grad_())
    mine = world.share(nets)
    total, reduce = [], []
    for it in range(iterations + 2):  # two warm-up iterations
        params = {k: v[mine.start:mine.stop] for k, v in RandomInit(module).sample(nets, gen).items()}
        steps.images.grad = steps.raw_lrs.grad = None
        start = time.perf_counter()
        choose_meta_gradient(fmodel, params, steps, real_x).run(params, steps, real_x, real_y)
        before_reduce = time.perf_counter()
        for grad in (steps.images.grad, steps.raw_lrs.grad):
            world.sum_(grad.mul_(len(mine) / nets))
        end = time.perf_counter()
        if it >= 2:
            total.append(end - start)
            reduce.append(end - before_reduce)
    return {"rank": world.rank, "world": world.size, "s_per_iteration": statistics.median(total),
            "s_all_reduce": statistics.median(reduce),
            "bytes_all_reduced": 4 * (steps.images.numel() + steps.raw_lrs.numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker:  # inside torchrun
        torch.set_num_threads(1)
        result = timed_iterations(args.nets, args.iterations)
        if result["rank"] == 0:
            print(json.dumps(result))
        return

    one = timed_iterations(args.nets, args.iterations)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", __file__, "--rank-worker",
                           "--nets", str(args.nets), "--iterations", str(args.iterations)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=True)
    two = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"MNIST/LeNet, {args.nets} nets per meta-iteration, median of {args.iterations} "
          f"iterations; {machine()}")
    for name, r in (("1 process, all threads", one), ("2 processes x 1 thread", two)):
        print(f"{name:24s} {r['s_per_iteration']:.3f} s/iteration  "
              f"{args.nets / r['s_per_iteration']:.2f} nets/s  all-reduce "
              f"{1e3 * r['s_all_reduce']:.2f} ms ({100 * r['s_all_reduce'] / r['s_per_iteration']:.1f} %)")
    print(f"speed-up x{one['s_per_iteration'] / two['s_per_iteration']:.2f}; "
          f"{two['bytes_all_reduced']:,} bytes all-reduced per iteration")


if __name__ == "__main__":
    main()
