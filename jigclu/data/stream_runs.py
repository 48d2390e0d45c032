"""Which plan a run streams: the loader a run uses, a semi run's labeled rows, the plan saved with the run.

:mod:`jigclu.data.stream` plans a ``parquet:`` source; this module makes the plan of a *run* of a
task from its config, once (:func:`plan_for`, kept per process), before anything starts
(:func:`choose_loader`, called by ``jigclu.launch.prepare``, so bad input is one line and no run
directory), and saves it with the run (:func:`run_plan`).

Every task streams: pretraining, and the downstream trainers (linear, semi, finetune), which
read their training rows through Ray Data and score their validation or test split one row group
at a time. A semi run's labeled subset (``eval.labels``: 1%, 10%, a fraction, or a file of row
indices) is drawn from the training rows' labels alone (the ``label`` column of each row group,
never an image), class-balanced with ``eval.label_seed`` exactly as the in-memory reader draws it
(positions among the train split's rows, in the same order), and lives in the plan: its units
stream only the labeled rows (``Unit.take``) and ``StreamPlan.labeled`` lists their positions.
Reading those rows still reads their row groups, so a 1% subset of a source costs about a full pass
of its row groups per epoch; write the subset as its own source when that matters.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from jigclu import storage
from jigclu.config import label_fraction
from jigclu.data.splits import balanced_subset_indices, label_file_entries
from jigclu.data.decode import read_rows, resolve
from jigclu.data.stream import StreamPlan, plan_stream
from jigclu.errors import ConfigError, DataError

STREAMING_TASKS = ("pretrain", "linear", "semi", "finetune")
_LABELED: dict[tuple[Any, ...], tuple[StreamPlan, StreamPlan]] = {}  # (plan id, labels, seed, file) -> (plan, labeled)


def plan_for(cfg: Any, task: str = "pretrain") -> StreamPlan:
    """The plan of a run of ``task`` on ``cfg``'s ``parquet:`` source (``data.image_size``, ``val_size``,
    ``val_seed``, ``limit``; a semi run's labeled subset), made once per process."""
    d = cfg.data
    plan = plan_stream(d.dataset.partition(":")[2], image_size=d.image_size, val_size=d.val_size,
                       val_seed=d.val_seed, limit=d.limit)
    return labeled_plan(plan, cfg.eval.labels, cfg.eval.label_seed) if task == "semi" else plan


def labeled_plan(plan: StreamPlan, spec: str, seed: int) -> StreamPlan:
    """``plan`` streaming only the labeled rows ``spec`` names (see the module docstring)."""
    stamp = None if label_fraction(spec) is not None else _file_stamp(spec)
    key = (id(plan), spec, seed, stamp)
    if key not in _LABELED:
        _LABELED[key] = (plan, _restrict(plan, _labeled_positions(plan, spec, seed)))
        while len(_LABELED) > 8:
            _LABELED.pop(next(iter(_LABELED)))
    return _LABELED[key][1]


def _file_stamp(path: str) -> tuple[int, int] | None:
    from pathlib import Path

    try:
        info = Path(path).expanduser().stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def train_labels(plan: StreamPlan) -> torch.Tensor:
    """The label of every training row of ``plan``, in plan order (only the ``label`` column is read)."""
    fs = resolve(plan.location)[0]
    with ThreadPoolExecutor(max_workers=8) as pool:  # object stores: row groups in parallel
        parts = list(pool.map(lambda u: read_rows(fs, u, u.kept_rows(), columns=("label",))["label"], plan.units))
    labels = [label for part in parts for label in part]
    if any(label is None for label in labels):
        raise DataError(f"parquet:{plan.location} has training rows without a label; the downstream trainers "
                        f"need one on every row")
    return torch.tensor(labels, dtype=torch.long)


def _labeled_positions(plan: StreamPlan, spec: str, seed: int) -> list[int]:
    n = plan.num_rows
    fraction = label_fraction(spec)
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"eval.labels: label fraction must lie in (0, 1], got {spec!r}")
        return balanced_subset_indices(train_labels(plan), fraction=fraction, seed=seed).tolist()
    entries = label_file_entries(spec)
    named = [e for e in entries if not e.isdigit()]
    if named:
        raise ConfigError(f"eval.labels: {spec} names {named[0]!r}; a parquet: source's rows are named by their "
                          f"index in the train split (0 to {n - 1})")
    beyond = [e for e in entries if int(e) >= n]
    if beyond:
        raise ConfigError(f"eval.labels: {spec} names {len(beyond)} row(s) that do not exist in the {n}-row train "
                          f"split of parquet:{plan.location} (first: {beyond[0]})")
    return sorted({int(e) for e in entries})


