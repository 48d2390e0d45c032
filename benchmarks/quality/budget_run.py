"""One budgeted pretraining run, scored on frozen features: the unit of work of ``quality.py``.

    python -m benchmarks.quality.budget_run --method jigclu --points 5,10,20,30 --out run.json [key=value ...]

Trains ``--method`` (jigclu, simclr or supervised; ``benchmarks/quality/equal_time.py``) on the whole
training split for the last of ``--points`` minutes of wall clock, keeps the backbone at each
point, then scores every snapshot on frozen, globally pooled features (``KnnMonitor`` with
``probe``: the standardised-feature logistic-regression probe of ``jigclu/evaluation/probe.py``, its L2
strength chosen on a seeded 20% of the training side, and kNN with k = 20, cosine, the whole
training split as the bank), always on the whole test split. Writes one JSON file. ``--points 0``
scores the random initialisation. The recipe is ``--config`` (``configs/fashion_mnist.yaml``)
plus ``key=value`` overrides; ``--save`` writes the last snapshot as a pretraining checkpoint
(``{"model": {"backbone.*": ...}, "config": ...}``) that ``jigclu export`` and ``eval.pretrained``
read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import common
from benchmarks.quality.equal_time import SupervisedMethod, train_for_budget
from jigclu.checkpoint import save_checkpoint
from jigclu.config import load_config
from jigclu.data import load_dataset
from jigclu.data.splits import training_splits
from jigclu.errors import JigcluError
from jigclu.methods import build_method
from jigclu.models import ResNetBackbone
from jigclu.evaluation.probe import linear_probe
from jigclu.evaluation.knn import KnnMonitor, knn_predict, topk_accuracy

# kNN monitors as runs configure them: (bank, queries); the old demo's and configs/fashion_mnist.yaml's
MONITORS = {"5k_1k": (5000, 1000), "10k_2k": (10000, 2000)}
DEFAULT_CONFIG = str(common.REPO_ROOT / "configs" / "fashion_mnist.yaml")


def load_splits(cfg: Any) -> tuple[Any, Any]:
    """The training side (``data.limit`` first images; without the validation split when the recipe
    carves one, ``data.val_size``) and the whole test split, at the recipe's size."""
    return training_side(cfg)[0], test_split(cfg)


