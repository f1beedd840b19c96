"""Command line: distill | evaluate | baseline | pretrain | experts | pool-import | export |
import | linreg | show | report | list."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

from .baselines.run import SETTINGS as BASELINE_SETTINGS
from .config import (CONVERGE_INIT, BaselineConfig, DistillConfig, EvaluateConfig, ExpertsConfig,
                     PoolImportConfig, PretrainConfig, flag, read_config_file, settings_of)
from .distributed import init_from_env, leave_process_group
from .errors import DistillError

OVERWRITE_HELP = "replace the run in --out (its files go only once the new ones are written)"


def _add_settings_flags(parser: argparse.ArgumentParser, cls: type, stored: str) -> None:
    """--config FILE (``stored``: where the command keeps its settings) and one flag per
    field of the settings dataclass ``cls``, listed under its section; only flags given on
    the command line are set, and they override the file's."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help=f"settings from {stored}, or a .toml / .yaml / .json file of "
                             f"{cls.__name__} fields; flags given here override them")
    groups: dict[str, Any] = {}
    for f in fields(cls):
        section = f.metadata["section"]
        if section and section not in groups:
            groups[section] = parser.add_argument_group(section)
        target = groups.get(section, parser)
        shown = (" (required)" if f.metadata["required"] else
                 "" if f.default is None else f" (default: {f.default})")
        if f.metadata["kind"] is bool:
            target.add_argument(flag(f.name), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f.metadata["help"] + shown)
        else:
            target.add_argument(flag(f.name), type=f.metadata["kind"],
                                choices=f.metadata["choices"], default=argparse.SUPPRESS,
                                help=f.metadata["help"] + shown)


