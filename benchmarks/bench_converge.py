"""Converge-protocol speed: datadistill's evaluator beside a straightforward one, one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_converge.py --data-root ../shared/data

The straightforward evaluator trains one ``nn.Module`` at a time with ``torch.optim.SGD`` in
a plain loop (a fresh random order each epoch, the same DSA augmentation, lr x0.1 halfway),
then tests it in batches of 256 (as DC's code does). datadistill's evaluator
(``converge.evaluate_converged``) runs as ``datadistill evaluate --protocol converge`` does
(on the CPU: a ConvNet one net at a time through the fused norm-ReLU-pool kernel, in
micro-batches of 64) and, for comparison, without the compiled kernel
(``DATADISTILL_NO_KERNELS=1``: the module's own ops, whole minibatches) and under bfloat16
autocast (``--bf16``: convolutions and matmuls in bfloat16); ``--all`` adds the
straightforward loop under bfloat16 autocast, channels-last inputs and nets stacked N at a
time (vmap). All start from the same initial weights on the same set (random real images);
the variants run interleaved, so a machine shared with other work slows them alike; the
figures are ratios of each variant's fastest round to the straightforward evaluator's.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from datadistill.augment import dsa_for
from datadistill.baselines import random_real
from datadistill.converge import ConvergeSettings, evaluate_converged
from datadistill.data import load_dataset
from datadistill.functional import FunctionalModel
from datadistill.init_distributions import RandomInit
from datadistill.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_iteration import machine  # noqa: E402


def straightforward(module, inits, images, labels, test_x, test_y, settings, augment, seed,
                    bf16=False):
    """One net at a time: a plain training loop, then a plain test loop."""
    gen = torch.Generator().manual_seed(seed)
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16
                else contextlib.nullcontext)
    accuracies = []
    for params in inits:
        net = copy.deepcopy(module)
        net.load_state_dict(params, strict=False)
        net.train()
        sgd = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum,
                              weight_decay=settings.weight_decay)
        for epoch in range(settings.epochs):
            if epoch == settings.epochs // 2:
                sgd.param_groups[0]["lr"] = settings.lr * 0.1
            order = torch.randperm(len(images), generator=gen)
            for start in range(0, len(images), settings.batch_size):
                pick = order[start:start + settings.batch_size]
                x = augment(images[pick].unsqueeze(0), gen)[0] if augment else images[pick]
                sgd.zero_grad()
                with autocast():
                    loss = F.cross_entropy(net(x), labels[pick])
                loss.backward()
                sgd.step()
        net.eval()
        correct = 0
        with torch.no_grad(), autocast():
            for start in range(0, len(test_y), 256):
                predicted = net(test_x[start:start + 256]).argmax(1)
                correct += int((predicted == test_y[start:start + 256]).sum())
        accuracies.append(correct / len(test_y))
    return torch.tensor(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="convnet-w32")
    parser.add_argument("--images-per-class", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--nets", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-dsa", action="store_true")
    parser.add_argument("--all", action="store_true",
                        help="also bfloat16 autocast, channels-last and stacked nets")
    args = parser.parse_args()
    data = load_dataset(args.dataset, args.data_root)
    module = build_model(args.model, data.image_shape, data.num_classes)
    images, labels = random_real(data, 1, args.images_per_class, torch.Generator().manual_seed(0))
    images, labels = images[0], labels[0]
    stacked = RandomInit(module, "default").sample(args.nets, torch.Generator().manual_seed(1))
    inits = [{k: v[i] for k, v in stacked.items()} for i in range(args.nets)]
    augment = None if args.no_dsa else dsa_for(data.class_names)
    base = ConvergeSettings(epochs=args.epochs)
    fmodel = FunctionalModel(module)

    def ours(kernels: bool = True, **options):
        settings = ConvergeSettings(epochs=args.epochs, **options)

        def run():
            before = os.environ.get("DATADISTILL_NO_KERNELS")
            os.environ["DATADISTILL_NO_KERNELS"] = "" if kernels else "1"
            try:
                return evaluate_converged(
                    fmodel, _InOrder(stacked), images, labels, data.test_images,
                    data.test_labels, args.nets, settings, augment,
                    torch.Generator().manual_seed(2)).result.accuracies
            finally:
                if before is None:
                    os.environ.pop("DATADISTILL_NO_KERNELS")
                else:
                    os.environ["DATADISTILL_NO_KERNELS"] = before
        return run

    variants = {
        "straightforward": lambda: straightforward(module, inits, images, labels, data.test_images,
                                                   data.test_labels, base, augment, 2),
        "datadistill": ours(),
        "datadistill without the compiled kernel": ours(kernels=False),
        "datadistill, bfloat16 autocast (--bf16)": ours(bfloat16=True),
    }
    if args.all:
        variants.update({
            "straightforward bf16 autocast": lambda: straightforward(
                module, inits, images, labels, data.test_images, data.test_labels, base,
                augment, 2, bf16=True),
            "datadistill, channels-last": ours(channels_last=True),
            f"datadistill, {args.nets} nets stacked (vmap)": ours(nets_per_batch=args.nets),
        })
    times: dict[str, list[float]] = {name: [] for name in variants}
    accuracy: dict[str, torch.Tensor] = {}
    for round_ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            accuracy[name] = run()
            times[name].append(time.perf_counter() - start)
            print(f"# round {round_ + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    reference = min(times["straightforward"])
    print(f"# {machine()}")
    print(f"# {args.dataset}, {len(images)} random real images, {args.model}, {args.nets} nets, "
          f"{args.epochs} epochs, DSA {'off' if args.no_dsa else ','.join(augment.ops)}, "
          f"{args.rounds} interleaved rounds")
    print(f"{'variant':48s} {'speed vs straightforward':>25s} {'accuracy (mean ± std)':>24s}")
    for name in variants:
        acc = accuracy[name]
        print(f"{name:48s} {reference / min(times[name]):24.2f}x "
              f"{100 * acc.mean():16.2f}% ± {100 * acc.std():.2f}")
    print(f"# straightforward: {reference:.1f} s for all nets (fastest round)")


class _InOrder:
    """The benchmark's initial weights as a sampler: each draw takes the next ones."""

    def __init__(self, params):
        self.params, self.taken = params, 0

    def sample(self, n, generator):
        self.taken += n
        return {k: v[self.taken - n:self.taken].clone() for k, v in self.params.items()}


if __name__ == "__main__":
    main()
