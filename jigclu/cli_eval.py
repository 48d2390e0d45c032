"""Downstream subcommands of the ``jigclu`` CLI: linear, semi, finetune, knn, export.

    jigclu linear   --config configs/linear.yaml eval.pretrained=runs/demo [key=value ...]
    jigclu semi     --config configs/semi.yaml --labels 1% eval.pretrained=runs/demo
    jigclu finetune --config configs/finetune_cifar.yaml --protocol linear eval.pretrained=...
    jigclu knn      --checkpoint runs/demo [--config ...] [key=value ...]
    jigclu export   runs/demo/checkpoints/last.pt backbone.pt --format torchvision

``jigclu.cli`` registers these through :func:`add_cli`. The training commands take the same
options as ``jigclu pretrain``; before anything starts they fit the config to the pretrained
checkpoint (adopting its ``model.arch``/``model.width`` when the user set none, see
:func:`jigclu.export.adopt_pretrained`) and fill in the protocol's paper defaults, so the
run's saved ``config.yaml`` says exactly what ran.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from jigclu.cli import _add_run_options, _print_summary

_HELP = {
    "linear": "linear evaluation: frozen backbone (BatchNorm included), new linear classifier",
    "semi": "semi-supervised fine-tuning on 1%/10% (or any fraction, or a file list) of the labels",
    "finetune": "CIFAR-style small-image training: fine-tune the whole network or a linear classifier",
}


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``linear``, ``semi``, ``finetune``, ``knn`` and ``export``."""
    for task, text in _HELP.items():
        # argparse %-formats help strings (not descriptions): "1%" must be written "1%%" there
        p = sub.add_parser(task, help=text.replace("%", "%%"), description=f"{text}. Set eval.pretrained=CKPT (a run "
                           f"directory, a .pt checkpoint or an exported state dict); without it the "
                           f"backbone starts from random init (the baseline). Paper defaults apply to "
                           f"every eval.* key left unset.")
        _add_run_options(p)
        if task == "semi":
            p.add_argument("--labels", default=None, metavar="1%|10%|FRACTION|FILE",
                           help="labeled subset: a percentage, a fraction in (0, 1], or a file listing "
                                "one training image per line (index, or file name for folder datasets)")
        if task == "finetune":
            p.add_argument("--protocol", choices=("finetune", "linear"), default=None,
                           help="finetune: whole network, lr 0.1, wd 5e-4; linear: frozen backbone, lr 10")
        p.set_defaults(func=_cmd_eval(task))

    knn = sub.add_parser("knn", help="weighted kNN accuracy of a backbone's frozen features",
                         description="Score a checkpoint's backbone by weighted kNN (k = monitor.k, "
                                     "T = monitor.knn_temperature): bank from the train split, queries "
                                     "from the test split (monitor.train_limit / test_limit).")
    knn.add_argument("--checkpoint", default=None, help="run directory, .pt checkpoint or export; "
                                                        "omit for the random-init baseline")
    knn.add_argument("--config", "-c", default=None, help="YAML config file (data and model sections)")
    knn.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    knn.add_argument("--json", action="store_true", help="print the result as one JSON object")
    knn.set_defaults(func=_cmd_knn)

    exp = sub.add_parser("export", help="write a checkpoint's backbone as a torchvision state dict",
                         description="Backbone only (no heads, no fc), as a plain torchvision ResNet "
                                     "state dict for detection / segmentation frameworks.")
    exp.add_argument("checkpoint", help="run directory or .pt checkpoint (pretraining or downstream)")
    exp.add_argument("out", help="output file, e.g. backbone.pt (written atomically)")
    exp.add_argument("--format", choices=("torchvision",), default="torchvision")
    exp.set_defaults(func=_cmd_export)


def prepare_config(task: str, cfg: Any, notify: Callable[[str], None] | None = None) -> Any:
    """Fit ``cfg`` to its pretrained checkpoint and fill in the protocol defaults (at the edge,
    so a bad checkpoint fails before a run directory exists)."""
    from jigclu.export import adopt_pretrained
    from jigclu.trainers.classify import resolve_eval

    cfg, notes = adopt_pretrained(cfg)
    for note in notes:
        (notify or print)(note)
    return resolve_eval(cfg, task)


def _cmd_eval(task: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from rich.console import Console

        from jigclu.config import load_config
        from jigclu.launch import launch

        overrides = list(args.overrides)
        if getattr(args, "labels", None) is not None:
            overrides.append(f"eval.labels={args.labels}")
        if getattr(args, "protocol", None) is not None:
            overrides.append(f"eval.protocol={args.protocol}")
        cfg = load_config(args.config, overrides)
        console = Console()
        cfg = prepare_config(task, cfg, lambda note: console.print(f"[dim]{note}[/]"))
        if not cfg.eval.pretrained:
            console.print("[yellow]no eval.pretrained: the backbone starts from random init (baseline)[/]")
        summary = launch(task, cfg, resume=args.resume, verbose=args.verbose,
                         progress=not args.no_progress, address=args.address)
        _print_summary(task, summary)
        return 0

    return run


def knn_eval(cfg: Any, device: str | None = None) -> dict[str, float]:
    """kNN top-1/top-5 of ``cfg``'s backbone (``eval.pretrained`` or random init) on its data."""
    import torch

    from jigclu.context import resolve_device
    from jigclu.data import load_dataset
    from jigclu.export import load_backbone_weights, load_into
    from jigclu.models import build_backbone
    from jigclu.trainers.common import seed_everything
    from jigclu.trainers.knn import KnnMonitor

    seed_everything(cfg.seed)
    dev = torch.device(device) if device else resolve_device(cfg.device)
    backbone = build_backbone(cfg.model.arch, cfg.model.width)
    if cfg.eval.pretrained:
        load_into(backbone, load_backbone_weights(cfg.eval.pretrained))
    backbone.to(dev)
    train = load_dataset(cfg.data.dataset, "train", image_size=cfg.data.image_size, on_corrupt=cfg.data.on_corrupt)
    test = load_dataset(cfg.data.dataset, "test", image_size=cfg.data.image_size, on_corrupt=cfg.data.on_corrupt)
    size = cfg.eval.image_size or cfg.jigsaw.crop_size
    monitor = KnnMonitor.from_datasets(train, test, size, cfg.monitor.k, cfg.monitor.knn_temperature,
                                       cfg.monitor.train_limit, cfg.monitor.test_limit, seed=cfg.seed)
    result = monitor.evaluate(backbone, dev)
    result.update(bank=float(len(monitor.bank_labels)), queries=float(len(monitor.query_labels)))
    return result


def _cmd_knn(args: argparse.Namespace) -> int:
    from rich.console import Console

    from jigclu.config import load_config
    from jigclu.export import adopt_pretrained

    overrides = list(args.overrides) + ([f"eval.pretrained={args.checkpoint}"] if args.checkpoint else [])
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
                  f"top-5 {result['knn_top5']:.2f}%")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from jigclu.export import export_torchvision

    print(export_torchvision(args.checkpoint, args.out).message())
    return 0


__all__ = ["add_cli", "prepare_config", "knn_eval"]