def _settings(args: argparse.Namespace, cls: type) -> dict:
    """The settings of ``cls`` that --config's file and the flags given hold (flags win)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return {**read_config_file(args.config, cls), **given} if args.config else given


def _scoring(config: EvaluateConfig):
    from .scorecard import Scoring

    return Scoring(config.plain, config.full_data_accuracy, config.full_data, config.lr_search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datadistill",
        description="Dataset distillation (Wang et al., 2018): learn a few synthetic images and "
                    "learning rates that train a network in a few GD steps.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="distill a dataset (the paper's defaults)")
    p.add_argument("--out", default="runs/distilled", help="run folder (default: runs/distilled)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_settings_flags(p, DistillConfig, "a run's meta.json (or its folder)")

    p = sub.add_parser("evaluate", help="train fresh nets on an artifact's images and test them")
    p.add_argument("run", help="run folder written by distill, baseline or import, or a "
                                      "shipped set: zoo:NAME")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-save", action="store_true",
                   help="do not save the result to RUN/evaluations/ (a read-only run folder)")
    _add_settings_flags(p, EvaluateConfig, "a saved evaluation (RUN/evaluations/NAME.json)")

    p = sub.add_parser("baseline", help="real-image baselines with the paper's lr x epochs grid")
    p.add_argument("--out", required=True, help="folder for the baseline's artifact")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--json", action="store_true", help="converge: print the result as JSON")
    _add_settings_flags(p, BaselineConfig, "a baseline's meta.json (or its folder)")

    p = sub.add_parser("pretrain", help="train a pool of models (pretrained-init settings, attacks)")
    p.add_argument("--out", required=True, help="pool folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_settings_flags(p, PretrainConfig, "a pool's manifest.json (or its folder)")

    p = sub.add_parser("experts", help="train expert trajectories for --method mtt")
    p.add_argument("--out", required=True, help="experts folder (run again to go on)")
    _add_settings_flags(p, ExpertsConfig, "an experts folder's experts.json (or the folder)")

    p = sub.add_parser("pool-import", help="make a pool of your own trained models (state dicts)")
    p.add_argument("folder", help="folder of *.safetensors / *.pt / *.pth state dicts, one architecture")
    p.add_argument("--out", required=True, help="pool folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_settings_flags(p, PoolImportConfig, "a pool's manifest.json (or its folder)")

    p = sub.add_parser("export", help="write a run's images, labels and normalisation as "
                                      "plain tensors (docs/exchange.md)")
    p.add_argument("run", help="run folder written by distill, baseline or import, or a "
                                      "shipped set: zoo:NAME")
    p.add_argument("--out", required=True, help="a .safetensors file")

    p = sub.add_parser("import", help="make a run folder of a set made elsewhere "
                                      "(.safetensors or .pt tensors, docs/exchange.md)")
    p.add_argument("file", help=".safetensors or .pt file of images and labels (also DC/DSA/DM's "
                                "res_*.pt, MTT's images_<it>.pt beside labels_<it>.pt)")
    p.add_argument("--dataset", required=True, help="registered dataset the set was made for")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--model", default="", help="architecture it was made with (default: the "
                                               "dataset's)")
    p.add_argument("--data-root", default="data")

    p = sub.add_parser("linreg", help="Section 3.3: one GD step on linear regression needs M >= D")
    p.add_argument("--dim", type=int, default=8, help="features D (default: 8)")
    p.add_argument("--iterations", type=int, default=3000)

    p = sub.add_parser("show", help="re-render the picture of an artifact")
    p.add_argument("run", help="run folder written by distill")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/distilled.png); for "
                   "audio and text data a folder (default: RUN)")
    p.add_argument("--data-root", default=None, help="where the run's data is (audio, text)")

    p = sub.add_parser("report", help="a table of run folders' scores from their JSON: one row "
                                      "per run and evaluation")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (distill, baseline, import)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="a GitHub Markdown table")
    form.add_argument("--json", action="store_true", help="the rows as JSON")

    p = sub.add_parser("zoo", help="list the distilled sets shipped with the package: "
                                   "evaluate, export, report or load them as zoo:NAME")
    p.add_argument("--json", action="store_true", help="print their cards and scores as JSON")
    sub.add_parser("list", help="list datasets, models, methods and initialization schemes")
    return parser


def _distill(args: argparse.Namespace) -> None:
    from .distill import distill
    from .methods import METHODS

    result = distill(out=args.out, resume=args.resume, overwrite=args.overwrite,
                     **_settings(args, DistillConfig))
    metrics = result.meta["metrics"]
    n_images = result.images.shape[0] * result.images.shape[1]
    if "final" in metrics:
        final = metrics["final"]
        print(f"distilled   ({n_images} images, {result.num_steps} steps): "
              f"{100 * final['accuracy_mean']:.2f}% ± {100 * final['accuracy_std']:.2f} "
              f"over {final['nets']} fresh nets")
    if "random_real" in metrics:
        real = metrics["random_real"]
        print(f"random real ({n_images} images, same steps, best lr {real['lr']}): "
              f"{100 * real['accuracy_mean']:.2f}% ± {100 * real['accuracy_std']:.2f}")
    if "final" not in metrics:  # --final-checks none, or a matching method's set
        few_step = METHODS.get(result.meta["config"]["method"]).final_checks == "few-step"
        protocol = "" if few_step else " --protocol converge"
        print(f"evaluate the set with `datadistill evaluate {args.out}{protocol}`")
    picture = f" and {metrics['picture']}" if "picture" in metrics else ""
    print(f"wrote {Path(args.out) / 'distilled.safetensors'}, meta.json{picture} "
          f"in {metrics['wall_time_s']:.0f} s")


def _evaluate(args: argparse.Namespace) -> None:
    config = settings_of(EvaluateConfig, _settings(args, EvaluateConfig))
    if config.protocol == "converge":
        _evaluate_converge(args, config)
        return
    from .evaluate import evaluation_name
    from .scorecard import few_step_scored

    _refuse_converge_flags(config, model=True)
    scoring = _scoring(config)
    scoring.check("few-step")
    _check_saving(args)
    nets = 200 if config.nets is None else config.nets
    result = few_step_scored(args.run, scoring, nets=nets, lr=config.lr, epochs=config.epochs,
                             data_root=config.data_root, device=config.device,
                             pool=config.pool, backend=config.backend)
    result = _saved(result, args, config, evaluation_name(
        "few-step", lr=config.lr, epochs=config.epochs, plain=config.plain))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    before, after = result["before"], result["after"]
    print(f"{after['nets']} held-out nets, {result['dataset']} test set, lr {result['lr']}, "
          f"{result['epochs']} epochs")
    print(f"  before training: {100 * before['accuracy_mean']:.2f}% ± "
          f"{100 * before['accuracy_std']:.2f} (loss {before['loss_mean']:.3f})")
    print(f"  after training:  {100 * after['accuracy_mean']:.2f}% ± "
          f"{100 * after['accuracy_std']:.2f} (loss {after['loss_mean']:.3f})")
    _print_spread(after)
    if "attack_ratio_mean" in after:
        print(f"  attack: accuracy w.r.t. modified labels {100 * after['modified_accuracy_mean']:.2f}% "
              f"± {100 * after['modified_accuracy_std']:.2f}, class K predicted as T "
              f"{100 * after['attack_ratio_mean']:.2f}% ± {100 * after['attack_ratio_std']:.2f}")
    _print_scores(result)


def _refuse_converge_flags(config: EvaluateConfig | BaselineConfig, model: bool) -> None:
    """One line for a converge-protocol flag given to the few-step protocol (``--model`` is
    the converge protocol's only where ``model`` says so)."""
    flags = (("--model", model and config.model), ("--dsa", config.dsa),
             ("--curve", config.curve), ("--bf16", config.bf16))
    given = [flag for flag, value in flags if value]
    if given:
        raise DistillError(f"{given[0]} belongs to the converge protocol; add "
                           "--protocol converge")


def _evaluate_converge(args: argparse.Namespace, config: EvaluateConfig) -> None:
    from .evaluate import evaluation_name
    from .scorecard import converge_scored

    if config.curve:
        check_png_path(config.curve)
    scoring = _scoring(config)
    scoring.check("converge")
    _check_saving(args)
    result = converge_scored(args.run, scoring, nets=5 if config.nets is None else config.nets,
                             model=config.model,
                             settings=config.converge_settings(config.epochs, config.lr),
                             dsa=config.dsa, dsa_ops=config.dsa_ops,
                             init_scheme=config.init_scheme, data_root=config.data_root,
                             device=config.device, backend=config.backend)
    name = evaluation_name("converge", result["model"], config.dsa, config.lr, config.epochs,
                           config.lr_search, config.plain)
    _report_converge(_saved(result, args, config, name), config.curve, args.json)
    if not args.json:
        _print_scores(result)


def _check_saving(args: argparse.Namespace) -> None:
    """Refuse an unwritable run folder before any training, unless --no-save."""
    from .evaluate import check_writable

    if not args.no_save:
        check_writable(args.run)


def _saved(result: dict, args: argparse.Namespace, config: EvaluateConfig, name: str) -> dict:
    """The result with the command and the settings that made it (``evaluate --config``
    reads them back); saved as RUN/evaluations/NAME.json unless --no-save."""
    from .evaluate import save_evaluation

    record = {**result, "command": args.invocation, "config": asdict(config)}
    return record if args.no_save else save_evaluation(args.run, name, record)


def _report_converge(result: dict, curve: str | None, as_json: bool) -> None:
    """Print a converge-protocol result (or its JSON) and draw its ``curve`` when asked."""
    after, settings = result["after"], result["settings"]
    if curve:
        from .plots import save_curve

        save_curve(result["curve"], curve, f"{result['dataset']}, {result['images']} "
                   f"images, {result['model']}, {after['nets']} nets")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    augment = "DSA " + ",".join(result["dsa"]) if result["dsa"] else "no augmentation"
    print(f"{after['nets']} fresh {result['model']} nets, {result['images']} images, converge "
          f"protocol: {settings['epochs']} epochs, lr {settings['lr']}, {augment}")
    print(f"  {result['dataset']} test set: {100 * after['accuracy_mean']:.2f}% ± "
          f"{100 * after['accuracy_std']:.2f} (loss {after['loss_mean']:.3f})")
    _print_spread(after)


def _percent(figure: dict) -> str:
    return f"{100 * figure['accuracy_mean']:.2f}% ± {100 * figure['accuracy_std']:.2f}"


def _print_scores(result: dict) -> None:
    """The figures beside the accuracy: majority class, lr search, hard labels,
    augmentation, the random-real floor and DD-Ranking's scores (those present)."""
    print(f"  majority class:  {100 * result['majority_class_rate']:.2f}% of the test split")
    if "lr_search" in result:
        search = result["lr_search"]
        grid = ", ".join(f"{lr:g}: {100 * acc:.1f}%" for lr, acc in
                         zip(search["lrs"], search["held_out_accuracy"]))
        print(f"  lr search:       chose {search['chosen_lr']:g} on "
              f"{search['held_out_images']} held-out training images ({grid})")
    if "scores" not in result:
        return
    hard = result["hard_labels"]
    same = " (the figure above: the labels are hard)" if "same_as_main" in hard else ""
    print(f"  hard labels:     {_percent(hard)}{same}")
    if "with_augmentation" in result:
        print(f"  with DSA:        {_percent(result['with_augmentation'])}; without: "
              f"{_percent(result['no_augmentation'])}")
    floor = result["random_real"]
    tuned = f", best lr {floor['lr']}" if "lr" in floor else ""
    both = (f" (with DSA {_percent(floor['with_augmentation'])}, without "
            f"{_percent(floor['no_augmentation'])})" if "with_augmentation" in floor else "")
    print(f"  random real:     {_percent(floor)} ({floor['images']} images, the set's classes, "
          f"seed {floor['seed']}{tuned}){both}")
    _print_dd_ranking(result["scores"])


def _print_dd_ranking(scores: dict) -> None:
    """IOR, HLR, LRS and ARS (DD-Ranking), or why one is missing."""
    def value(key: str) -> str:
        if scores[key] is None:
            return "- (" + scores[f"{key}_unavailable"] + ")"
        return f"{100 * scores[key]:+.2f}" if key == "ior" else f"{100 * scores[key]:.2f}"

    hlr = "-" if scores["hlr"] is None else f"{100 * scores['hlr']:+.2f}"
    print(f"  DD-Ranking:      IOR {value('ior')}, HLR {hlr} (points)")
    print(f"                   LRS {value('lrs')}; ARS {value('ars')}")


def _print_spread(after: dict) -> None:
    """Accuracy per class, and the worst, median and best net (one net far behind shows
    there, not in the mean)."""
    print("  per class:       " + " ".join(f"{100 * a:.1f}" for a in after["per_class_accuracy"]))
    accuracies = after["per_net_accuracy"]
    print(f"  nets: worst {100 * min(accuracies):.2f}%, median "
          f"{100 * statistics.median(accuracies):.2f}%, best {100 * max(accuracies):.2f}%")


def check_png_path(path: str) -> None:
    """Refuse a picture path that cannot be written, before any training."""
    target = Path(path)
    if target.suffix.lower() != ".png" or target.is_dir():
        raise DistillError(f"--curve {path} is not a .png file path; pass e.g. curve.png")
    parent = next((p for p in target.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DistillError(f"--curve: cannot write into {parent}; choose another path")


def _baseline(args: argparse.Namespace) -> None:
    config = settings_of(BaselineConfig, _settings(args, BaselineConfig))
    settings = {k: getattr(config, k) for k in BASELINE_SETTINGS}
    converge = config.protocol == "converge"
    settings["init_scheme"] = config.init_scheme or (
        CONVERGE_INIT if converge else DistillConfig().init_scheme)
    if converge:
        from .baselines.write import converge_baseline

        if config.like:
            raise DistillError("--like takes a few-step run's setting; under --protocol "
                               "converge pass --dataset, --steps and --images-per-class")
        if config.curve:
            check_png_path(config.curve)
        result = converge_baseline(config.method, args.out, settings,
                                   config.converge_settings(config.epochs, config.lr),
                                   nets=5 if config.nets is None else config.nets,
                                   dsa=config.dsa, dsa_ops=config.dsa_ops,
                                   stored=asdict(config), overwrite=args.overwrite)
        _report_converge(result, config.curve, args.json)
        if not args.json:
            print(f"wrote {args.out}")
        return
    if config.method == "full":
        raise DistillError("--method full trains on the whole training set: add --protocol "
                           "converge")
    _refuse_converge_flags(config, model=False)
    from .baselines.write import baseline_artifact

    nets = 200 if config.nets is None else config.nets
    report = baseline_artifact(config.method, args.out, like=config.like, nets=nets,
                               search_nets=config.search_nets, sets=config.sets,
                               settings=settings, stored=asdict(config),
                               overwrite=args.overwrite)
    final, best = report["final"], report["best"]
    print(f"{config.method}: {100 * final['accuracy_mean']:.2f}% ± "
          f"{100 * final['accuracy_std']:.2f} (best "
          f"{', '.join(f'{k} {v}' for k, v in best.items())}); wrote {args.out}")


def _pretrain(args: argparse.Namespace) -> None:
    from .pools import DEFAULT_SCHEDULE, SCHEDULES, Schedule, pretrain

    config = settings_of(PretrainConfig, _settings(args, PretrainConfig))
    base = SCHEDULES.get(config.dataset, DEFAULT_SCHEDULE)
    schedule = Schedule(config.epochs or base.epochs, config.lr or base.lr,
                        config.decay_epochs or base.decay_epochs, base.decay_factor)
    pool = pretrain(config.dataset, config.models, args.out, arch=config.arch,
                    schedule=schedule, batch_size=config.batch_size, held_out=config.held_out,
                    init_scheme=config.init_scheme, seed=config.seed,
                    data_root=config.data_root, device=config.device, group=config.group,
                    backend=config.backend, settings=asdict(config), overwrite=args.overwrite)
    _print_pool(pool, args.out)


def _experts(args: argparse.Namespace) -> None:
    from .experts import train_experts

    config = settings_of(ExpertsConfig, _settings(args, ExpertsConfig))
    files = train_experts(config.dataset, config.experts, args.out, arch=config.arch,
                          schedule=config.schedule, init_scheme=config.init_scheme,
                          seed=config.seed, data_root=config.data_root, device=config.device,
                          backend=config.backend, settings=asdict(config))
    print(f"{len(files)} experts of {config.epochs} epochs in {args.out}; distill with "
          f"`--method mtt --experts {args.out}`")


def _pool_import(args: argparse.Namespace) -> None:
    from .pools import import_pool

    config = settings_of(PoolImportConfig, _settings(args, PoolImportConfig))
    pool = import_pool(args.folder, config.dataset, args.out, arch=config.arch,
                       held_out=config.held_out, data_root=config.data_root,
                       device=config.device, backend=config.backend,
                       settings=asdict(config), overwrite=args.overwrite)
    _print_pool(pool, args.out)


def _print_pool(pool, out: str) -> None:
    acc = pool.manifest["accuracies"]
    print(f"pool of {len(acc)} {pool.manifest['arch']} models on {pool.manifest['dataset']}: "
          f"test accuracy {100 * min(acc):.2f}-{100 * max(acc):.2f}% "
          f"(mean {100 * sum(acc) / len(acc):.2f}%), {len(pool.manifest['distill'])} for distilling, "
          f"{len(pool.manifest['held_out'])} held out; wrote {out}")


def _export(args: argparse.Namespace) -> None:
    from .exchange import export_set

    if not args.out.endswith(".safetensors") or Path(args.out).is_dir():
        raise DistillError(f"--out {args.out} is not a .safetensors file path; pass e.g. "
                           "set.safetensors")
    tensors = export_set(args.run, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))


def _import_set(args: argparse.Namespace) -> None:
    from .exchange import import_set

    distilled = import_set(args.file, args.dataset, args.out, model=args.model,
                           data_root=args.data_root, overwrite=args.overwrite)
    labels = "soft labels" if distilled.labels.is_floating_point() else "labels"
    print(f"wrote {args.out}: {distilled.images.shape[0] * distilled.images.shape[1]} images "
          f"and {labels} for {args.dataset}; evaluate it with `datadistill evaluate {args.out} "
          "--protocol converge`")


def _linreg(args: argparse.Namespace) -> None:
    from .linear_regression import analysis

    print(f"{'M':>4} {'D':>4} {'excess loss (mean)':>20} {'lower bound':>12} {'no step':>10}")
    for row in analysis(dim=args.dim, iterations=args.iterations):
        print(f"{row['M']:>4} {row['D']:>4} {row['excess_mean']:>20.3e} "
              f"{row['lower_bound']:>12.3e} {row['no_step']:>10.3f}")


def _show(args: argparse.Namespace) -> None:
    from .artifacts import GRID_FILE, load
    from .plots import save_grid, save_picture

    distilled = load(args.run)
    dataset = distilled.meta["dataset"]
    if dataset.get("kind", "image") == "image":  # drawn from the artifact alone
        out = Path(args.out or Path(args.run) / GRID_FILE)
        save_grid(distilled, out, dataset["mean"], dataset["std"], dataset["class_names"])
    else:  # needs the real data: audio beside real inputs, text beside real documents
        from .data import load_dataset

        data = load_dataset(dataset["name"], args.data_root or distilled.meta["config"]["data_root"])
        out = save_picture(distilled, data, Path(args.out) if args.out else Path(args.run))
        if out.suffix == ".txt":
            print(out.read_text(), end="")
    print(f"wrote {out}")


def _report(args: argparse.Namespace) -> None:
    from .report import markdown_table, report_rows, text_table

    rows = report_rows(args.runs)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(markdown_table(rows) if args.markdown else text_table(rows))


def _zoo(args: argparse.Namespace) -> None:
    from .report import report_rows, text_table
    from .zoo import PREFIX, catalogue

    sets = catalogue()
    if args.json:
        print(json.dumps([{"name": PREFIX + s.name, **s.card,
                           "scores": report_rows([PREFIX + s.name])} for s in sets], indent=2))
        return
    for s in sets:
        print(f"{PREFIX}{s.name}  ({s.size_bytes / 1024:.0f} KB): {s.card['summary']}")
        print("  " + text_table(report_rows([PREFIX + s.name])).replace("\n", "\n  "))
    total = sum(s.size_bytes for s in sets) / 1024
    print(f"{len(sets)} sets, {total:.0f} KB in all; e.g. `datadistill evaluate "
          f"{PREFIX}{sets[0].name if sets else 'NAME'} --json`")


def _read_only_zoo(args: argparse.Namespace) -> None:
    """A shipped set (``zoo:NAME``) is read-only: its evaluations are printed, not saved."""
    from .zoo import is_zoo, resolve

    if is_zoo(args.run):
        resolve(args.run)  # an unknown name: one line listing the sets
        if args.command == "evaluate":
            args.no_save = True
        if args.command == "show" and not args.out:
            raise DistillError("a zoo set is read-only: pass --out FILE.png")


def _list(args: argparse.Namespace) -> None:
    from .data import DATASETS, PATH_FORMS
    from .init_distributions import list_init_schemes
    from .methods import METHODS
    from .models import list_models

    print("datasets:")
    for name in DATASETS.names():
        print(f"  {name:14s} {DATASETS.get(name).description}")
    for prefix, (_, description) in PATH_FORMS.items():
        print(f"  {prefix + 'PATH':14s} {description}")
    print("models:", ", ".join(list_models()))
    print("methods (distill --method):")
    for name in METHODS.names():
        print(f"  {name:14s} {METHODS.get(name).summary}")
    print("initialization schemes:", ", ".join(list_init_schemes()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.invocation = shlex.join(["datadistill", *map(str, argv)])  # what reproduces this command
    world = init_from_env()
    if not world.is_main:  # under torchrun, rank 0 alone prints
        sys.stdout = open(os.devnull, "w")
    commands = {"distill": _distill, "evaluate": _evaluate, "baseline": _baseline,
                "linreg": _linreg,
                "pretrain": _pretrain, "experts": _experts, "pool-import": _pool_import,
                "show": _show, "list": _list,
                "export": _export, "import": _import_set, "report": _report, "zoo": _zoo}
    try:
        if isinstance(getattr(args, "run", None), str):
            _read_only_zoo(args)
        commands[args.command](args)
        world.barrier()  # no rank leaves while another still needs the group; skipped on errors
    except DistillError as exc:
        print(f"datadistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("datadistill: interrupted; a distill run continues with --resume", file=sys.stderr)
        return 130
    finally:
        leave_process_group()
    return 0
