"""Command line: distill | evaluate | show | list."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from .config import DistillConfig
from .errors import DistillError


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per DistillConfig field; only flags given on the command line are set."""
    defaults = DistillConfig()
    for f in fields(DistillConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata['help']} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), choices=f.metadata.get("choices"),
                                default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datadistill",
        description="Dataset distillation (Wang et al., 2018): learn a few synthetic images and "
                    "learning rates that train a network in a few GD steps.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="distill a dataset (the paper's defaults)")
    p.add_argument("--out", default="runs/distilled", help="run folder (default: runs/distilled)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_config_flags(p)

    p = sub.add_parser("evaluate", help="train fresh nets on an artifact's steps and test them")
    p.add_argument("run", help="run folder written by distill")
    p.add_argument("--nets", type=int, default=200, help="held-out nets (default: 200)")
    p.add_argument("--data-root", default=None, help="override the stored data root")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("show", help="re-render the picture of an artifact")
    p.add_argument("run", help="run folder written by distill")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/distilled.png)")

    sub.add_parser("list", help="list datasets, models and initialization schemes")
    return parser


def _distill(args: argparse.Namespace) -> None:
    from .distill import distill

    settings = {f.name: getattr(args, f.name) for f in fields(DistillConfig) if hasattr(args, f.name)}
    result = distill(out=args.out, resume=args.resume, **settings)
    metrics = result.meta["metrics"]
    final, real = metrics["final"], metrics["random_real"]
    n_images = result.images.shape[0] * result.images.shape[1]
    print(f"distilled   ({n_images} images, {result.num_steps} steps): "
          f"{100 * final['accuracy_mean']:.2f}% ± {100 * final['accuracy_std']:.2f} "
          f"over {final['nets']} fresh nets")
    print(f"random real ({n_images} images, same steps, best lr {real['lr']}): "
          f"{100 * real['accuracy_mean']:.2f}% ± {100 * real['accuracy_std']:.2f}")
    print(f"wrote {Path(args.out) / 'distilled.safetensors'}, meta.json and distilled.png "
          f"in {metrics['wall_time_s']:.0f} s")


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate

    result = evaluate(args.run, nets=args.nets, data_root=args.data_root, device=args.device)
    print(json.dumps(result, indent=2) if args.json else
          f"{100 * result['accuracy_mean']:.2f}% ± {100 * result['accuracy_std']:.2f} "
          f"over {result['nets']} held-out nets ({result['dataset']} test set)")


def _show(args: argparse.Namespace) -> None:
    from .artifacts import GRID_FILE, load
    from .plots import save_grid

    distilled = load(args.run)
    dataset = distilled.meta["dataset"]
    out = args.out or Path(args.run) / GRID_FILE
    save_grid(distilled, out, dataset["mean"], dataset["std"], dataset["class_names"])
    print(f"wrote {out}")


def _list(args: argparse.Namespace) -> None:
    from .data import DATASETS
    from .init_distributions import list_init_schemes
    from .models import list_models

    print("datasets:")
    for name in DATASETS.names():
        print(f"  {name:14s} {DATASETS.get(name).description}")
    print("models:", ", ".join(list_models()))
    print("initialization schemes:", ", ".join(list_init_schemes()))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"distill": _distill, "evaluate": _evaluate, "show": _show, "list": _list}
    try:
        commands[args.command](args)
    except DistillError as exc:
        print(f"datadistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("datadistill: interrupted; a distill run continues with --resume", file=sys.stderr)
        return 130
    return 0
