"""Honest selection: the data checks a sweep needs before it starts, and the one test-split score
of its best trials after it ends.

Every selection of a sweep (ASHA's rungs, the searcher's objective, the report's ranking) scores
the validation split that ``data.val_size`` (the sweep's ``val_size``) carves from the training
images; the test split is scored once, here, for the ``test_top_k`` best trials, and written to
``<sweep>/test_scores.json`` for the report to show next to their validation values.
"""

from __future__ import annotations

import json
from typing import Any

from jigclu.config import RunConfig, build_config
from jigclu.errors import ConfigError
from jigclu.runs import SweepLayout
from jigclu.storage import write_atomic
from tune.space import Sweep

# What a pretraining trial reports without labels (a source of one class): the losses.
UNLABELED_METRICS = ("loss", "loss_clu", "loss_loc", "loc_acc")
TEST_SCORES = "test_scores.json"
BUDGET_STOPPED = "budget_stopped.json"  # ids of the trials the time budget ended (a JSON list)


def check_data(sweep: Sweep) -> None:
    """One line before any trial starts: a validation split larger than the training split, or
    an objective that needs labels on a source without them."""
    from jigclu.data import load_dataset
    from jigclu.trainers.common import split_validation

    cfg = sweep.trial_config({})
    train = load_dataset(cfg.data.dataset, "train", image_size=cfg.data.image_size, on_corrupt=cfg.data.on_corrupt)
    if train.num_classes < 2 and sweep.spec.task == "pretrain":
        if sweep.spec.objective == "linear_probe":
            raise ConfigError(f"sweep: objective linear_probe needs labels, but {cfg.data.dataset} has one class; "
                              f"use metric: loss with mode: min")
        if sweep.metric not in UNLABELED_METRICS:
            raise ConfigError(f"sweep: {cfg.data.dataset} has no labels (one class), so there is no {sweep.metric}; "
                              f"a sweep can select on {', '.join(UNLABELED_METRICS)} (e.g. metric: loss, mode: min)")
    split_validation(train, cfg.data.val_size, cfg.data.val_seed, cfg.data.dataset)


def _best_value(result: Any, metric: str, mode: str) -> float | None:
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or metric not in frame or frame[metric].dropna().empty:
        return None
    column = frame[metric].dropna()
    return float(column.max() if mode == "max" else column.min())


def score_on_test(sweep: Sweep, layout: SweepLayout, grid: Any, say: Any = print) -> dict[str, Any] | None:
    """Score the ``test_top_k`` best trials (by the sweep's metric on the validation split) once on
    the test split, from each one's final checkpoint; writes and returns ``test_scores.json``."""
    from jigclu.ray_train import state_from
    from jigclu.trainers.knn import test_score
    from tune.train_trial import pointed_state

    spec = sweep.spec
    if spec.test_top_k == 0 or spec.task != "pretrain" or spec.val_size is None:
        return None
    ranked = [(v, r) for r in grid if r.error is None and r.checkpoint is not None
              and (v := _best_value(r, sweep.metric, spec.mode)) is not None]
    ranked.sort(key=lambda vr: -vr[0] if spec.mode == "max" else vr[0])
    entries = []
    for rank, (value, result) in enumerate(ranked[:spec.test_top_k], 1):
        # an in-process trial's checkpoint holds the state; a Ray Train trial's points to it
        state = pointed_state(result.checkpoint, layout.train_root) or state_from(result.checkpoint)
        if state is None:
            continue
        cfg = build_config(RunConfig, state["config"])
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1].removeprefix("trial-")
        say(f"scoring trial {trial_id} (rank {rank} on val, {sweep.metric} {value:.2f}) once on the test split")
        scores = test_score(cfg, state["model"])
        entries.append({"trial_id": trial_id, "rank": rank, "epoch": int(state["epoch"]) + 1,
                        "val_value": value, "queries": int(scores.pop("queries")),
                        "metrics": {k: float(v) for k, v in scores.items()}})
    if not entries:
        return None
    out = {"split": "test", "selected_on": "val", "metric": sweep.metric, "trials": entries}
    write_atomic(layout.file(TEST_SCORES), json.dumps(out, indent=1))
    return out


__all__ = ["BUDGET_STOPPED", "TEST_SCORES", "UNLABELED_METRICS", "check_data", "score_on_test"]
