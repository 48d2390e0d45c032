"""Seeds for the leaders: a sweep's last stage re-runs its best configs with more seeds.

One run of a config is one draw of its seed noise (initialisation, data order, augmentation), and
that noise can be larger than the gap between two configs. With ``repeats: {top_k: K, seeds: R}``
the search runs first; once its trials have ended, the K best configs that ran all their epochs
(the *leaders*) are trained again with R - 1 more seeds each, the same seeds for every leader
(``seed + 1`` ... ``seed + R - 1``), so their differences are paired. The report then ranks the
leaders by their mean over seeds and gives each an interval (``tune/report/seeds.py``).

Read before building: Tune's ``Repeater`` repeats *every* config and averages inside the searcher
(no interval, and the budget goes to configs that were never in the running); Optuna's
``WilcoxonPruner`` races instances within one trial; SMAC3's intensifier runs a challenger on the
incumbent's seeds. Here the search is left as it is and only its leaders pay for seeds, which fits
an existing sweep (and its ASHA or promotion scheduler) without changing how it searches.

The budget: repeat trials count in ``num_samples`` (the search gets the rest), and under a
``time_budget_s`` the search stops starting trials when the time left would no longer fit the
repeats (estimated from the search's own full trials).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune.search import Searcher

from tune.report.trial import REPEAT_OF  # in a repeat trial's params: its leader (``seed``: which seed)
from tune.spec import RepeatSpec


def repeat_trials(spec: RepeatSpec) -> int:
    """Trials the repeat stage adds: ``top_k * (seeds - 1)``."""
    return spec.top_k * (spec.seeds - 1)


def is_repeat(params: dict[str, Any] | None) -> bool:
    return bool((params or {}).get(REPEAT_OF))


class RepeatLeaders(Searcher):
    """Wraps the sweep's search: passes it through for ``search_trials`` trials (fewer under a time
    budget), waits for them to end, then suggests the leaders' repeats (never shown to the search,
    so Optuna's study holds one result per sampled config)."""

    def __init__(self, searcher: Searcher, *, spec: RepeatSpec, metric: str, mode: str, max_t: int,
                 search_trials: int, base_seed: int, max_concurrent: int, time_budget_s: float | None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searcher = searcher
        self.top_k, self.seeds, self.max_t = spec.top_k, spec.seeds, max_t
        self.search_trials, self.base_seed = search_trials, base_seed
        self.max_concurrent, self.time_budget_s = max_concurrent, time_budget_s
        self.started_at = time.time()
        self.search: dict[str, dict[str, Any]] = {}         # trial id -> sampled params
        self.began: dict[str, float] = {}                   # trial id -> when it was suggested
        self.best: dict[str, float] = {}                    # trial id -> best value so far
        self.epochs: dict[str, int] = {}
        self.ended: dict[str, bool] = {}                    # trial id -> ended without error
        self.full_s: list[float] = []                       # wall seconds of search trials that ran max_t
        self.queue: list[tuple[str, int]] | None = None     # (leader, seed) still to start; None: searching
        self.live: set[str] = set()
        self.leaders: list[str] = []

    # --- the two stages ---------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.queue is None:
            if len(self.search) < self.search_trials and not self._out_of_search_time():
                params = self.searcher.suggest(trial_id)
                if isinstance(params, dict):
                    self.search[trial_id], self.began[trial_id] = dict(params), time.time()
                if params != Searcher.FINISHED:
                    return params
            if any(t not in self.ended for t in self.search):
                return None  # the leaders are known once every search trial has ended
            self.queue = self._plan()
        if not self.queue:
            return None if self.live else Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        leader, seed = self.queue.pop(0)
        self.live.add(trial_id)
        return {**self.search[leader], "seed": seed, REPEAT_OF: leader}

    def _plan(self) -> list[tuple[str, int]]:
        """The leaders (best full search trials) and their repeats, seed by seed so that an early end
        of the budget still leaves complete pairs."""
        full = [t for t, ok in self.ended.items() if ok and self.epochs.get(t, 0) >= self.max_t and t in self.best]
        full.sort(key=lambda t: -self.best[t] if self.mode == "max" else self.best[t])
        self.leaders = full[:self.top_k]
        return [(leader, self.base_seed + r) for r in range(1, self.seeds) for leader in self.leaders]

    def _out_of_search_time(self) -> bool:
        """Under a time budget: whether a search trial started now and then the repeats would overrun it."""
        if self.time_budget_s is None or not self.full_s:
            return False
        trial_s = sorted(self.full_s)[len(self.full_s) // 2]
        rounds = math.ceil(self.top_k * (self.seeds - 1) / self.max_concurrent)
        # the repeats' rounds, and one more for the search trials still running (and the last promotions)
        return time.time() - self.started_at + trial_s * (rounds + 1) > self.time_budget_s

    # --- results ----------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self.search:
            return
        self._note(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self.live:
            self.live.discard(trial_id)
            return
        if trial_id not in self.search:
            return
        if result:
            self._note(trial_id, result)
        self.ended[trial_id] = not error
        if not error and self.epochs.get(trial_id, 0) >= self.max_t:
            # its compute (a trial paused at a rung waited, which a repeat will not)
            took = (result or {}).get("time_total_s")
            wall = time.time() - self.began.get(trial_id, time.time())
            self.full_s.append(min(wall, float(took)) if isinstance(took, (int, float)) else wall)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def _note(self, trial_id: str, result: dict[str, Any]) -> None:
        self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result.get("training_iteration") or 0))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best.get(trial_id)
            better = old is None or (value > old if self.mode == "max" else value < old)
            self.best[trial_id] = float(value) if better else old

    # --- Tune's wrapper protocol (state saved with the experiment, the search saved apart) ----

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def get_state(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["searcher"]
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


__all__ = ["REPEAT_OF", "RepeatLeaders", "is_repeat", "repeat_trials"]
