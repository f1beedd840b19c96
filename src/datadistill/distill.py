"""Algorithm 1 with many steps and epochs: learn distilled images and learning rates.

One commented loop, top to bottom; the only place with side effects (progress,
evaluation, checkpoints, artifacts).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .artifacts import CHECKPOINT_FILE, Distilled, after_saving, load_tensors, run_meta
from .augment import dsa_for
from .config import CONVERGE_INIT, ConvergeSettings, DistillConfig, check_known
from .data import Dataset, check_downscale, hold_out, load_dataset, relabel
from .distributed import World, current
from .errors import DistillError
from .evaluate import Evaluation, converge_report, evaluate_steps, schedule
from .floor import few_step_floor, random_real_set
from .functional import FunctionalModel
from .init_distributions import InitDistribution, RandomInit
from .methods import METHODS
from .models import build_model
from .pools import initial_weights
from .resize import resize_images, shrunk_size, stored_count
from .runfolder import writes_run_folder
from .runstate import RunState, method_state
from .runtime import generator, resolve_device
from .selectors import check_real_images_suffice, class_layout, images_for
from .state import DistilledSteps, new_steps
from .tracking import Tracker, check_log_dir

FINAL_CHECKS = {  # what --final-checks runs, as the run announces it
    "few-step": "{nets} fresh nets on the set's steps and lrs, and as many random real images "
                "on the lr grid",
    "converge": "{nets} fresh nets trained to convergence on the set (the converge protocol)",
}
MAX_NONFINITE_IN_A_ROW = 5  # meta-iterations with a non-finite meta-loss before giving up
INIT_BASELINE = {"real": "random"}  # --image-init names that differ from the baseline's
# settings that may change when a run is resumed; the others must match the checkpoint
RESUMABLE = {"epochs", "eval_every", "eval_nets", "stop_accuracy",
             "checkpoint_every", "progress", "device", "log_dir", "final_checks"}


@writes_run_folder
def distill(
    config: DistillConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    module: nn.Module | None = None,
    data: Dataset | None = None,
    **settings: Any,
) -> Distilled:
    """Distill a dataset into a small synthetic set by ``method`` (the paper's: a few GD
    steps of synthetic images with learned lrs).

    Settings are ``DistillConfig`` fields (e.g. ``dataset="mnist", epochs=30``). ``module``
    may be any ``nn.Module`` (default: the registered ``model``), ``data`` a ``Dataset``
    already loaded (default: the registered ``dataset``). With ``out``, checkpoints and the
    artifact are written there; ``resume=True`` continues the run saved in ``out``,
    ``overwrite=True`` replaces the run there once this one is written (``runfolder``).
    """
    check_known(settings)
    config = replace(config or DistillConfig(), **settings)
    checkpoint = None
    if resume:
        if out is None:
            raise DistillError("resume needs the run folder: pass --out DIR")
        checkpoint, config = _read_checkpoint(Path(out), config, settings)
    method_class = METHODS.get(config.method)
    config = method_class.settle(config)  # e.g. --method dsa turns --dsa on
    config.validate()
    method_class.check(config)
    if config.dsa_ops:
        dsa_for((), config.dsa_ops)  # its one-line error names an unknown operation
    check_log_dir(config.log_dir)
    # --init-from: another run's last iterate of the learned tensors, checked before any work
    start_from = _read_init_from(Path(config.init_from), config) \
        if config.init_from and checkpoint is None else None
    device = resolve_device(config.device)
    start_time = time.perf_counter()

    # ---- data, model, initial-weight distribution
    if data is None:
        data = load_dataset(config.dataset, config.data_root, config.download)
    data = data.to(device)
    held_out = None  # --validation: training images set apart to pick the iterate saved
    if config.validation:
        data, held_out = hold_out(data, config.validation, generator(config.seed, "validation"))
    custom_module = module is not None
    if module is None:
        module = build_model(config.model or data.default_model, data.image_shape,
                             data.num_classes)
    module = module.to(device)
    fmodel = FunctionalModel(module, config.backend)  # the backend of every net this run trains
    data_gen = generator(config.seed, "data")
    init_gen = generator(config.seed, "init")
    init_dist, eval_dist, fixed_params = initial_weights(config.to_dict(), module, data, init_gen)
    world = current()  # under torchrun: this rank trains its share of the nets per iteration
    n_nets = config.nets_per_draw(world.size)
    config = replace(config, nets_per_iteration=n_nets)  # stored resolved: resumes draw alike
    mine = world.share(n_nets)
    _check_fits(config, data, n_nets, world.size)

    # ---- distilled steps (images, labels, lrs), the run's state, the method
    steps = _distilled_steps(config, data, start_from, device)
    run = RunState(config, steps, data_gen, init_gen)
    if checkpoint is not None:
        run.load(checkpoint)
    probe = {k: v.to(device) for k, v in init_dist.sample(1, torch.Generator()).items()}
    method = method_class(config, fmodel, steps, data, probe)  # its backend: in meta.json
    if checkpoint is not None:
        method.load_state(method_state(checkpoint))
    per_epoch = method.iterations_per_epoch(data)
    total = config.iterations or config.epochs * per_epoch  # meta-iterations in all
    epochs = math.ceil(total / per_epoch)
    tracker = Tracker(config.log_dir, data, steps, run.epoch * per_epoch)  # --log-dir
    talk = config.progress and world.is_main
    bar = tqdm(total=total, initial=min(total, run.epoch * per_epoch), disable=not talk,
               unit="it", dynamic_ncols=True)
    if talk:
        bar.write(f"{method.name} on {data.name}: {total - bar.n} meta-iterations to run "
                  f"({per_epoch} an epoch over the real data), a checkpoint every "
                  f"{config.checkpoint_every} epoch(s)")
    timing = _Estimate(bar, total - bar.n, talk)

    # ---- the outer loop (until --epochs / --iterations, or --stop-accuracy)
    latest = None  # the evaluation of the last epoch run, if any
    skipped, nonfinite_in_a_row = 0, 0  # meta-iterations skipped for a non-finite meta-loss
    for epoch in range(run.epoch, epochs):
        for it, (real_images, real_labels) in enumerate(method.batches(data, data_gen)):
            if epoch * per_epoch + it == total:  # --iterations ends inside this epoch
                break
            params = {k: v[mine.start:mine.stop].to(device)
                      for k, v in init_dist.sample(n_nets, init_gen).items()}
            run.optimizer.zero_grad(set_to_none=True)
            losses = method.loss(params, steps, real_images, relabel(real_labels, config.attack),
                                 data_gen)
            meta_loss = _reduce(steps, losses, world, len(mine), n_nets)
            bar.update()
            timing.tick()
            if not math.isfinite(meta_loss):  # some net's inner training blew up: skip it
                nonfinite_in_a_row, skipped = nonfinite_in_a_row + 1, skipped + 1
                whole_epoch = it == per_epoch - 1 and nonfinite_in_a_row > it
                if nonfinite_in_a_row == MAX_NONFINITE_IN_A_ROW or whole_epoch:
                    raise DistillError(
                        f"distillation diverged: meta-loss is {meta_loss} in "
                        f"{nonfinite_in_a_row} meta-iteration(s) in a row (epoch {epoch + 1}, "
                        f"iteration {it + 1}); lower --lr (now {config.lr}) or --distill-lr "
                        f"(now {config.distill_lr}), or add --clip")
                continue
            nonfinite_in_a_row = 0
            run.update()
            bar.set_postfix(epoch=epoch + 1, meta_loss=f"{meta_loss:.4f}")
            tracker.iteration(epoch * per_epoch + it + 1, meta_loss, steps)
        run.scheduler.step()
        run.epoch = done = epoch + 1

        latest, score = None, None  # score: the held-out accuracy
        if config.eval_every and done % config.eval_every == 0:
            eval_start = time.perf_counter()
            evaluation = _evaluate(fmodel, eval_dist, run.kept(), data, config, held_out)
            latest = evaluation.after
            record = {"epoch": done, "iterations": min(total, done * per_epoch),
                      "elapsed_s": run.elapsed_before + eval_start - start_time,
                      **latest.summary()}
            if evaluation.also is not None:  # the same nets scored on the held-out images
                score = record["validation_accuracy"] = evaluation.also.mean
                run.pick.offer(run.kept(), done, score, latest)
            run.history.append({**record, "evaluation_s": time.perf_counter() - eval_start})
            if world.is_main:
                scored = "" if score is None else f"; validation {100 * score:.2f}%"
                bar.write(f"epoch {done}: {latest}{scored}")
        tracker.epoch(done * per_epoch, run.kept(), latest, score)  # the grid of the evaluated
        reached = (latest is not None and config.stop_accuracy > 0  # --validation: held out
                   and (latest.mean if score is None else score) >= config.stop_accuracy)
        if out is not None and world.is_main and (
                done % config.checkpoint_every == 0 or done == epochs or reached):
            run.save(Path(out) / CHECKPOINT_FILE,
                     run.elapsed_before + time.perf_counter() - start_time, method.state())
        if reached:
            if world.is_main:
                bar.write(f"stopping after epoch {done}: reached --stop-accuracy "
                          f"{100 * config.stop_accuracy:g}%")
            break
    bar.close()
    tracker.close()

    # ---- the artifact first; then the final checks and the picture
    metrics: dict[str, Any] = {"history": run.history, "epochs_run": run.epoch}
    if skipped:  # counted since this process started (a resume counts afresh)
        metrics["nonfinite_iterations_skipped"] = skipped
    made = run.made()  # --validation's pick, else the last iterate (--ema: its average)
    if run.pick.record:
        metrics["selected"] = {k: run.pick.record[k] for k in ("epoch", "validation_accuracy")}
    result = Distilled(  # lrs only where the method learned them (else: the converge protocol)
        images=made.full_images().cpu(), labels=made.all_targets().cpu(),
        lrs=made.lrs().detach().cpu() if method.inner_steps else torch.zeros(0),
        init=fixed_params, meta=_meta(config, data, module, custom_module, metrics,
                                      backend=method.backend))
    writes = out is not None and world.is_main

    def save() -> None:
        metrics["wall_time_s"] = run.elapsed_before + time.perf_counter() - start_time
        if writes:
            result.save(out)

    save()
    checks = method.final_checks if config.final_checks == "auto" else config.final_checks
    if talk and checks != "none":
        print(f"final checks: {FINAL_CHECKS[checks].format(nets=_eval_nets(config))} "
              "(--final-checks none skips them)")
    if checks == "few-step":  # the set's own steps and lrs
        after_saving(metrics, "final", lambda: run.pick.record.get("test") or (
            latest or _evaluate(fmodel, eval_dist, made, data, config).after).summary())
        after_saving(metrics, "random_real",
                     lambda: _random_real(fmodel, eval_dist, made, data, config))
    if checks == "converge":  # as `evaluate --protocol converge` scores it
        after_saving(metrics, "converge", lambda: _converged(
            module, type(module).__name__ if custom_module else None, made, data, config))
        if "converge" in metrics:
            metrics["final"] = metrics["converge"]["after"]
    if writes:
        from .plots import save_picture

        after_saving(metrics, "picture", lambda: save_picture(result, data, out).name)
    save()
    return result


class _Estimate:
    """After the first few meta-iterations of this process, one line with the time the
    rest should take."""

    AFTER = 3  # meta-iterations timed before the estimate

    def __init__(self, bar: tqdm, remaining: int, talk: bool) -> None:
        self.bar, self.remaining, self.talk = bar, remaining, talk
        self.count, self.start = 0, time.perf_counter()

    def tick(self) -> None:
        self.count += 1
        if self.talk and self.count == self.AFTER < self.remaining:
            seconds = (time.perf_counter() - self.start) / self.count
            left = seconds * (self.remaining - self.count)
            self.bar.write(f"{seconds:.2f} s a meta-iteration: about "
                           f"{_duration(left)} for the {self.remaining - self.count} left "
                           "(evaluations and checkpoints aside)")


def _duration(seconds: float) -> str:
    """Seconds as a short human figure: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _reduce(steps: DistilledSteps, losses: torch.Tensor, world: World, mine: int,
            n_nets: int) -> float:
    """The meta-loss averaged over all ranks' ``n_nets`` nets (``mine`` of them this
    rank's); the learnable tensors' ``.grad`` the same average on every rank (zero for a
    tensor the loss does not depend on)."""
    for tensor in steps.learnable().values():
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
        if world.size > 1:
            world.sum_(tensor.grad.mul_(mine / n_nets))
    return float(world.sum_(losses.sum()) / n_nets)


