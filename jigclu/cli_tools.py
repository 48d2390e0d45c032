"""The ``jigclu knn`` and ``jigclu export`` subcommands (parse and print only).

    jigclu knn      --checkpoint runs/demo [--config ...] [key=value ...] [--json]
    jigclu export   runs/demo backbone.pt --format torchvision
    jigclu export   sweeps/demo@best backbone.pt       # a sweep's winner (jigclu.cli resolves it)

The training commands (pretrain, linear, semi, finetune) live in :mod:`jigclu.cli`.
"""

from __future__ import annotations

import argparse
import json


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``knn`` and ``export``."""
    knn = sub.add_parser("knn", help="weighted kNN accuracy of a backbone's frozen features",
                         description="Score a checkpoint's backbone by weighted kNN (k = monitor.k, "
                                     "T = monitor.knn_temperature): bank from the train split, queries "
                                     "from the test split (monitor.train_limit / test_limit).")
    knn.add_argument("--checkpoint", default=None, help="run directory, .pt checkpoint or export, a sweep's "
                                                        "trial directory, SWEEP@<trial id> or SWEEP@best (the "
                                                        "report's winner); omit for the random-init baseline")
    knn.add_argument("--config", "-c", default=None, help="YAML config file (data and model sections)")
    knn.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    knn.add_argument("--probe", action="store_true", help="also fit the linear probe (jigclu/evaluation/probe.py: "
                     "logistic regression on standardised pooled features of the bank, L2 strength chosen on "
                     "20%% of it) and score it on the queries; the fast alternative to `jigclu linear`")
    knn.add_argument("--json", action="store_true", help="print the result as one JSON object")
    knn.set_defaults(func=_cmd_knn)

    exp = sub.add_parser("export", help="write a checkpoint's backbone as a torchvision state dict",
                         description="Backbone only (no heads, no fc), as a plain torchvision ResNet "
                                     "state dict for detection / segmentation frameworks.")
    exp.add_argument("checkpoint", help="run directory or .pt checkpoint (pretraining or downstream), a sweep's "
                                        "trial directory, SWEEP@<trial id> or SWEEP@best (the report's winner)")
    exp.add_argument("out", help="output file, e.g. backbone.pt (written atomically)")
    exp.add_argument("--format", choices=("torchvision",), default="torchvision")
    exp.set_defaults(func=_cmd_export)


def _cmd_knn(args: argparse.Namespace) -> int:
    from rich.console import Console

    from jigclu.config import load_config
    from jigclu.pretrained import adopt_pretrained
    from jigclu.evaluation.scoring import knn_eval

    overrides = list(args.overrides) + ([f"eval.pretrained={args.checkpoint}"] if args.checkpoint else [])
    overrides += ["monitor.probe=true"] if args.probe else []
    cfg, notes = adopt_pretrained(load_config(args.config, overrides))
    result = knn_eval(cfg)
    if args.json:
        print(json.dumps({"checkpoint": cfg.eval.pretrained, **result}))
        return 0
    console = Console()
    for note in notes:
        console.print(f"[dim]{note}[/]")
    source = cfg.eval.pretrained or "random init"
    console.print(f"kNN (k={cfg.monitor.k}, {int(result['bank'])} bank / {int(result['queries'])} queries, "
                  f"{cfg.data.dataset}) of {source}: top-1 [bold]{result['knn_top1']:.2f}%[/]  "
                  f"top-5 {result['knn_top5']:.2f}%"
                  + (f"  linear probe top-1 [bold]{result['probe_top1']:.2f}%[/]" if "probe_top1" in result else ""))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from jigclu.export import export_torchvision

    print(export_torchvision(args.checkpoint, args.out).message())
    return 0


__all__ = ["add_cli"]
