"""Read a sweep directory into plain data: the sweep definition and every trial's results.

No Ray is needed (and none is imported): everything comes from the files a sweep leaves
behind (see ``tune/sweep.py`` for the layout)::

    sweep.yaml                the resolved sweep definition: name, task, metric, mode, scheduler...
    experiment_state-*.json   Ray Tune's state: each trial's status, start time, failures
    trial-<id>/result.json    one JSON line per reported epoch (may be empty or cut short)
    trial-<id>/params.json    the sampled parameters (``sampled.json`` as a fallback)
    trial-<id>/error.txt      the traceback of a trial that failed

A trial's status is one of ``STATUSES``:

- ``finished``: its last result says ``done`` and it ran ``max_t`` epochs (the scheduler's
  ``max_t``, else the trainer's epochs);
- ``stopped``: ``done`` before ``max_t`` (ASHA stopped it early);
- ``errored``: Ray marked it ``ERROR``, or it left an ``error.txt`` and is not running again;
- ``running``: results (or a ``RUNNING`` mark) without ``done`` while the sweep is active;
- ``interrupted``: results (or a ``RUNNING`` mark) without ``done`` while the sweep is not
  active, or results whose reporting
  process (``pid`` on this ``hostname``) has exited (it was killed or stopped; re-running
  ``jigclu tune`` with the same name resumes it);
- ``pending``: no results and not started (Ray's ``PENDING``, or no mark at all).

The sweep counts as *active* while Ray Tune keeps rewriting its experiment state (it does so
about every 10 s while it runs) or trials keep writing results: a write within the last
``ACTIVE_WINDOW_S`` seconds, and at least one trial that Ray has not marked as ended.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from jigclu.errors import JigcluError

STATUSES = ("finished", "stopped", "errored", "running", "interrupted", "pending")
STATUS_LABELS = {"finished": "finished", "stopped": "stopped early", "errored": "errored",
                 "running": "running", "interrupted": "interrupted", "pending": "pending"}
ACTIVE_WINDOW_S = 60.0
_ENDED = ("TERMINATED", "ERROR")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "pkg.mod.SomeError: message", "RayTaskError(TrainingError): ...", "KeyboardInterrupt"
_EXC_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure|Warning)"
                       r"(?:\([\w.]*\))?(?::\s.*)?$")


class SweepDirError(JigcluError):
    """The path is not a sweep directory, or its definition cannot be read."""


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
        return max((_int(r.get("training_iteration")) or 0 for r in self.results), default=0)

    @property
    def time_total_s(self) -> float:
        """Seconds of compute the trial used (Tune's ``time_total_s`` of its last result)."""
        for r in reversed(self.results):
            value = _num(r.get("time_total_s"))
            if value is not None:
                return value
        return 0.0

    @property
    def last_result_time(self) -> float | None:
        times = [t for t in (_num(r.get("timestamp")) for r in self.results) if t is not None]
        return max(times) if times else None

    @property
    def first_start(self) -> float | None:
        """When the trial started: Ray's start time, or its first result minus its time so far."""
        candidates = [self.start_time] if self.start_time else []
        if self.results:
            stamp, total = _num(self.results[0].get("timestamp")), _num(self.results[0].get("time_total_s"))
            if stamp is not None:
                candidates.append(stamp - (total or 0.0))
        return min(candidates) if candidates else None

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) for every epoch that reported a finite ``metric``."""
        out = []
        for r in self.results:
            value = _num(r.get(metric))
            if value is not None:
                out.append((_int(r.get("training_iteration")) or len(out) + 1, value))
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


@dataclass
class SweepData:
    """A sweep directory, read."""

    path: Path
    definition: dict[str, Any]
    trials: list[Trial]
    max_t: int | None
    active: bool
    state_file: str | None
    notes: list[str] = field(default_factory=list)  # things that could not be read, said plainly

    @property
    def name(self) -> str:
        return str(self.definition.get("name") or self.path.name)

    @property
    def task(self) -> str:
        return str(self.definition.get("task") or "pretrain")

    @property
    def metric(self) -> str:
        metric = self.definition.get("metric")
        return str(metric) if metric else ("knn_top1" if self.task == "pretrain" else "val_top1")

    @property
    def mode(self) -> str:
        return "min" if self.definition.get("mode") == "min" else "max"

    @property
    def space_keys(self) -> list[str]:
        space = self.definition.get("space")
        keys = list(space) if isinstance(space, dict) else []
        for trial in self.trials:  # keys a trial has that the definition does not name
            keys += [k for k in trial.params if k not in keys]
        return keys

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.trials)}
        out.update({s: sum(t.status == s for t in self.trials) for s in STATUSES})
        return out

    def metric_keys(self) -> list[str]:
        """Every numeric result key reported by any trial, in order of first appearance."""
        keys: dict[str, None] = {}
        for trial in self.trials:
            for r in trial.results:
                for k, v in r.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        keys.setdefault(k, None)
        return list(keys)


def load_sweep_dir(path: str | Path, now: float | None = None) -> SweepData:
    """Read a sweep directory; raises :class:`SweepDirError` when it is not one."""
    path = Path(path)
    if not path.exists():
        raise SweepDirError(f"report: {path} does not exist")
    if not path.is_dir():
        raise SweepDirError(f"report: {path} is not a directory; pass a sweep directory "
                            f"(<output_dir>/<name>, printed by `jigclu tune`)")
    definition_file = path / "sweep.yaml"
    if not definition_file.is_file():
        hint = " (it looks like a trial directory; pass its parent)" if (path / "result.json").exists() else ""
        raise SweepDirError(f"report: {path} is not a sweep directory: it has no sweep.yaml{hint}; "
                            f"pass <output_dir>/<name> as printed by `jigclu tune`")
    try:
        definition = yaml.safe_load(definition_file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SweepDirError(f"report: cannot read {definition_file}: {_first_line(str(exc))}") from None
    if not isinstance(definition, dict):
        raise SweepDirError(f"report: {definition_file} is not a sweep definition (expected a mapping)")

    notes: list[str] = []
    state, state_file = _read_experiment_state(path, notes)
    trials = _collect_trials(path, state, notes)
    max_t = planned_epochs(definition, path, trials)
    now = time.time() if now is None else now
    active = _is_active(path, state_file, trials, now)
    for trial in trials:
        trial.status = _status(trial, max_t, active)
    trials.sort(key=lambda t: (t.first_start is None, t.first_start or 0.0, t.trial_id))
    return SweepData(path=path, definition=definition, trials=trials, max_t=max_t, active=active,
                     state_file=state_file, notes=notes)


# --- reading ------------------------------------------------------------------------------

def _read_experiment_state(path: Path, notes: list[str]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """trial id -> what Ray Tune's newest experiment state says about it."""
    files = sorted(path.glob("experiment_state-*.json"))  # the name holds the session's start time
    if not files:
        return {}, None
    newest = files[-1]
    try:
        data = json.loads(newest.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"could not read {newest.name} ({_first_line(str(exc))}); statuses come from trial files only")
        return {}, newest.name
    out: dict[str, dict[str, Any]] = {}
    for entry in data.get("trial_data", []) if isinstance(data, dict) else []:
        try:
            static, runtime = (json.loads(x) if isinstance(x, str) else x for x in entry)
            trial_id = str(static["trial_id"])
        except (TypeError, ValueError, KeyError):
            continue
        out[trial_id] = {
            "status": static.get("status"),
            "dirname": static.get("relative_logdir") or static.get("custom_dirname") or f"trial-{trial_id}",
            "config": static.get("config") if isinstance(static.get("config"), dict) else {},
            "start_time": _num(runtime.get("start_time")) if isinstance(runtime, dict) else None,
            "num_failures": _int(runtime.get("num_failures")) if isinstance(runtime, dict) else None,
            "error_filename": runtime.get("error_filename") if isinstance(runtime, dict) else None,
        }
    return out, newest.name


