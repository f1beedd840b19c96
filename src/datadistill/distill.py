"""Algorithm 1 with many steps and epochs: learn distilled images and learning rates.

One commented loop, top to bottom; the only place with side effects (progress,
evaluation, checkpoints, artifacts).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .artifacts import (CHECKPOINT_FILE, Distilled, after_saving, load_tensors, run_meta,
                        save_tensors)
from .augment import dsa_for
from .config import DistillConfig, check_known
from .data import Dataset, check_downscale, hold_out, load_dataset, relabel
from .distributed import current
from .errors import DistillError
from .evaluate import (EvalResult, Evaluation, best_of_grid, evaluate_steps, schedule,
                       schedule_evaluator)
from .functional import FunctionalModel
from .init_distributions import FixedInit, InitDistribution, RandomInit, initial_parameters
from .methods import METHODS
from .models import build_model
from .pools import check_pool_fits, load_pool, load_pretrained
from .resize import resize_images, shrunk_size, stored_count
from .runfolder import writes_run_folder
from .runtime import generator, resolve_device
from .selectors import check_real_images_suffice, class_layout, images_for
from .state import DistilledSteps, new_steps
from .tracking import Tracker, check_log_dir

MAX_NONFINITE_IN_A_ROW = 5  # meta-iterations with a non-finite meta-loss before giving up
INIT_BASELINE = {"real": "random"}  # --image-init names that differ from the baseline's
# settings that may change when a run is resumed; the others must match the checkpoint
RESUMABLE = {"epochs", "eval_every", "eval_nets", "stop_accuracy", "checkpoint_every", "progress",
             "device", "log_dir"}


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
    """Distill a dataset into a few GD steps of synthetic images with learned lrs.

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
    config.validate()
    method_class = METHODS.get(config.method)
    config = method_class.settle(config)  # e.g. --method dsa turns --dsa on
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
    steps_gen = generator(config.seed, "distilled")
    init_dist, eval_dist, fixed_params = _init_distributions(config, module, data, init_gen)
    world = current()  # under torchrun: this rank trains its share of the nets per iteration
    n_nets = config.nets_per_draw(world.size)
    config = replace(config, nets_per_iteration=n_nets)  # stored resolved: resumes draw alike
    mine = world.share(n_nets)
    if n_nets < world.size:  # every rank refuses alike (none waits in an all-reduce)
        raise DistillError(f"{n_nets} net(s) per meta-iteration cannot be shared by {world.size} "
                           "processes: raise --nets-per-iteration, or run --init fixed / "
                           "pretrained-fixed (one net) in one process")
    attack = config.attack
    if attack is not None and max(attack) >= data.num_classes:
        raise DistillError(f"--attack-class/--target-class must be below {data.num_classes} "
                           f"(the classes of {data.name}), got {attack}")
    check_downscale(data, config.downscale)
    layout = _class_layout(config, data.num_classes)  # the class each distilled image starts as
    check_real_images_suffice(data, int(torch.bincount(layout.flatten()).max()))

    # ---- distilled steps: starting images, labels (fixed, learned or direct), lrs through softplus
    images = _starting_images(config, data, layout, steps_gen)  # --downscale: stored smaller
    full_size = tuple(data.image_shape[-2:]) if config.downscale > 1 else None
    steps = new_steps(images.to(device), layout.to(device), config.steps * config.distill_epochs,
                      config.distill_lr, data.num_classes, config.labels,
                      config.label_confidence, config.momentum,
                      dsa_for(data.class_names, config.dsa_ops) if config.dsa else None,
                      config.lr_per_step, full_size)
    if start_from is not None:
        steps = steps.with_tensors({name: start_from[name].to(tensor).requires_grad_()
                                    for name, tensor in steps.learnable().items()})
    optimizer = _outer_optimizer(config, steps)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.decay_epochs, config.decay_factor)

    probe = {k: v.to(device) for k, v in init_dist.sample(1, torch.Generator()).items()}
    method = method_class(config, fmodel, steps, data, probe)  # its backend: in meta.json
    per_epoch = method.iterations_per_epoch(data)
    first_epoch, history, elapsed_before, clip_mean = 0, [], 0.0, 0.0
    # --ema: the running average of the learnable tensors, evaluated and saved in their place
    averages = _snapshot(steps) if config.ema else {}

    pick = Pick()  # --validation: the best-scoring evaluated iterate

    def kept() -> DistilledSteps:
        return steps.with_tensors(averages) if averages else steps

    if checkpoint is not None:
        first_epoch, history, elapsed_before, clip_mean = _restore(
            checkpoint, steps, averages, pick, optimizer, scheduler, data_gen, init_gen)
    tracker = Tracker(config.log_dir, data, steps, first_epoch * per_epoch)  # --log-dir

    # ---- the outer loop (until --epochs, or the first evaluation at --stop-accuracy)
    done, latest = first_epoch, None  # latest: the evaluation of the last epoch run, if any
    skipped, nonfinite_in_a_row = 0, 0  # meta-iterations skipped for a non-finite meta-loss
    bar = tqdm(total=config.epochs * per_epoch, initial=first_epoch * per_epoch,
               disable=not (config.progress and world.is_main), unit="it", dynamic_ncols=True)
    for epoch in range(first_epoch, config.epochs):
        for it, (real_images, real_labels) in enumerate(method.batches(data, data_gen)):
            params = {k: v[mine.start:mine.stop].to(device)
                      for k, v in init_dist.sample(n_nets, init_gen).items()}
            optimizer.zero_grad(set_to_none=True)
            losses = method.loss(params, steps, real_images, relabel(real_labels, attack),
                                 data_gen)
            for tensor in steps.learnable().values():  # one the loss does not depend on
                if tensor.grad is None:
                    tensor.grad = torch.zeros_like(tensor)
            if world.size > 1:  # the mean over all ranks' nets, identical on every rank
                for tensor in steps.learnable().values():
                    world.sum_(tensor.grad.mul_(len(mine) / n_nets))
            meta_loss = float(world.sum_(losses.sum()) / n_nets)
            if not math.isfinite(meta_loss):  # some net's inner training blew up: skip it
                nonfinite_in_a_row += 1
                skipped += 1
                whole_epoch = it == per_epoch - 1 and nonfinite_in_a_row > it
                if nonfinite_in_a_row == MAX_NONFINITE_IN_A_ROW or whole_epoch:
                    raise DistillError(
                        f"distillation diverged: meta-loss is {meta_loss} in "
                        f"{nonfinite_in_a_row} meta-iteration(s) in a row (epoch {epoch + 1}, "
                        f"iteration {it + 1}); lower --lr (now {config.lr}) or --distill-lr "
                        f"(now {config.distill_lr}), or add --clip")
                bar.update()
                continue
            nonfinite_in_a_row = 0
            if config.clip:
                clip_mean = clip_gradient(steps, config.clip, clip_mean)
            optimizer.step()
            if averages:
                _update_averages(averages, steps, config.ema)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, meta_loss=f"{meta_loss:.4f}")
            tracker.iteration(epoch * per_epoch + it + 1, meta_loss, steps)
        scheduler.step()

        done, latest, score = epoch + 1, None, None  # score: the held-out accuracy
        if config.eval_every and done % config.eval_every == 0:
            eval_start = time.perf_counter()
            evaluation = _evaluate(fmodel, eval_dist, kept(), data, config, held_out)
            latest = evaluation.after
            record = {"epoch": done, "iterations": done * per_epoch,
                      "elapsed_s": elapsed_before + eval_start - start_time, **latest.summary()}
            if evaluation.also is not None:  # the same nets scored on the held-out images
                score = record["validation_accuracy"] = evaluation.also.mean
                pick.offer(kept(), done, score, latest)
            history.append({**record, "evaluation_s": time.perf_counter() - eval_start})
            if world.is_main:
                scored = "" if score is None else f"; validation {100 * score:.2f}%"
                bar.write(f"epoch {done}: {latest}{scored}")
        tracker.epoch(done * per_epoch, kept(), latest, score)  # the grid of what is evaluated
        reached = (latest is not None and config.stop_accuracy > 0  # --validation: held out
                   and (latest.mean if score is None else score) >= config.stop_accuracy)
        checkpoint_due = (done % config.checkpoint_every == 0 or done == config.epochs
                          or reached)
        if out is not None and world.is_main and checkpoint_due:
            _write_checkpoint(Path(out), config, done, history,
                              elapsed_before + time.perf_counter() - start_time, clip_mean,
                              steps, averages, pick, optimizer, scheduler, data_gen, init_gen)
        if reached:
            if world.is_main:
                bar.write(f"stopping after epoch {done}: reached --stop-accuracy "
                          f"{100 * config.stop_accuracy:g}%")
            break
    bar.close()
    tracker.close()

    # ---- the artifact first; then the final evaluation, the comparison and the picture
    metrics: dict[str, Any] = {"history": history, "epochs_run": done}
    if skipped:  # counted since this process started (a resume counts afresh)
        metrics["nonfinite_iterations_skipped"] = skipped
    # --validation's pick, else the last iterate (--ema: its average)
    made = steps.with_tensors(pick.tensors) if pick.tensors else kept()
    if pick.record:
        metrics["selected"] = {k: pick.record[k] for k in ("epoch", "validation_accuracy")}
    result = Distilled(
        images=made.full_images().cpu(), labels=made.all_targets().cpu(),
        lrs=made.lrs().detach().cpu(),
        init=fixed_params, meta=_meta(config, data, module, custom_module, metrics,
                                      backend=method.backend))
    writes = out is not None and world.is_main

    def save() -> None:
        metrics["wall_time_s"] = elapsed_before + time.perf_counter() - start_time
        if writes:
            result.save(out)

    save()
    if method.inner_steps:  # the few-step protocol: the set's own steps and lrs
        after_saving(metrics, "final", lambda: pick.record.get("test") or (
            latest or _evaluate(fmodel, eval_dist, made, data, config).after).summary())
        after_saving(metrics, "random_real",
                     lambda: _random_real(fmodel, eval_dist, made, data, config))
    if writes:
        from .plots import save_picture

        after_saving(metrics, "picture", lambda: save_picture(result, data, out).name)
    save()
    return result