def _check_fits(config: DistillConfig, data: Dataset, n_nets: int, processes: int) -> None:
    """One-line refusals of a setting the dataset or the processes cannot take."""
    if n_nets < processes:  # every rank refuses alike (none waits in an all-reduce)
        raise DistillError(f"{n_nets} net(s) per meta-iteration cannot be shared by {processes} "
                           "processes: raise --nets-per-iteration, or run --init fixed / "
                           "pretrained-fixed (one net) in one process")
    attack = config.attack
    if attack is not None and max(attack) >= data.num_classes:
        raise DistillError(f"--attack-class/--target-class must be below {data.num_classes} "
                           f"(the classes of {data.name}), got {attack}")
    check_downscale(data, config.downscale)
    layout = _class_layout(config, data.num_classes)
    check_real_images_suffice(data, int(torch.bincount(layout.flatten()).max()))


def _distilled_steps(config: DistillConfig, data: Dataset,
                     start_from: dict[str, torch.Tensor] | None,
                     device: torch.device) -> DistilledSteps:
    """The learnable steps: --image-init's starting images (stored smaller with
    --downscale) in the class layout, labels fixed, learned or direct, every lr at
    --distill-lr; or --init-from's tensors."""
    layout = _class_layout(config, data.num_classes)  # the class each image starts as
    images = _starting_images(config, data, layout, generator(config.seed, "distilled"))
    full_size = tuple(data.image_shape[-2:]) if config.downscale > 1 else None
    steps = new_steps(images.to(device), layout.to(device), config.steps * config.distill_epochs,
                      config.distill_lr, data.num_classes, config.labels,
                      config.label_confidence, config.momentum,
                      dsa_for(data.class_names, config.dsa_ops) if config.dsa else None,
                      config.lr_per_step, full_size)
    if start_from is None:
        return steps
    return steps.with_tensors({name: start_from[name].to(tensor).requires_grad_()
                               for name, tensor in steps.learnable().items()})


