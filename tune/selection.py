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
from jigclu.storage import write_atomic
from tune.layout import TEST_SCORES, SweepLayout
from tune.space import Sweep

# What a pretraining trial reports without labels (a source of one class): the losses.
UNLABELED_METRICS = ("loss", "loss_clu", "loss_loc", "loc_acc")


def check_data(sweep: Sweep) -> None:
    """One line before any trial starts: a validation split larger than the training split, or
    an objective that needs labels on a source without them."""
    from jigclu.data import load_dataset
    from jigclu.data.splits import split_validation

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


def score_on_test(sweep: Sweep, layout: SweepLayout, say: Any = print) -> dict[str, Any] | None:
    """Score the ``test_top_k`` best trials (by the sweep's metric on the validation split, in the
    report's order: with repeats, the leaders by their mean over seeds) once on the test split, each
    from the checkpoint of the epoch it is ranked by (the one ``SWEEP@best`` exports); writes and
    returns ``test_scores.json``."""
    from jigclu.checkpoint import load_checkpoint
    from jigclu.evaluation.scoring import test_score
    from tune.report.checkpoints import NoCheckpoint, ranked_checkpoint
    from tune.report.data import load_sweep_dir
    from tune.report.summary import build_report

    spec = sweep.spec
    if spec.test_top_k == 0 or spec.task != "pretrain" or spec.val_size is None:
        return None
    data = load_sweep_dir(layout.root)
    trials = {t.trial_id: t for t in data.trials}
    report = build_report(data, top=None, metric=sweep.metric, mode=spec.mode, importances=False)
    entries = []
    for entry in report["top"]:
        if len(entries) == spec.test_top_k:
            break
        if entry["status"] == "errored" or entry["best_value"] is None:
            continue
        try:
            found = ranked_checkpoint(layout.root, trials[entry["trial_id"]], sweep.metric, spec.mode)
        except NoCheckpoint as exc:
            say(f"not scoring trial {entry['trial_id']} on the test split: {exc}")
            continue
        state = load_checkpoint(found.file, map_location="cpu")
        cfg = build_config(RunConfig, state["config"])
        rank = len(entries) + 1
        say(f"scoring trial {entry['trial_id']} (rank {rank} on val, {sweep.metric} {found.value:.2f} at epoch "
            f"{found.epoch}) once on the test split")
        scores = test_score(cfg, state["model"])
        entries.append({"trial_id": entry["trial_id"], "rank": rank, "epoch": int(state["epoch"]) + 1,
                        "val_value": found.value, "queries": int(scores.pop("queries")),
                        "metrics": {k: float(v) for k, v in scores.items()}})
    if not entries:
        return None
    out = {"split": "test", "selected_on": "val", "metric": sweep.metric, "trials": entries}
    write_atomic(layout.file(TEST_SCORES), json.dumps(out, indent=1))
    return out


__all__ = ["UNLABELED_METRICS", "check_data", "score_on_test"]