def _outer_optimizer(config: DistillConfig, steps: DistilledSteps) -> torch.optim.Optimizer:
    """--optimizer over the learnable tensors (learned labels at --label-lr, if set)."""
    groups = [{"params": [tensor], "lr": config.label_lr or config.lr}
              if name.startswith("label_") else {"params": [tensor]}
              for name, tensor in steps.learnable().items()]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.5)
    return torch.optim.Adam(groups, lr=config.lr, betas=(0.5, 0.999))


def _snapshot(steps: DistilledSteps) -> dict[str, torch.Tensor]:
    """A detached copy of the learnable tensors."""
    return {name: tensor.detach().clone() for name, tensor in steps.learnable().items()}


@dataclass
class Pick:
    """--validation: the tensors of the best-scoring evaluation so far, and its record
    (epoch, held-out accuracy, the test split's summary)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def offer(self, steps: DistilledSteps, epoch: int, score: float, test: EvalResult) -> None:
        """Keep ``steps`` if ``score`` beats every earlier evaluation's."""
        if not self.record or score > self.record["validation_accuracy"]:
            self.tensors = _snapshot(steps)
            self.record = {"epoch": epoch, "validation_accuracy": score, "test": test.summary()}


def _update_averages(averages: dict[str, torch.Tensor], steps: DistilledSteps,
                     decay: float) -> None:
    """--ema: average ← decay × average + (1 − decay) × the learnable tensor, each."""
    with torch.no_grad():
        for name, tensor in steps.learnable().items():
            averages[name].lerp_(tensor, 1 - decay)


