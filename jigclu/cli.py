"""The ``jigclu`` command line.

    jigclu pretrain|linear|semi|finetune --config FILE [key=value ...] [--resume] [--dry-run]
    jigclu tune --config SWEEP [key=value ...] [--dry-run]
    jigclu knn | export | report | data convert | cluster validate ...

It parses and prints, nothing more: the work happens in ``jigclu.launch``, ``tune.sweep`` and
the modules each subcommand names.

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


_TRAIN_HELP = {
    "pretrain": "JigClu self-supervised pretraining",
    "linear": "linear evaluation: frozen backbone (BatchNorm included), new linear classifier",
    "semi": "semi-supervised fine-tuning on 1%/10% (or any fraction, or a file list) of the labels",
    "finetune": "CIFAR-style small-image training: fine-tune the whole network or a linear classifier",
}
_DOWNSTREAM_DESCRIPTION = (". Set eval.pretrained=CKPT (a run directory, a .pt checkpoint or an exported state "
                           "dict; a sweep's trial directory, SWEEP@<trial id> or SWEEP@best, the report's winner; "
                           "local or a storage URI); without it the backbone starts from random init (the "
                           "baseline). Paper defaults apply to every eval.* key left unset.")


def add_run_options(p: argparse.ArgumentParser, config_help: str = "YAML config file (configs/*.yaml)",
                    overrides_help: str = "dotted overrides, e.g. optim.lr=0.05 model.grid=3 scaling.workers=2",
                    resume_help: str = "continue the run from its last checkpoint", config_required: bool = False) -> None:
    """The options every command that starts work takes."""
    p.add_argument("--config", "-c", default=None, required=config_required, help=config_help)
    p.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--no-progress", action="store_true", help="no live display: one plain line per event (the run's start, each epoch, the end), "
                   "as when stdout is not a terminal")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, ray://host:port)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything that can be checked offline, print the resolved config, start nothing")


def _cmd_train(task: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from rich.console import Console

        from jigclu.task_keys import load_task_config

        overrides = list(args.overrides)
        if getattr(args, "labels", None) is not None:
            overrides.append(f"eval.labels={args.labels}")
        if getattr(args, "protocol", None) is not None:
            overrides.append(f"eval.protocol={args.protocol}")
        console = Console(soft_wrap=True)
        cfg = load_task_config(task, args.config, overrides)  # before torch loads: a refused key costs no wait
        if cfg.eval.pretrained:  # a sweep's trial or winner: the run's config saves its checkpoint file
            cfg.eval.pretrained = sweep_checkpoint(cfg.eval.pretrained)
        from jigclu.launch import launch, prepare
        if args.dry_run:
            cfg = prepare(task, cfg, lambda note: console.print(f"[dim]{note}[/]"))
            _check_dataset(cfg.data.dataset)
            print_dry_run(f"{task} run {cfg.name}", cfg.model_dump(mode="json"))
            return 0
        if task != "pretrain" and not cfg.eval.pretrained:
            console.print("[yellow]no eval.pretrained: the backbone starts from random init (baseline)[/]")
        summary = launch(task, cfg, resume=args.resume, verbose=args.verbose,
                         progress="lines" if args.no_progress else True,
                         address=args.address, notify=lambda note: console.print(f"[dim]{note}[/]"))
        print_summary(task, summary)
        return 0

    return run


def sweep_checkpoint(location: str) -> str:
    """``location``, or the checkpoint file of the sweep trial it names (``SWEEP@best``, ``SWEEP@<id>``,
    ``SWEEP/trial-<id>``: :mod:`tune.report.winner`, the report's own choice), said on stderr."""
    from tune.report.winner import resolve_checkpoint

    found = resolve_checkpoint(location)
    if found is None:
        return location
    print(found.note, file=sys.stderr)
    return found.file


def _check_dataset(spec: str) -> None:
    from jigclu.data.datasets import parse_spec

    parse_spec(spec)


def print_dry_run(what: str, resolved: dict[str, Any]) -> None:
    """The resolved config as YAML, then one line saying nothing started."""
    import yaml

    print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    print(f"# dry run: {what} is valid; nothing was started")


def print_summary(task: str, summary: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(soft_wrap=True)  # a log line is not wrapped at 80 columns
    last = summary.get("last") or {}
    parts = [f"[green]{task} finished[/]: {summary.get('epochs_run', 0)} epochs this run"]
    for key, label in (("loss", "loss"), ("loc_acc", "loc acc %"), ("knn_top1", "knn top-1 %"),
                       ("val_top1", "val top-1 %"), ("images_per_s", "img/s")):
        if key in last and last[key] is not None:
            parts.append(f"{label} {last[key]:.2f}" if key != "images_per_s" else f"{label} {last[key]:,.0f}")
    for key in ("best_knn_top1", "best_val_top1"):
        if summary.get(key) is not None:
            parts.append(f"{key.removesuffix('_top1').replace('_', ' ')} top-1 % {summary[key]:.2f}")
    console.print("  ".join(parts))
    if summary.get("run_dir"):
        console.print(f"run directory: {summary['run_dir']}")


def _cmd_tune(args: argparse.Namespace) -> int:
    from tune.space import load_sweep

    sweep = load_sweep(args.config, args.overrides)
    pretrained = (sweep.base.get("eval") or {}).get("pretrained")
    if pretrained:  # a downstream sweep of another sweep's trial or winner: its checkpoint file, in sweep.yaml
        sweep.base["eval"]["pretrained"] = sweep_checkpoint(str(pretrained))
    if args.dry_run:
        from jigclu import storage

        storage.check_syntax(sweep.spec.storage or sweep.spec.output_dir)
        _check_dataset(str((sweep.base.get("data") or {}).get("dataset", "digits")))
        print_dry_run(f"sweep {sweep.spec.name}", sweep.to_dict())
        return 0
    from tune.sweep import run_sweep

    summary = run_sweep(sweep, resume=args.resume, verbose=args.verbose, progress=not args.no_progress,
                        address=args.address)
    if args.no_report:
        print(f"sweep directory: {summary['sweep_dir']}")
        return 0
    from tune.report import main as report_main

    return report_main([summary["sweep_dir"]])


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from jigclu.data import convert_main

    rows = convert_main(
        args.src, args.dest, image_size=args.image_size, image_format=args.image_format, quality=args.quality,
        shard_mb=args.shard_mb, row_group_rows=args.row_group_rows,
        shuffle_seed=None if args.no_shuffle else args.seed, progress=True,
    )
    print(f"wrote {rows} images to {args.dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jigclu import cli_tools, cluster
    from tune import report

    parser = argparse.ArgumentParser(
        prog="jigclu", description="Jigsaw Clustering pretraining, evaluation and sweeps on Ray.")
    parser.add_argument("--verbose", "-v", action="store_true", help="show framework logs and warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for task, text in _TRAIN_HELP.items():
        description = text if task == "pretrain" else text + _DOWNSTREAM_DESCRIPTION
        # argparse %-formats help strings (not descriptions): "1%" must be written "1%%" there
        p = sub.add_parser(task, help=text.replace("%", "%%"), description=description)
        add_run_options(p)
        if task == "semi":
            p.add_argument("--labels", default=None, metavar="1%|10%|FRACTION|FILE",
                           help="labeled subset: a percentage, a fraction in (0, 1], or a file listing "
                                "one training image per line (index, or file name for folder datasets)")
        if task == "finetune":
            p.add_argument("--protocol", choices=("finetune", "linear"), default=None,
                           help="finetune: whole network, lr 0.1, wd 5e-4; linear: frozen backbone, lr 10")
        p.set_defaults(func=_cmd_train(task))

    tp = sub.add_parser("tune", help="hyperparameter sweep with Ray Tune + Optuna (then its report)",
                        description="Run or continue a sweep defined in YAML (tune/configs/*.yaml). "
                                    "Re-running the same sweep name continues it.")
    add_run_options(tp, config_help="sweep file, e.g. tune/configs/pretrain_fashion.yaml",
                    overrides_help="sweep overrides (num_samples=4) or trainer overrides (config.train.epochs=2)",
                    resume_help="continue the sweep (also the default when it exists)", config_required=True)
    tp.add_argument("--no-report", action="store_true", help="do not print the report at the end")
    tp.set_defaults(func=_cmd_tune)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", metavar="ACTION")
    conv = data.add_parser("convert", help="write any dataset source as Parquet shards",
                           description="SRC is a dataset spec (digits, fashion_mnist:DIR, cifar10:DIR, "
                                       "folder:DIR, parquet:URI); DEST a new directory or s3:// / gs:// URI.")
    conv.add_argument("src")
    conv.add_argument("dest")
    conv.add_argument("--image-size", type=int, default=None, metavar="N", help="resize to N x N when loading")
    conv.add_argument("--format", dest="image_format", default="png", metavar="png|jpeg",
                      help="image encoding: png (lossless, default) or jpeg (much smaller for large photos)")
    conv.add_argument("--quality", type=int, default=90, metavar="Q", help="JPEG quality, 1-95 (default 90)")
    conv.add_argument("--shard-mb", type=float, default=192, metavar="MB",
                      help="start a new part-NNNNN.parquet once a shard holds this many MiB (default 192)")
    conv.add_argument("--row-group-rows", type=int, default=2048, metavar="N",
                      help="rows per Parquet row group, the unit a streaming reader reads (default 2048)")
    conv.add_argument("--no-shuffle", action="store_true",
                      help="keep the source order (default: shuffle each split, so class-sorted sources stream mixed)")
    conv.add_argument("--seed", type=int, default=0, metavar="S", help="shuffle seed (default 0)")
    conv.set_defaults(func=_cmd_data_convert)

    for module in (cluster, cli_tools, report):  # subcommands that live with what they drive
        module.add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options too (``name=demo --resume output_dir=x``)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    _quiet(args.verbose)
    from jigclu.errors import JigcluError
    from jigclu.preempt import EXIT_TERMINATED, Preempted, TerminatedAtOnce

    try:
        if getattr(args, "checkpoint", None):  # knn --checkpoint, export CHECKPOINT: a sweep's trial or winner too
            args.checkpoint = sweep_checkpoint(args.checkpoint)
        return int(args.func(args) or 0)
    except Preempted as exc:
        print(f"jigclu: {exc}", file=sys.stderr)
        return EXIT_TERMINATED
    except TerminatedAtOnce as exc:
        print(f"jigclu: {exc}", file=sys.stderr)
        return EXIT_TERMINATED
    except JigcluError as exc:
        print(f"jigclu: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("jigclu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