def training_side(cfg: Any) -> tuple[Any, Any | None]:
    """``(train, val)``: ``jigclu.data.splits.training_splits`` at the recipe's size (val: None
    without ``data.val_size``)."""
    size = cfg.data.image_size or cfg.jigsaw.crop_size
    return training_splits(cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": size})}))


def test_split(cfg: Any) -> Any:
    return load_dataset(cfg.data.dataset, "test", image_size=cfg.data.image_size or cfg.jigsaw.crop_size)


def backbone_of(cfg: Any, state: dict[str, torch.Tensor] | None) -> ResNetBackbone:
    """The recipe's backbone with ``state`` (None: the random init of the seed)."""
    torch.manual_seed(cfg.seed)
    backbone = ResNetBackbone(cfg.model.arch, cfg.model.width)
    if state is not None:
        backbone.load_state_dict(state)
    return backbone


def score(cfg: Any, backbone: torch.nn.Module, train: Any, test: Any, monitors: bool = True) -> dict[str, float]:
    """Probe and kNN top-1 (%) of ``backbone``'s pooled features on the test split; with ``monitors``
    also what a pretraining run's kNN monitor would say (seeded subsets of the bank and queries)."""
    monitor = KnnMonitor(train.images, train.labels, test.images, test.labels, train.num_classes,
                         cfg.monitor_size, cfg.monitor.k, cfg.monitor.knn_temperature, probe=True, seed=cfg.seed)
    t0 = time.perf_counter()
    out = monitor.evaluate(backbone, torch.device("cpu"))
    result = {"probe": out["probe_top1"], "knn": out["knn_top1"], "score_s": time.perf_counter() - t0}
    for name, (bank, queries) in MONITORS.items() if monitors else ():
        small = KnnMonitor.from_datasets(train, test, cfg.monitor_size, cfg.monitor.k, cfg.monitor.knn_temperature,
                                         bank, queries, seed=cfg.data.val_seed)
        result[f"monitor_{name}"] = small.evaluate(backbone, torch.device("cpu"))["knn_top1"]
    return result


def pixel_scores(cfg: Any, train: Any, test: Any) -> dict[str, float]:
    """The same probe and kNN on the flattened pixels (one channel, [0, 1])."""
    flat = [d.images[:, :1].flatten(1).float() / 255.0 for d in (train, test)]
    probe = linear_probe(flat[0], train.labels, flat[1], test.labels, train.num_classes, seed=cfg.seed)
    bank, queries = (F.normalize(x - flat[0].mean(0), dim=1) for x in flat)
    knn = topk_accuracy(knn_predict(bank, train.labels, queries, train.num_classes, cfg.monitor.k,
                                    cfg.monitor.knn_temperature), test.labels, (1,))[1]
    return {"probe": probe.top1, "knn": knn}


class MinuteLog:
    """Progress for a log file: one line per minute of training."""

    def __init__(self, label: str) -> None:
        self.label, self.shown = label, 0

    def __call__(self, elapsed: float, budget: float) -> None:
        if int(elapsed // 60) > self.shown:
            self.shown = int(elapsed // 60)
            print(f"{self.label}: {self.shown}/{budget / 60:g} min", flush=True)


def build(method: str, cfg: Any, num_classes: int) -> torch.nn.Module:
    """The library's pretraining method (``jigclu.methods``), or the supervised reference."""
    return SupervisedMethod(cfg, num_classes) if method == "supervised" else build_method(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("jigclu", "simclr", "supervised"), default="jigclu")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--points", default="5,10,20,30", help="budget points, minutes of training (0: random init)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--simclr-temperature", type=float, default=0.2)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--pixels", action="store_true", help="also score the raw pixels (standardised, flattened)")
    parser.add_argument("--no-monitors", dest="monitors", action="store_false",
                        help="score only the probe and the full kNN, not the small kNN monitors too")
    parser.add_argument("--save", default=None, help="write the last snapshot as a checkpoint here")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        method_keys = [] if args.method == "supervised" else [f"method={args.method}"]
        if args.method == "simclr":
            method_keys.append(f"loss.temperature={args.simclr_temperature}")  # SupClu and NT-Xent are tuned apart
        cfg = load_config(args.config, [*args.overrides, *method_keys])
    except JigcluError as exc:
        print(f"budget_run: {exc}", file=sys.stderr)
        return 2
    points = sorted(float(p) for p in args.points.split(","))
    train, val = training_side(cfg)
    test = test_split(cfg)
    result: dict[str, Any] = {"method": args.method, "overrides": args.overrides, "seed": cfg.seed,
                              "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                              "train_images": len(train), "test_images": len(test), "points": {},
                              "recipe": {"batch": cfg.data.batch_size, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
                                         "temperature": cfg.loss.temperature, "side": cfg.jigsaw.crop_size}}
    snapshots: dict[float, dict[str, torch.Tensor] | None] = {0.0: None} if 0.0 in points else {}
    trained = [p for p in points if p > 0]
    if trained:
        torch.manual_seed(cfg.seed)
        method = build(args.method, cfg, train.num_classes)
        run = train_for_budget(method, train.images, trained, batch_size=cfg.data.batch_size, lr=cfg.optim.lr,
                               weight_decay=cfg.optim.weight_decay, seed=cfg.seed,
                               labels=train.labels if args.method == "supervised" else None,
                               progress=MinuteLog(f"{args.method} seed {cfg.seed}"))
        snapshots.update(run.snapshots)
        result.update(steps=run.steps, images=run.images, seconds=run.seconds,
                      images_per_s=run.images / max(run.seconds, 1e-9), loss_first=run.losses[0][1] if run.losses else None,
                      loss_last=run.losses[-1][1] if run.losses else None)
        if args.save:
            state = {"model": {f"backbone.{k}": v for k, v in run.snapshots[max(trained)].items()},
                     "config": cfg.model_dump(mode="json"), "task": "pretrain"}
            save_checkpoint(state, args.save)
    for minutes, state in sorted(snapshots.items()):
        result["points"][f"{minutes:g}"] = score(cfg, backbone_of(cfg, state), train, test, args.monitors)
        print(f"{args.method} seed {cfg.seed} @ {minutes:g} min: {result['points'][f'{minutes:g}']}", flush=True)
    if val is not None:  # what selection reads: the last snapshot on the validation split
        result["val"] = score(cfg, backbone_of(cfg, snapshots[max(points)]), train, val, monitors=False)
        result["val_images"] = len(val)
        print(f"{args.method} seed {cfg.seed} @ {max(points):g} min on val: {result['val']}", flush=True)
    if args.pixels:
        result["pixels"] = pixel_scores(cfg, train, test)
        print(f"raw pixels: {result['pixels']}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