def clip_gradient(steps: DistilledSteps, factor: float, running_mean: float) -> float:
    """Scale the learnable tensors' gradient down to ``factor`` × the running mean of its
    norm where it is longer; returns the updated running mean (of the clipped norms)."""
    grads = [t.grad for t in steps.learnable().values()]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))
    if running_mean > 0 and norm > factor * running_mean:
        for grad in grads:
            grad.mul_(factor * running_mean / norm)
        norm = factor * running_mean
    return norm if running_mean == 0 else 0.9 * running_mean + 0.1 * norm


def _init_distributions(config: DistillConfig, module: nn.Module, data: Dataset,
                        init_gen: torch.Generator
                        ) -> tuple[InitDistribution, InitDistribution, dict | None]:
    """p(θ0) to distill with, the one to evaluate on, and the fixed weights (if any).

    Random init is evaluated on fresh draws, a pool on its held-out models, a fixed init
    (random or pretrained) on itself.
    """
    if config.init == "fixed":
        fixed = initial_parameters(module, config.init_scheme, init_gen)
        return FixedInit(fixed), FixedInit(fixed), fixed
    if config.init == "random":
        random_init = RandomInit(module, config.init_scheme)
        return random_init, random_init, None
    if config.init == "pretrained-fixed" and config.weights:
        fixed = load_pretrained(module, config.weights)
        return FixedInit(fixed), FixedInit(fixed), fixed
    pool = load_pool(config.pool)
    check_pool_fits(pool, data, module)
    if config.init == "pretrained-fixed":
        fixed = pool.model(pool.manifest["distill"][0])
        return FixedInit(fixed), FixedInit(fixed), fixed
    return pool.split("distill"), pool.split("held_out"), None


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


