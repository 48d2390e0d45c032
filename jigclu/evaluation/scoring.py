"""Scoring a backbone once on a dataset: ``jigclu knn`` (:func:`knn_eval`) and a sweep's one test
score of its selected trials (:func:`test_score`), by kNN and, with ``monitor.probe``, the probe.

A small source's images are read whole into a :class:`~jigclu.evaluation.knn.KnnMonitor`. A ``parquet:`` source of at least ``data.stream_min_images`` training rows
(the size from which pretraining streams it) is read through its plan
(:mod:`jigclu.data.stream`) instead: the bank is a seeded sample of ``monitor.train_limit``
training rows (whole row groups in a seeded order, as the streamed monitor's bank), the queries are
the test split's rows (a seeded sample of ``monitor.test_limit``, or all of them), and each is
decoded one row group at a time and kept only as its pooled features. Memory holds the features
(rows x width) and one row group, never the split; ``bank`` and ``queries`` in the result say
how many rows were scored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from jigclu.data.datasets import parse_spec
from jigclu.data.stream import StreamPlan, Unit, plan_stream
from jigclu.data.stream_runs import plan_for
from jigclu.data.stream_loader import sample_chunks
from jigclu.errors import DataError
from jigclu.evaluation.knn import KnnMonitor, feature_scores, held_out_monitor, pooled_features


def test_score(cfg: Any, model_state: dict[str, Any], device: str = "cpu") -> dict[str, float]:
    """A pretrained model's score on the whole test split, measured once (after selection on the
    validation split): the same bank as its monitor (training images, validation split excluded),
    the kNN and, with ``monitor.probe``, the linear probe."""
    from jigclu.methods import build_method
    from jigclu.data.splits import training_splits

    model = build_method(cfg).model  # the method's network: backbone + its heads
    model.load_state_dict(model_state)
    backbone, dev = model.backbone.to(device), torch.device(device)
    plan = evaluation_plan(cfg, carved=True)
    if plan is not None:
        return streamed_scores(backbone, plan, cfg, cfg.monitor_size, dev, test_limit=None, seed=cfg.data.val_seed)
    train_ds, _ = training_splits(cfg)
    monitor = held_out_monitor(cfg, train_ds, None, test=True)
    result = monitor.evaluate(backbone, dev)
    result["queries"] = float(len(monitor.query_labels))
    return result


def knn_eval(cfg: Any, device: str | None = None) -> dict[str, float]:
    """kNN top-1/top-5 (and with ``monitor.probe`` the linear probe's top-1) of ``cfg``'s backbone
    (``eval.pretrained`` or random init) on its data: bank from the train split, queries from the
    test split (``monitor.*`` limits)."""
    from jigclu.context import resolve_device
    from jigclu.data import load_dataset
    from jigclu.pretrained import load_backbone_weights, load_into
    from jigclu.models import build_backbone
    from jigclu.trainers.common import seed_everything

    seed_everything(cfg.seed)
    dev = torch.device(device) if device else resolve_device(cfg.device)
    backbone = build_backbone(cfg.model.arch, cfg.model.width)
    if cfg.eval.pretrained:
        load_into(backbone, load_backbone_weights(cfg.eval.pretrained))
    backbone.to(dev)
    size = cfg.eval.image_size or cfg.jigsaw.crop_size
    plan = evaluation_plan(cfg, carved=False)
    if plan is not None:
        return streamed_scores(backbone, plan, cfg, size, dev, test_limit=cfg.monitor.test_limit, seed=cfg.seed)
    splits = [load_dataset(cfg.data.dataset, split, image_size=cfg.data.image_size, on_corrupt=cfg.data.on_corrupt)
              for split in ("train", "test")]
    monitor = KnnMonitor.from_datasets(*splits, size, cfg.monitor.k, cfg.monitor.knn_temperature,
                                       cfg.monitor.train_limit, cfg.monitor.test_limit, seed=cfg.seed,
                                       probe=cfg.monitor.probe)
    result = monitor.evaluate(backbone, dev)
    result.update(bank=float(len(monitor.bank_labels)), queries=float(len(monitor.query_labels)))
    return result


def evaluation_plan(cfg: Any, *, carved: bool) -> StreamPlan | None:
    """The plan to score ``cfg``'s data through, or None when it is read into memory (not a
    ``parquet:`` source, or one under ``data.stream_min_images`` training rows). ``carved``: the
    run's own training rows (validation split and ``data.limit`` applied, as its monitor saw them),
    else the whole train split (``jigclu knn``)."""
    kind, location = parse_spec(cfg.data.dataset)
    if kind != "parquet" or not location:
        return None
    plan = plan_for(cfg) if carved else plan_stream(location, image_size=cfg.data.image_size)
    return plan if plan.num_rows >= cfg.data.stream_min_images else None


def streamed_scores(backbone: nn.Module, plan: StreamPlan, cfg: Any, size: int, device: torch.device, *,
                    test_limit: int | None, seed: int) -> dict[str, float]:
    """kNN (and with ``monitor.probe`` the probe) of ``backbone``: bank from the plan's training rows,
    queries from its test split (see the module docstring)."""
    where = f"parquet:{plan.location}"
    if not plan.test_units:
        raise DataError(f"{where} has no rows whose split is test to score on")
    mon = cfg.monitor
    bank, bank_labels = _features(backbone, plan, plan.units, mon.train_limit, seed, size, device, where,
                                  "monitor.train_limit", "training")
    queries, query_labels = _features(backbone, plan, plan.test_units, test_limit, seed + 1, size, device, where,
                                      "monitor.test_limit", "test")
    out = feature_scores(bank, bank_labels, queries, query_labels, plan.num_classes, mon.k, mon.knn_temperature,
                         mon.probe, seed)
    out.update(bank=float(len(bank_labels)), queries=float(len(query_labels)))
    return out


def _features(backbone: nn.Module, plan: StreamPlan, units: list[Unit], limit: int | None, seed: int, size: int,
              device: torch.device, where: str, key: str, split: str) -> tuple[Tensor, Tensor]:
    rows = sum(u.kept for u in units)
    if limit is not None and limit > rows:
        raise DataError(f"{key}={limit} is larger than the {split} split of {where} ({rows} rows); lower it or "
                        f"set it to null for all of them")
    feats, labels = [], []
    for images, chunk_labels in sample_chunks(plan, units, limit, seed):
        feats.append(pooled_features(backbone, images, size, device))
        labels.append(chunk_labels)
    if not feats:
        raise DataError(f"{where}: no decodable image among the {split} rows sampled")
    return torch.cat(feats), torch.cat(labels).to(device)


__all__ = ["evaluation_plan", "knn_eval", "streamed_scores", "test_score"]