def _restrict(plan: StreamPlan, positions: list[int]) -> StreamPlan:
    """``plan`` whose units stream only the train rows at ``positions`` (sorted)."""
    chosen = np.asarray(positions, dtype=np.int64)
    units, start = [], 0
    for unit in plan.units:
        rows = unit.kept_rows()
        lo, hi = np.searchsorted(chosen, [start, start + len(rows)])
        if hi > lo:
            units.append(replace(unit, skip=(), take=tuple(int(r) for r in rows[chosen[lo:hi] - start])))
        start += len(rows)
    return replace(plan, units=units, labeled=[int(p) for p in chosen])


def run_plan(task: str, cfg: Any, layout: Any) -> StreamPlan | None:
    """The plan a run of ``task`` on ``cfg`` streams (None unless ``data.loader`` is ``ray_data``): the one saved
    with the run at ``layout`` (:class:`~jigclu.runs.RunLayout`) when its data settings are the
    config's, so a resume reads the rows the run started with even if the source changed since;
    else the plan made now, saved there."""
    if cfg.data.loader != "ray_data":
        return None
    d = cfg.data
    settings = {"dataset": d.dataset, "image_size": d.image_size, "val_size": d.val_size, "val_seed": d.val_seed,
                "limit": d.limit, **({"labels": cfg.eval.labels, "label_seed": cfg.eval.label_seed} if task == "semi" else {})}
    if storage.exists(layout.stream_plan):
        saved = json.loads(storage.read_text(layout.stream_plan))
        if saved.get("settings") == settings:
            return StreamPlan.from_json(saved["plan"])
    plan = plan_for(cfg, task)
    storage.write_atomic(layout.stream_plan, json.dumps({"settings": settings, "plan": plan.to_json()}))
    return plan




def choose_loader(task: str, cfg: Any) -> str:
    """``memory`` or ``ray_data`` for ``cfg`` (``data.loader: auto`` resolved); one line when impossible.

    ``auto`` streams a ``parquet:`` source of at least ``data.stream_min_images`` training rows
    (counted from its footers) when the run has Ray Train workers; everything else (small sets,
    single-process runs) reads into memory. A streamed semi run's labeled subset is drawn here, so a
    labels file naming rows that do not exist is one line before anything starts.
    """
    from jigclu.data.datasets import parse_spec
    from jigclu.data.parquet import HINT

    loader, workers = cfg.data.loader, cfg.scaling.workers
    kind, location = parse_spec(cfg.data.dataset)
    if loader == "memory" or (loader == "auto" and (kind != "parquet" or task not in STREAMING_TASKS
                                                   or workers == 0)):
        return "memory"
    if kind != "parquet":
        raise ConfigError(f"data.loader=ray_data streams parquet: sources, not {kind}; convert it first with "
                          f"'jigclu data convert {cfg.data.dataset} DEST' and use data.dataset=parquet:DEST")
    if task not in STREAMING_TASKS:
        raise ConfigError(f"data.loader=ray_data streams training data; {task} reads its data into memory "
                          f"(data.loader=memory)")
    if workers == 0:
        raise ConfigError("data.loader=ray_data streams into Ray Train workers: set scaling.workers >= 1 "
                          "(or data.loader=memory)")
    if not location:
        raise DataError(f"parquet needs a location: parquet:/dir or parquet:s3://bucket/prefix; {HINT}")
    plan = plan_for(cfg)  # footers (and the validation sample's labels), kept for the run (plan_stream)
    if loader == "auto" and plan.num_rows < cfg.data.stream_min_images:
        return "memory"
    if task != "pretrain" and plan.unlabeled:
        raise DataError(f"parquet:{location} has {plan.unlabeled} rows without a label; {task} trains and scores "
                        f"on labels (pretraining alone can stream it)")
    if task != "pretrain":
        scored_units(plan, task)
    plan_for(cfg, task)  # a semi run's labeled rows (kept for the run)
    return "ray_data"


def scored_units(plan: StreamPlan, task: str) -> list[Any]:
    """The row groups a downstream run scores on: the validation split's (``data.val_size``), else the
    test split's; none is a one-line error."""
    units = plan.val_units or plan.test_units
    if not units:
        raise DataError(f"parquet:{plan.location} has no validation or test rows for {task} to score on; set "
                        f"data.val_size or give it a split column with test rows")
    return units


__all__ = ["STREAMING_TASKS", "choose_loader", "labeled_plan", "plan_for", "run_plan", "scored_units", "train_labels"]