def _random_real(fmodel: FunctionalModel, init_dist: InitDistribution, steps: DistilledSteps,
                 data: Dataset, config: DistillConfig) -> dict[str, Any]:
    """As many random real images in the same steps; the best of the learned and fixed lrs.

    For an attack these are real images with class K labelled T; with --downscale they are
    stored as small and enlarged alike (IDC's multi-formed random baseline).
    """
    labels = _class_layout(config, data.num_classes).to(data.train_images.device)
    images = images_for("random", data, labels, generator(config.seed, "random-real"),
                        config.downscale)
    run = schedule_evaluator(fmodel, init_dist, images, relabel(labels, config.attack),
                             data.test_images, data.test_labels, _eval_nets(config), config.seed,
                             "evaluation", attack=config.attack, minibatch=config.minibatch,
                             momentum=config.momentum)
    best, _ = best_of_grid(run, steps.lrs().detach(),
                           epochs=(config.distill_epochs,))
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
def _write_checkpoint(out: Path, config: DistillConfig, epoch: int, history: list,
                      elapsed: float, clip_mean: float, steps: DistilledSteps,
                      averages: dict[str, torch.Tensor], pick: Pick,
                      optimizer: torch.optim.Optimizer,
                      scheduler: Any, data_gen: torch.Generator, init_gen: torch.Generator) -> None:
    """Everything needed to continue exactly where this epoch ended, in one atomic file."""
    tensors = {**steps.learnable(), **{f"ema.{k}": v for k, v in averages.items()},
               **{f"best.{k}": v for k, v in pick.tensors.items()},
               "rng.data": data_gen.get_state(), "rng.init": init_gen.get_state(),
               "rng.torch": torch.get_rng_state()}
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"adam.{index}.{key}"] = torch.as_tensor(value)
    info = {"config": config.to_dict(), "epoch": epoch, "history": history, "elapsed_s": elapsed,
            "clip_mean": clip_mean, "selected": pick.record,
            "scheduler": scheduler.state_dict(), "param_groups": opt_state["param_groups"]}
    save_tensors(out / CHECKPOINT_FILE, tensors, info)


def _read_checkpoint(out: Path, config: DistillConfig, settings: dict[str, Any]):
    tensors, info = load_tensors(out / CHECKPOINT_FILE)
    stored = DistillConfig.from_dict(info["config"])
    changed = sorted(k for k, v in settings.items() if k not in RESUMABLE and getattr(stored, k) != v)
    if changed:
        raise DistillError(f"cannot change {', '.join(changed)} when resuming {out}; only "
                           f"{', '.join(sorted(RESUMABLE))} may change")
    resumed = replace(stored, **{k: v for k, v in settings.items() if k in RESUMABLE})
    return (tensors, info), resumed


def _restore(checkpoint, steps: DistilledSteps, averages: dict[str, torch.Tensor],
             pick: Pick, optimizer: torch.optim.Optimizer, scheduler: Any,
             data_gen: torch.Generator, init_gen: torch.Generator):
    tensors, info = checkpoint
    with torch.no_grad():
        for name, tensor in steps.learnable().items():
            tensor.copy_(tensors[name])
        for name, average in averages.items():
            average.copy_(tensors[f"ema.{name}"])
    pick.tensors = {key[len("best."):]: value.to(steps.images.device)
                    for key, value in tensors.items() if key.startswith("best.")}
    pick.record = info.get("selected", {})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    scheduler.load_state_dict(info["scheduler"])
    data_gen.set_state(tensors["rng.data"])
    init_gen.set_state(tensors["rng.init"])
    torch.set_rng_state(tensors["rng.torch"])
    return info["epoch"], info["history"], info["elapsed_s"], info.get("clip_mean", 0.0)