def _class_layout(config: DistillConfig, num_classes: int) -> torch.Tensor:
    """The class of every stored image (steps, n): --downscale F stores F x F times as many."""
    return class_layout(config.steps, num_classes,
                        stored_count(config.images_per_class, config.downscale),
                        stored_count(config.images_per_step, config.downscale))


def _starting_images(config: DistillConfig, data: Dataset, layout: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """--image-init's images for the layout, at the stored size (1/--downscale a side)."""
    size = shrunk_size(data.image_shape, config.downscale)
    if config.image_init == "noise" or config.init_from:  # --init-from replaces them
        return torch.randn(*layout.shape, data.image_shape[0], *size, generator=generator)
    images = images_for(INIT_BASELINE.get(config.image_init, config.image_init), data, layout,
                        generator)
    return resize_images(images, size)


# settings that fix the learned tensors' shapes and meaning: --init-from's run must share them
LAYOUT = ("dataset", "steps", "distill_epochs", "images_per_class", "images_per_step",
          "downscale", "labels", "lr_per_step")


def _read_init_from(run: Path, config: DistillConfig) -> dict[str, torch.Tensor]:
    """--init-from: the learned tensors of RUN's checkpoint, whose layout must be this run's."""
    file = run / CHECKPOINT_FILE
    if not file.is_file():
        raise DistillError(f"--init-from {run}: no {CHECKPOINT_FILE} there; pass the folder "
                           "of a distill run")
    tensors, info = load_tensors(file)
    theirs = info.get("config", {})
    differ = [name for name in LAYOUT if theirs.get(name) != getattr(config, name)]
    if differ:
        raise DistillError(f"--init-from {run}: it was distilled with " + ", ".join(
            f"--{name.replace('_', '-')} {theirs.get(name)}" for name in differ) + "; set "
            "this run's alike")
    return tensors


def _eval_nets(config: DistillConfig) -> int:
    return 1 if config.init in ("fixed", "pretrained-fixed") else config.eval_nets


def _evaluate(fmodel: FunctionalModel, init_dist: InitDistribution, steps: DistilledSteps,
              data: Dataset, config: DistillConfig, held_out: Dataset | None = None) -> Evaluation:
    """Fresh nets (seeds disjoint from distillation's) trained on the distilled steps, tested
    on the test split (and on ``held_out``'s images)."""
    lrs = steps.lrs().detach()
    step_list = schedule(steps.full_images(), steps.all_targets(), lrs, config.distill_epochs,
                         config.minibatch)
    return evaluate_steps(fmodel, init_dist, step_list, data.test_images, data.test_labels,
                          _eval_nets(config), generator(config.seed, "evaluation"),
                          attack=config.attack, momentum=config.momentum,
                          also_test=None if held_out is None
                          else (held_out.test_images, held_out.test_labels))


def _converged(module: nn.Module, custom: str | None, steps: DistilledSteps, data: Dataset,
               config: DistillConfig) -> dict[str, Any]:
    """The converge protocol's report on the set: --eval-nets fresh nets of the run's model
    (PyTorch's own initialisation, as published), DSA when the run used it; ``custom``: the
    class name of a module the user brought."""
    images, labels = steps.full_images().flatten(0, 1), steps.all_targets().flatten(0, 1)
    fmodel = FunctionalModel(module, config.backend)
    init = RandomInit(module, CONVERGE_INIT)
    return converge_report(data, fmodel, init, images, labels, config.eval_nets,
                           ConvergeSettings(), config.dsa, config.dsa_ops, config.seed,
                           custom or config.model or data.default_model)


def _random_real(fmodel: FunctionalModel, init_dist: InitDistribution, steps: DistilledSteps,
                 data: Dataset, config: DistillConfig) -> dict[str, Any]:
    """The random-real floor (``floor.py``, the one definition) on the final check's nets:
    as many random real images in the same steps, class for class as the set's hard labels;
    the best of the learned and the paper's constant lrs.

    For an attack these are real images with class K labelled T; with --downscale they are
    stored as small and enlarged alike (IDC's multi-formed random baseline).
    """
    images, labels = random_real_set(data, steps.all_targets().detach(), config.seed,
                                     config.downscale)
    best, _ = few_step_floor(fmodel, init_dist, data, images, labels, _eval_nets(config),
                             config.seed, "evaluation", steps.lrs().detach(),
                             config.distill_epochs, config.minibatch, config.momentum,
                             config.attack)
    return best


def _meta(config: DistillConfig, data: Dataset, module: nn.Module, custom: bool,
          metrics: dict[str, Any], backend: str) -> dict[str, Any]:
    """The artifact's record; a module the user brought has no registered name (``evaluate``
    then needs it passed again)."""
    model = {"name": None if custom else config.model or data.default_model,
             "class": type(module).__name__,
             "parameters": sum(p.numel() for p in module.parameters())}
    return run_meta(config.to_dict(), data, model, metrics, backend=backend)


# --------------------------------------------------------------------------- checkpoints
def _read_checkpoint(out: Path, config: DistillConfig, settings: dict[str, Any]):
    tensors, info = load_tensors(out / CHECKPOINT_FILE)
    stored = DistillConfig.from_dict(info["config"])
    changed = sorted(k for k, v in settings.items() if k not in RESUMABLE and getattr(stored, k) != v)
    if changed:
        raise DistillError(f"cannot change {', '.join(changed)} when resuming {out}; only "
                           f"{', '.join(sorted(RESUMABLE))} may change")
    resumed = replace(stored, **{k: v for k, v in settings.items() if k in RESUMABLE})
    return (tensors, info), resumed
