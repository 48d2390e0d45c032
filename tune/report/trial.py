"""One trial of a sweep, as its files leave it, and the one rule that names its status
(docs/report.md, "Trial status"): the report, the live display and the sweep's summary use it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("finished", "stopped", "errored", "running", "waiting", "interrupted", "pending")
STATUS_LABELS = {"finished": "finished", "stopped": "stopped early", "errored": "errored", "running": "running",
                 "waiting": "waiting for resources", "interrupted": "interrupted", "pending": "pending"}


def trial_status(epochs: int, max_t: int | None, *, ray_status: str | None = None, done: bool = False,
                 has_results: bool | None = None, has_error: bool = False, active: bool = False,
                 alive: bool = True, waiting: bool = False) -> str:
    """The one rule for a trial's status, one of ``STATUSES`` (docs/report.md, "Trial status").

    ``max_t``: :attr:`tune.space.Sweep.max_t` (None: unknown); ``ray_status``: Ray's mark (PENDING,
    RUNNING, PAUSED, TERMINATED, ERROR); ``done``: its last result says done; ``has_results``:
    default ``epochs > 0``; ``has_error``: it left an error file; ``active``: the sweep runs;
    ``alive``: the process that reported its last result may still run. The sweep's driver
    hears of a trial's end from Ray: it passes ``ray_status`` "TERMINATED" or "ERROR". ``waiting``:
    the sweep lists it in ``waiting.json`` (:mod:`tune.waiting`): it would be running or pending, but
    cannot go on for want of resources.
    """
    by_epochs = "finished" if max_t is None or epochs >= max_t else "stopped"
    has_results = epochs > 0 if has_results is None else has_results
    if done:
        return by_epochs
    if ray_status == "ERROR":
        return "errored"
    if ray_status == "TERMINATED":  # ended without a done line (e.g. the sweep's time budget)
        return by_epochs if has_results else "errored" if has_error else "stopped"
    if has_error and not (active and ray_status in ("RUNNING", "PENDING", "PAUSED")):
        return "errored"
    if waiting and active and ray_status in ("RUNNING", "PENDING"):
        return "waiting"
    if has_results:
        return "running" if active and alive else "interrupted"
    if ray_status in ("RUNNING", "PAUSED"):  # started, but no epoch reported yet
        return "running" if active else "interrupted"
    return "pending"



REPEAT_OF = "repeat_of"  # in a repeat trial's params: its leader's trial id (tune/repeats.py)


@dataclass
class Trial:
    """One trial as left on disk."""

    trial_id: str
    dirname: str                          # relative to the sweep directory: "trial-<id>"
    status: str = "pending"
    params: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)  # one per epoch, by training_iteration
    done: bool = False                    # the last line of result.json says done
    ray_status: str | None = None         # PENDING, RUNNING, PAUSED, TERMINATED, ERROR (experiment state)
    failures: int = 0                     # Ray's num_failures (each failure, restarted or final)
    start_time: float | None = None       # unix seconds
    error_file: str | None = None         # relative to the sweep directory
    error: str | None = None              # the meaningful line of the error
    has_config: bool = False              # trial-<id>/config.yaml exists

    @property
    def epochs(self) -> int:
        """Epochs run: the highest ``training_iteration`` reported."""
        return max((finite_int(r.get("training_iteration")) or 0 for r in self.results), default=0)

    @property
    def time_total_s(self) -> float:
        """Seconds of compute the trial used (Tune's ``time_total_s`` of its last result)."""
        for r in reversed(self.results):
            value = finite(r.get("time_total_s"))
            if value is not None:
                return value
        return 0.0

    @property
    def last_result_time(self) -> float | None:
        times = [t for t in (finite(r.get("timestamp")) for r in self.results) if t is not None]
        return max(times) if times else None

    @property
    def first_start(self) -> float | None:
        """When the trial started: Ray's start time, or its first result minus its time so far."""
        candidates = [self.start_time] if self.start_time else []
        if self.results:
            stamp, total = finite(self.results[0].get("timestamp")), finite(self.results[0].get("time_total_s"))
            if stamp is not None:
                candidates.append(stamp - (total or 0.0))
        return min(candidates) if candidates else None

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) for every epoch that reported a finite ``metric``."""
        out = []
        for r in self.results:
            value = finite(r.get(metric))
            if value is not None:
                out.append((finite_int(r.get("training_iteration")) or len(out) + 1, value))
        return out

    def best(self, metric: str, mode: str) -> tuple[float, int] | None:
        """(best value, its epoch); the earliest epoch wins a tie."""
        curve = self.curve(metric)
        if not curve:
            return None
        pick = max if mode == "max" else min
        value = pick(v for _, v in curve)
        return value, next(e for e, v in curve if v == value)

    def last_value(self, metric: str) -> float | None:
        curve = self.curve(metric)
        return curve[-1][1] if curve else None

    @property
    def repeat_of(self) -> str | None:
        """The leader a repeat trial re-runs with another seed (tune/repeats.py), else None."""
        leader = self.params.get(REPEAT_OF)
        return str(leader) if leader else None

    @property
    def knn_split(self) -> str | None:
        """The split its kNN monitor scored ("val" or "test"; its last result that says), None when
        no result says (a sweep from before validation splits: the monitor scored the test split)."""
        for r in reversed(self.results):
            if isinstance(r.get("knn_split"), str):
                return r["knn_split"]
        return None

    @property
    def collapse_reason(self) -> str | None:
        """Why its last result says the representation collapsed (``collapsed`` == 1), else None."""
        last = self.results[-1] if self.results else {}
        if finite(last.get("collapsed")) != 1.0:
            return None
        return str(last.get("collapse_reason") or "no reason reported")


# --- small helpers ------------------------------------------------------------------------

def finite(value: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and infinities are not values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def finite_int(value: Any) -> int | None:
    """:func:`finite`, truncated to an int."""
    number = finite(value)
    return int(number) if number is not None else None
