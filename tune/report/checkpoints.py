"""Which kept checkpoint of a sweep trial holds the value the trial is ranked by.

A trial is ranked by its *best* value of the sweep's metric (:meth:`tune.report.trial.Trial.best`),
and a sweep keeps, per trial, the checkpoint of that best epoch besides its newest one (Tune's
``CheckpointConfig(checkpoint_score_attribute=<metric>)`` in ``tune/sweep.py``; under PBT its 4
newest instead, which exploits load). Each result row
names the Tune checkpoint written with it (``checkpoint_dir_name``), so the checkpoint of a ranked
value is found by the row, never guessed from an epoch number::

    trial-<id>/checkpoint_000002/state.pt               an in-process trial: the state itself
    trial-<id>/checkpoint_000002/train_checkpoint.json  a Ray Train trial: {run, checkpoint, epoch},
    train/<run>/checkpoint_epoch_00002/state.pt          pointing into the sweep's Train runs

When several epochs share the best value (Tune keeps the later one of a tie), a kept checkpoint
of any of them gives the ranked value back; the ranked epoch's own is preferred. When none is
kept (a sweep from before best-epoch checkpoints were kept, or a Train run whose own retention
deleted the checkpoint a pointer names) that is one line saying which checkpoints are left.
No Ray is imported: everything comes from the files, through :mod:`jigclu.storage`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jigclu import storage
from jigclu.errors import JigcluError
from jigclu.storage import StorageError
from tune.layout import POINTER
from tune.report.fmt import fmt_num
from tune.report.trial import Trial, finite, finite_int



class NoCheckpoint(JigcluError):
    """The trial keeps no checkpoint that holds the value it is ranked by."""


@dataclass(frozen=True)
class RankedCheckpoint:
    """The checkpoint file of a trial's ranked value, and which report row it came with."""

    file: str           # the state to load: state.pt of the Tune checkpoint, or of the Train checkpoint
    metric: str
    value: float        # the trial's best value of ``metric`` (what it is ranked by)
    epoch: int          # the ranked epoch (Tune's training_iteration, as the report shows it)
    kept_epoch: int     # the epoch of the checkpoint found: ``epoch``, or a later one with the same value

    def sentence(self) -> str:
        """How the trial is ranked and what its checkpoint gives back, in words."""
        same = ("its checkpoint of that epoch is kept" if self.kept_epoch == self.epoch else
                f"its checkpoint of epoch {self.kept_epoch}, which reported the same value, is kept")
        return f"ranked by its best epoch ({self.epoch}: {self.metric} {fmt_num(self.value)}); {same}"


def ranked_checkpoint(sweep_dir: str, trial: Trial, metric: str, mode: str) -> RankedCheckpoint:
    """The kept checkpoint that holds ``trial``'s best ``metric``; :class:`NoCheckpoint` (one line)
    when there is none."""
    best = trial.best(metric, mode)
    if best is None:
        raise NoCheckpoint(f"trial {trial.trial_id} has reported no {metric}, so it has no ranked checkpoint")
    value, epoch = best
    rows = {finite_int(r.get("training_iteration")): r for r in trial.results}
    ties = [e for e, v in trial.curve(metric) if v == value]
    order = [epoch] + sorted((e for e in ties if e != epoch), reverse=True)
    why: list[str] = []
    for candidate in order:
        row = rows.get(candidate) or {}
        found = _row_checkpoint(sweep_dir, trial, row, why)
        if found is not None:
            return RankedCheckpoint(found, metric, value, epoch, candidate)
    kept = _kept(sweep_dir, trial, rows, metric)
    raise NoCheckpoint(f"trial {trial.trial_id} is ranked by {metric} {fmt_num(value)} at epoch {epoch}, but no kept "
                       f"checkpoint holds that epoch ({why[0] if why else 'no report came with one'}); kept: "
                       f"{kept or 'none'}")


def _row_checkpoint(sweep_dir: str, trial: Trial, row: dict[str, Any], why: list[str]) -> str | None:
    """The state file of the checkpoint reported with ``row`` (None, with the reason in ``why``, when
    it is gone)."""
    name = row.get("checkpoint_dir_name")
    if not isinstance(name, str) or not name:
        why.append("its report came without a checkpoint")
        return None
    from jigclu.runs import STATE_FILE  # not at the top: jigclu.runs loads torch; the report needs none
    from tune.layout import SweepLayout

    directory = storage.join(sweep_dir, trial.dirname, name)
    state = storage.join(directory, STATE_FILE)
    if storage.is_file(state):
        return state
    pointer = storage.join(directory, POINTER)
    if not storage.is_file(pointer):
        why.append(f"{trial.dirname}/{name} was deleted: the sweep kept only its newest checkpoints")
        return None
    try:
        where = json.loads(storage.read_text(pointer))
        target = storage.join(SweepLayout(sweep_dir).train_root, where["run"], where["checkpoint"], STATE_FILE)
    except (StorageError, ValueError, KeyError, TypeError):
        why.append(f"{trial.dirname}/{name}/{POINTER} is unreadable")
        return None
    if storage.is_file(target):
        return target
    why.append(f"{trial.dirname}/{name} points to train/{where['run']}/{where['checkpoint']}, which the Ray Train "
               f"run's own retention (train.keep_checkpoints) deleted")
    return None


def _kept(sweep_dir: str, trial: Trial, rows: dict[int | None, dict[str, Any]], metric: str) -> str:
    """The trial's checkpoints still there, with the epoch and value each was reported with."""
    by_name = {r.get("checkpoint_dir_name"): e for e, r in rows.items() if r.get("checkpoint_dir_name")}
    names = sorted(n for n in storage.list_dir(storage.join(sweep_dir, trial.dirname)) if n.startswith("checkpoint_"))
    out = []
    for name in names:
        epoch = by_name.get(name)
        value = finite((rows.get(epoch) or {}).get(metric)) if epoch is not None else None
        out.append(f"{name} (epoch {epoch if epoch is not None else '?'}"
                   + (f", {fmt_num(value)})" if value is not None else ")"))
    return ", ".join(out)


__all__ = ["NoCheckpoint", "RankedCheckpoint", "ranked_checkpoint"]
