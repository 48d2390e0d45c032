"""Successive halving that pauses and promotes (``scheduler.type: promote``).

Ray's ``ASHAScheduler`` *stops* a trial that is behind at a rung, and a rung's first arrivals pass
it only because nobody better has arrived yet (ray-project/ray#4401): late winners are cut. This
is ASHA as Li et al. ("A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) wrote
it: a trial that reaches a rung (epochs ``grace_period * eta^k`` below ``max_t``) is *paused* there
with its checkpoint, unless it is already in the top ``1/eta`` of everything that rung has seen;
whenever a trial slot is free, the best paused trial that has become top ``1/eta`` of its rung is
*promoted* (resumed from its checkpoint, not from epoch 0), the highest rung first; only when no
paused trial qualifies does a new config start. Once the search has no new config to give and
nothing is running, the paused trials that never qualified are ended (they show as "stopped").

Repeat trials (``tune/repeats.py``) are never paused: they are the seeds of configs that already
won. A value that is not finite ranks last.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune.repeats import is_repeat
from tune.spec import milestones


class PromotionScheduler(FIFOScheduler):
    """Pause at rungs, promote the top ``1/eta`` (module docstring)."""

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float,
                 time_attr: str = "training_iteration") -> None:
        super().__init__()
        self._metric, self._mode, self.time_attr, self.eta = metric, mode, time_attr, reduction_factor
        self.rungs: dict[int, dict[str, float]] = {m: {} for m in milestones(grace_period, reduction_factor, max_t)}
        self.promoted: dict[int, set[str]] = {m: set() for m in self.rungs}
        self.waiting: dict[str, int] = {}  # trial id -> the rung it is paused at

    def _score(self, value: Any) -> float:
        """Higher is better, whatever the mode; not finite: last."""
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return -math.inf
        return float(value) if self._mode == "max" else -float(value)

    def _qualifies(self, rung: int, trial_id: str) -> bool:
        """In the top ``floor(n / eta)`` of the ``n`` trials that reached ``rung``, and not yet promoted."""
        seen = self.rungs[rung]
        top = sorted(seen, key=lambda t: -seen[t])[:int(len(seen) / self.eta)]
        return trial_id in top and trial_id not in self.promoted[rung]

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        if is_repeat(trial.config):
            return TrialScheduler.CONTINUE
        epoch = int(result.get(self.time_attr) or 0)
        if epoch not in self.rungs or trial.trial_id in self.rungs[epoch]:
            return TrialScheduler.CONTINUE
        self.rungs[epoch][trial.trial_id] = self._score(result.get(self._metric))
        if self._qualifies(epoch, trial.trial_id):
            self.promoted[epoch].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        self.waiting[trial.trial_id] = epoch
        return TrialScheduler.PAUSE

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trials = tune_controller.get_trials()
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED and t.trial_id in self.waiting}
        for rung in sorted(self.rungs, reverse=True):  # the highest rung first
            at_rung = [tid for tid, r in self.waiting.items() if r == rung and tid in paused]
            for tid in sorted(at_rung, key=lambda t: -self.rungs[rung][t]):
                if self._qualifies(rung, tid):
                    self.promoted[rung].add(tid)
                    del self.waiting[tid]
                    return paused[tid]
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:  # paused before a resumed sweep's driver stopped: its rung records are gone
            if trial.status == Trial.PAUSED and trial.trial_id not in self.waiting:
                return trial
        # Tune asks the search for a new trial at every step before it calls this: with nothing running
        # or pending, the search has no config left (or, with repeats, waits for these trials to end
        # before it names its leaders), and the paused trials that never qualified are done.
        if paused and not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials):
            for tid, trial in paused.items():
                del self.waiting[tid]
                tune_controller.stop_trial(trial)
                # Tune re-saves a trial's state only when it stops an actor; a paused trial has none, and its
                # saved state would say PAUSED for ever (a resumed sweep would run it again)
                tune_controller._mark_trial_to_checkpoint(trial)
        return None

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self.waiting.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self.waiting.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self.waiting.pop(trial.trial_id, None)

    def paused_ids(self) -> set[str]:
        """Trials paused at a rung: they hold no slot of the search's concurrency limit."""
        return set(self.waiting)

    def debug_string(self) -> str:
        return "PromotionScheduler: " + ", ".join(f"rung {r}: {len(v)} seen, {len(self.promoted[r])} promoted"
                                                  for r, v in self.rungs.items())


__all__ = ["PromotionScheduler"]