def _collect_trials(path: Path, state: dict[str, dict[str, Any]], notes: list[str]) -> list[Trial]:
    by_id: dict[str, Trial] = {}
    for trial_id, info in state.items():
        by_id[trial_id] = Trial(trial_id=trial_id, dirname=str(info["dirname"]))
    for directory in sorted(p for p in path.glob("trial-*") if p.is_dir()):
        trial_id = directory.name.removeprefix("trial-")
        by_id.setdefault(trial_id, Trial(trial_id=trial_id, dirname=directory.name))
    for trial_id, trial in by_id.items():
        info = state.get(trial_id, {})
        trial.ray_status = info.get("status")
        trial.start_time = info.get("start_time")
        trial.failures = info.get("num_failures") or 0
        directory = path / trial.dirname
        trial.params = _read_params(directory) or dict(info.get("config") or {})
        trial.results, trial.done, bad = _read_results(directory / "result.json")
        if bad:
            notes.append(f"{trial.dirname}/result.json: skipped {bad} unreadable line{'s' * (bad > 1)}")
        trial.has_config = (directory / "config.yaml").is_file()
        error_name = info.get("error_filename") or "error.txt"
        error_path = directory / error_name
        if not error_path.is_file() and (directory / "error.txt").is_file():
            error_path = directory / "error.txt"
        if error_path.is_file():
            trial.error_file = f"{trial.dirname}/{error_path.name}"
            trial.error = error_reason(_read_text(error_path))
    return list(by_id.values())


