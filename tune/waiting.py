"""Trials that wait for resources, said out loud: in the sweep's log and in its directory.

A sweep that cannot place a trial does not fail, it waits: Tune keeps a trial ``PENDING`` until
its driver fits, and a trial's Ray Train run stays ``SCHEDULING`` (or ``RESTARTING`` after a node
loss) until its worker group fits. Without this a waiting sweep looks exactly like a training
one ("1 running"). :class:`ResourceWait`, a Tune callback on the sweep's driver, looks every few
seconds; a trial that has waited ``JIGCLU_WAIT_GRACE_S`` (default 15) is logged at once and then
once every ``JIGCLU_WAIT_LOG_S`` seconds (default 60) with what it waits for, and :data:`WAITING` in the
sweep directory lists the waiting trials for ``jigclu report`` ("waiting for resources").
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import ray
from ray.tune import Callback

from jigclu.storage import write_atomic
from tune.layout import TRIAL_PREFIX, WAITING

CHECK_S = 5.0
WAITING_RUN_STATES = ("INITIALIZING", "SCHEDULING", "RESTARTING", "RESIZING")


def _fmt_resources(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items())  # not the per-node and per-placement-group bookkeeping
             if v and "_group_" not in k and not k.startswith(("node:", "memory", "object_store", "bundle_group"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


def cluster_line() -> str:
    """What the cluster has free now, and the placement groups still waiting for resources."""
    free, total = ray.available_resources(), ray.cluster_resources()
    pending = [pg["bundles"] for pg in ray.util.placement_group_table().values() if pg["state"] == "PENDING"]
    asks = "; ".join(f"{len(b)} x {_fmt_resources(next(iter(b.values())))}" for b in pending if b)
    return (f"cluster free {_fmt_resources(free)} of {_fmt_resources(total)}"
            + (f"; placement groups waiting: {asks}" if asks else ""))


def train_run_states() -> dict[str, tuple[str, str]]:
    """``{Ray Train run name: (status, detail)}`` of the runs Ray Train's state actor knows."""
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    if actor is None:
        return {}
    runs = ray.get(actor.get_train_runs.remote(), timeout=10)
    return {run.name: (str(getattr(run.status, "value", run.status)), run.status_detail or "")
            for run in runs.values() if not run.status.is_terminal()}


class ResourceWait(Callback):
    """Logs trials that wait for resources once a minute and keeps :data:`WAITING` up to date."""

    def __init__(self, sweep_name: str, sweep_dir: str, line: Callable[[str], None],
                 train_trials: bool) -> None:
        self.sweep_name, self.sweep_dir, self.line, self.train_trials = sweep_name, sweep_dir, line, train_trials
        self.every_s = float(os.environ.get("JIGCLU_WAIT_LOG_S", "60"))
        self.grace_s = float(os.environ.get("JIGCLU_WAIT_GRACE_S", "15"))  # a worker group starts well within it
        self.since: dict[str, float] = {}      # trial id -> when it was first seen waiting
        self.logged: dict[str, float] = {}     # trial id -> when it was last logged
        self.written: dict[str, str] = {}
        self._checked = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the run config
        return {**self.__dict__, "line": print}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.time()
        if now - self._checked < CHECK_S:
            return
        self._checked = now
        try:
            waiting = self.waiting(trials)
        except Exception:  # the state API briefly unreachable: look again next time
            return
        for trial_id in list(self.since):
            if trial_id not in waiting:
                self.since.pop(trial_id)
                self.logged.pop(trial_id, None)
        shown = {}
        for trial_id, what in waiting.items():
            since = self.since.setdefault(trial_id, now)
            if now - since < self.grace_s:
                continue
            shown[trial_id] = what
            if now - self.logged.get(trial_id, 0.0) >= self.every_s:
                self.logged[trial_id] = now
                self.line(f"{TRIAL_PREFIX}{trial_id} waiting for resources for {now - since:.0f} s: {what}")
        if shown != self.written:
            self.written = shown
            write_atomic(f"{self.sweep_dir.rstrip('/')}/{WAITING}", json.dumps(shown, indent=1, sort_keys=True))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.since.pop(trial.trial_id, None)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Nothing waits once the sweep has ended: the file is written only every ``CHECK_S`` while it
        runs, so an entry seen at the last check would otherwise outlive the sweep."""
        if self.written:
            self.written = {}
            write_atomic(f"{self.sweep_dir.rstrip('/')}/{WAITING}", json.dumps({}))

    def waiting(self, trials: list) -> dict[str, str]:
        """``{trial id: what it waits for}`` of the trials that cannot go on for want of resources."""
        runs = train_run_states() if self.train_trials else {}
        out: dict[str, str] = {}
        for trial in trials:
            if trial.status == "PENDING":
                needs = trial.placement_group_factory.required_resources
                out[trial.trial_id] = f"its driver needs {_fmt_resources(needs)}; {cluster_line()}"
            elif trial.status == "RUNNING":
                name = f"{self.sweep_name}-{trial.trial_id}"  # after PBT exploits: <name>-x<k> (tune.train_trial)
                mine = [r for r in runs if r == name or r.startswith(f"{name}-x")]
                newest = max(mine, key=lambda r: int(r.rpartition("-x")[2]) if r != name else 0, default=name)
                status, detail = runs.get(newest, ("", ""))
                if status in WAITING_RUN_STATES:
                    out[trial.trial_id] = (f"its Ray Train run is {status}"
                                           + (f" ({detail.splitlines()[0][:160]})" if detail else "")
                                           + f"; {cluster_line()}")
        return out
