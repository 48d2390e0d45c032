"""The sweep's searcher: Ray Tune's OptunaSearch and ConcurrencyLimiter, made to survive a driver
killed while Tune saves its state.

Tune writes the experiment state (its trials) and the searcher state (Optuna's trials, the
limiter's live trials) as separate files. A driver SIGKILLed between the two leaves a resumed
sweep with a running trial the searcher never heard of: Ray's OptunaSearch then fails the
whole sweep with ``KeyError: '<trial id>'`` on that trial's first result, and the limiter drops
its completion, so its Optuna trial stays RUNNING forever (measured by the fault matrix,
``benchmarks/faults/fault_matrix.py``). Here an unknown trial is *adopted*: it gets the study's RUNNING trial
with the same parameters (the one the killed driver asked for), or, when there is none, a new
Optuna trial enqueued with its parameters. Once every trial has ended, Optuna trials still
RUNNING (asked by the killed driver for a trial that never started) are marked failed, so the
study holds one finished trial per finished Tune trial and nothing stays RUNNING.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

CONFIG_PREFIX = "config/"  # Tune flattens a result's config under this prefix


def _params_of(result: dict[str, Any] | None) -> dict[str, Any]:
    return {k[len(CONFIG_PREFIX):]: v for k, v in (result or {}).items() if k.startswith(CONFIG_PREFIX)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that adopts trials it does not know (see the module docstring)."""

    def _adopt(self, trial_id: str, result: dict[str, Any] | None) -> None:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return
        params = _params_of(result)
        owned = {t._trial_id for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen._trial_id not in owned and frozen.params.keys() <= params.keys() and \
                    all(_same(v, params[k]) for k, v in frozen.params.items()):
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study, frozen._trial_id)
                return
        self._ot_study.enqueue_trial(params, skip_if_exists=False)
        self._ot_trials[trial_id] = self._ot_study.ask()
        if callable(self._space):  # define-by-run: the enqueued values are what it suggests
            self._suggest_from_define_by_run_func(self._space, self._ot_trials[trial_id])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._adopt(trial_id, result)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self._adopt(trial_id, result)
        super().on_trial_complete(trial_id, result=result, error=error)


class ResumableLimiter(ConcurrencyLimiter):
    """ConcurrencyLimiter that counts a restored running trial it did not know as live, so its
    completion reaches the searcher instead of being dropped; and trials a promotion scheduler holds
    paused at a rung (``paused_by``, tune/promotion.py) do not hold a slot, or the search would stop
    giving configs while its trials wait to be promoted."""

    paused_by: Any = None

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self._limit_concurrency or self.paused_by is None:
            return super().suggest(trial_id)
        if len(self.live_trials - self.paused_by.paused_ids()) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def get_state(self) -> dict[str, Any]:  # the scheduler is saved with the experiment, not in here
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in ("searcher", "paused_by")})

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._limit_concurrency and trial_id not in self.live_trials:
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        super().on_trial_result(trial_id, result)


def fail_abandoned(study: optuna.Study) -> list[int]:
    """Once every Tune trial has ended, a RUNNING Optuna trial was asked for by a killed driver
    for a trial that never started: mark it failed. Returns the trial numbers."""
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    return stale


__all__ = ["ResumableOptunaSearch", "ResumableLimiter", "fail_abandoned"]
