"""The ``jigclu`` command line.

    jigclu pretrain --config configs/demo.yaml [key=value ...] [--resume]
    jigclu data convert SRC DEST
    jigclu cluster validate [FILES ...]

Every user mistake (bad key, missing data, unreadable checkpoint) is one line on stderr and
a non-zero exit, never a traceback. ``--verbose`` shows framework logs and warnings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any, Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _quiet(verbose: bool) -> None:
    """Keep framework chatter out of the terminal unless asked for."""
    if verbose:
        logging.basicConfig(level=logging.INFO)
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name in ("ray", "ray.train", "ray.tune", "optuna", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _add_run_options(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    p.add_argument("--config", "-c", default=default_config, help="YAML config file (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. optim.lr=0.05 model.grid=3 scaling.workers=2")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, ray://host:port)")


def _cmd_train(task: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from jigclu.config import load_config
        from jigclu.launch import launch

        cfg = load_config(args.config, args.overrides)
        summary = launch(task, cfg, resume=args.resume, verbose=args.verbose,
                         progress=not args.no_progress, address=args.address)
        _print_summary(task, summary)
        return 0

    return run


def _print_summary(task: str, summary: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    last = summary.get("last") or {}
    parts = [f"[green]{task} finished[/]: {summary.get('epochs_run', 0)} epochs this run"]
    for key, label in (("loss", "loss"), ("loc_acc", "loc acc %"), ("knn_top1", "knn top-1 %"),
                       ("val_top1", "val top-1 %"), ("images_per_s", "img/s")):
        if key in last and last[key] is not None:
            parts.append(f"{label} {last[key]:.2f}" if key != "images_per_s" else f"{label} {last[key]:,.0f}")
    for key in ("best_knn_top1", "best_val_top1"):
        if summary.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {summary[key]:.2f}")
    console.print("  ".join(parts))
    if summary.get("run_dir"):
        console.print(f"run directory: {summary['run_dir']}")


def _cmd_tune(args: argparse.Namespace) -> int:
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    sweep = load_sweep(args.config, args.overrides)
    summary = run_sweep(sweep, resume=args.resume, verbose=args.verbose, progress=not args.no_progress,
                        address=args.address)
    if args.no_report:
        print(f"sweep directory: {summary['sweep_dir']}")
        return 0
    from tune.report import main as report_main

    return report_main([summary["sweep_dir"]])


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from jigclu.data import convert_main

    rows = convert_main(args.src, args.dest, image_size=args.image_size)
    print(f"wrote {rows} images to {args.dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jigclu", description="Jigsaw Clustering pretraining, evaluation and sweeps on Ray.")
    parser.add_argument("--verbose", "-v", action="store_true", help="show framework logs and warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    helps = {"pretrain": "JigClu self-supervised pretraining"}
    for task, text in helps.items():
        p = sub.add_parser(task, help=text, description=text)
        _add_run_options(p)
        p.set_defaults(func=_cmd_train(task))

    tp = sub.add_parser("tune", help="hyperparameter sweep with Ray Tune + Optuna (then its report)",
                        description="Run or continue a sweep defined in YAML (tune/configs/*.yaml). "
                                    "Re-running the same sweep name continues it.")
    tp.add_argument("--config", "-c", required=True, help="sweep file, e.g. tune/configs/pretrain_fashion.yaml")
    tp.add_argument("overrides", nargs="*", metavar="key=value",
                    help="sweep overrides (num_samples=4) or trainer overrides (config.train.epochs=2)")
    tp.add_argument("--resume", action="store_true", help="continue the sweep (also the default when it exists)")
    tp.add_argument("--no-progress", action="store_true", help="no live display")
    tp.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    tp.add_argument("--address", default=None, help="Ray cluster address (auto, ray://host:port)")
    tp.set_defaults(func=_cmd_tune)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", metavar="ACTION")
    conv = data.add_parser("convert", help="write any dataset source as Parquet shards",
                           description="SRC is a dataset spec (digits, fashion_mnist:DIR, cifar10:DIR, "
                                       "folder:DIR, parquet:URI); DEST a new directory or s3:// / gs:// URI.")
    conv.add_argument("src")
    conv.add_argument("dest")
    conv.add_argument("--image-size", type=int, default=None)
    conv.set_defaults(func=_cmd_data_convert)

    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Subcommands that live in their own modules register themselves here."""
    for module in ("jigclu.cluster", "jigclu.cli_eval", "tune.report"):
        try:
            mod = __import__(module, fromlist=["add_cli"])
        except ImportError:
            continue
        mod.add_cli(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    _quiet(args.verbose)
    from jigclu.errors import JigcluError

    try:
        return int(args.func(args) or 0)
    except JigcluError as exc:
        print(f"jigclu: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("jigclu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