def _read_params(directory: Path) -> dict[str, Any]:
    for name in ("params.json", "sampled.json"):
        try:
            data = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data:
            return data
    return {}


def _read_results(path: Path) -> tuple[list[dict[str, Any]], bool, int]:
    """Per-epoch results (the latest line per training_iteration), whether the last line says done,
    and how many lines could not be parsed (a line cut short by a crash is expected)."""
    try:
        text = _read_text(path)
    except OSError:
        return [], False, 0
    records, bad = [], 0
    lines = [line for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            bad += i != len(lines) - 1  # only a torn last line is normal
            continue
        if isinstance(record, dict):
            records.append(record)
    done = bool(records and records[-1].get("done") is True)
    by_iteration: dict[int, dict[str, Any]] = {}
    for n, record in enumerate(records):
        # a trial restored from a checkpoint reports its epochs again: keep the latest report
        by_iteration[_int(record.get("training_iteration")) or n + 1] = record
    return [by_iteration[k] for k in sorted(by_iteration)], done, bad


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def error_reason(text: str) -> str:
    """The meaningful line of a Ray error file: the last ``SomeError: message`` line of the
    traceback (Ray's own wrapper lines and ANSI colours left out), else its last non-empty line."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip()]
    if not lines:
        return "error file is empty"
    candidates = [line for line in lines if _EXC_LINE.match(line) and "ray::" not in line]
    line = candidates[-1] if candidates else lines[-1].strip()
    return line.strip()


def planned_epochs(definition: dict[str, Any], path: Path | None = None,
                   trials: Iterable[Trial] = ()) -> int | None:
    """Epochs a trial runs when nothing stops it: the scheduler's ``max_t``, else the trainer's."""
    scheduler = definition.get("scheduler") if isinstance(definition.get("scheduler"), dict) else {}
    if _int(scheduler.get("max_t")):
        return _int(scheduler.get("max_t"))
    try:  # the same rule as the sweep itself (tune.space.Sweep.epochs), defaults included
        from tune.space import Sweep, SweepSpec

        spec = SweepSpec.model_validate({k: v for k, v in definition.items() if k in SweepSpec.model_fields})
        return int(Sweep(spec, definition.get("config") or {}, []).epochs)
    except Exception:  # noqa: BLE001 - an older or hand-edited sweep.yaml: fall back to a trial's config
        pass
    for trial in trials:
        if path is None or not trial.has_config:
            continue
        try:
            cfg = yaml.safe_load((path / trial.dirname / "config.yaml").read_text()) or {}
            if definition.get("task", "pretrain") == "pretrain":
                return _int((cfg.get("train") or {}).get("epochs"))
            return _int((cfg.get("eval") or {}).get("epochs")) or 100
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    return None


def _is_active(path: Path, state_file: str | None, trials: list[Trial], now: float) -> bool:
    if trials and all(t.ray_status in _ENDED or (t.done and t.ray_status is None) for t in trials):
        return False
    stamps = []
    for p in ([path / state_file] if state_file else []) + [path / t.dirname / "result.json" for t in trials]:
        try:
            stamps.append(p.stat().st_mtime)
        except OSError:
            continue
    return bool(stamps) and now - max(stamps) <= ACTIVE_WINDOW_S


def _status(trial: Trial, max_t: int | None, active: bool) -> str:
    def by_epochs() -> str:
        return "finished" if max_t is None or trial.epochs >= max_t else "stopped"

    if trial.done:
        return by_epochs()
    if trial.ray_status == "ERROR":
        return "errored"
    if trial.ray_status == "TERMINATED":  # ended without a done line (e.g. the sweep's time budget)
        return by_epochs() if trial.results else "errored" if trial.error_file else "stopped"
    if trial.error_file and not (active and trial.ray_status in ("RUNNING", "PENDING", "PAUSED")):
        return "errored"
    if trial.results:
        return "running" if active and not _process_gone(trial.results[-1]) else "interrupted"
    if trial.ray_status in ("RUNNING", "PAUSED"):  # started, but no epoch reported yet
        return "running" if active else "interrupted"
    return "pending"


def _process_gone(result: dict[str, Any]) -> bool:
    """Whether the process that reported ``result`` (Ray's ``pid`` and ``hostname``) is known to
    have exited: only checkable for trials that ran on this machine."""
    pid, host = _int(result.get("pid")), result.get("hostname")
    if not pid or not host or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but belongs to someone else
        return False
    return False


# --- small helpers ------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and infinities are not values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
