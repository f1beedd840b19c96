"""Evaluation speed: datadistill's evaluator beside a straightforward one, same work, one run.

    .venv/bin/python benchmarks/bench_evaluate.py --run runs/mnist-random --data-root ../shared/data

The straightforward evaluator trains one net at a time on the steps (plain autograd and an
in-place GD update), then tests it on the full test set in batches of 1,024, with the
network as the paper's code writes it (``yardstick.textbook``: ``nn.MaxPool2d`` after each
ReLU). datadistill's evaluator runs twice: as it ships (LeNet's test pass through the compiled
kernel, ``datadistill.kernels``) and with ``DATADISTILL_NO_KERNELS=1`` (PyTorch only). All
evaluate the same initial weights, so their mean accuracies must agree.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import datadistill
from datadistill.evaluate import context_for, evaluate_steps, schedule
from datadistill.init_distributions import PooledInit, stack

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402
from yardstick import textbook  # noqa: E402


@torch.no_grad()
def straightforward(module, inits, steps, test_x, test_y, batch=1024):
    accuracies = []
    for params in inits:
        net = textbook(module)
        net.load_state_dict(params, strict=False)
        net.train()
        for x, y, lr in steps:
            with torch.enable_grad():
                net.zero_grad()
                F.cross_entropy(net(x), y).backward()
            for p in net.parameters():
                p -= lr * p.grad
        net.eval()
        correct = 0
        for start in range(0, len(test_y), batch):
            correct += (net(test_x[start:start + batch]).argmax(1) == test_y[start:start + batch]).sum()
        accuracies.append(float(correct) / len(test_y))
    return torch.tensor(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--nets", type=int, default=200)
    args = parser.parse_args()
    distilled = datadistill.load(args.run)
    data, fmodel, init = context_for(distilled, args.data_root, "cpu")
    steps = schedule(distilled.images, distilled.labels, distilled.lrs,
                     distilled.num_steps // distilled.images.shape[0])
    gen = torch.Generator().manual_seed(0)
    inits = [{k: v[0] for k, v in init.sample(1, gen).items()} for _ in range(args.nets)]

    held_out = PooledInit(stack(inits), list(range(args.nets)))  # the same weights, in order

    def ours() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        accuracies = evaluate_steps(fmodel, held_out, steps, data.test_images, data.test_labels,
                                    args.nets, gen).after.accuracies
        return accuracies, time.perf_counter() - start

    kernel_acc, kernel_s = ours()
    os.environ["DATADISTILL_NO_KERNELS"] = "1"
    torch_acc, torch_s = ours()
    del os.environ["DATADISTILL_NO_KERNELS"]
    start = time.perf_counter()
    plain = straightforward(fmodel.module, inits, steps, data.test_images, data.test_labels)
    plain_s = time.perf_counter() - start
    # float summation order differs between batched and single-net training; a few nets whose
    # 30 steps sit at the edge of stability then end elsewhere, so compare the means
    print(f"{args.nets} nets, {len(data.test_labels)} test images, {len(steps)} steps")
    print(f"straightforward:                 {plain_s:7.1f} s  ({plain_s / args.nets:.3f} s/net)  "
          f"mean accuracy {100 * plain.mean():.2f}%")
    for name, accuracies, seconds in (("datadistill, PyTorch only:", torch_acc, torch_s),
                                      ("datadistill, compiled kernel:", kernel_acc, kernel_s)):
        differing = int(((accuracies - plain).abs() > 1e-3).sum())
        assert abs(float(accuracies.mean() - plain.mean())) < 0.01, (accuracies.mean(), plain.mean())
        print(f"{name:32s} {seconds:7.1f} s  ({seconds / args.nets:.3f} s/net)  "
              f"mean accuracy {100 * accuracies.mean():.2f}%  speed-up x{plain_s / seconds:.2f}  "
              f"({differing} of {args.nets} nets differ by > 0.1 point)")
    print(machine())


if __name__ == "__main__":
    main()
