"""Read a sweep directory into plain data: the sweep definition and every trial's results.

No Ray is needed (and none is imported): everything comes from the files a sweep leaves
behind (see ``tune/sweep.py`` for the layout), read through :mod:`jigclu.storage`, so the
directory may be a local path, a ``file://`` URI or an object-store prefix::

    sweep.yaml                the resolved sweep definition: name, task, metric, mode, scheduler...
    experiment_state-*.json   Ray Tune's state: each trial's status, start time, failures
    trial-<id>/result.json    one JSON line per reported epoch (may be empty or cut short)
    trial-<id>/params.json    the sampled parameters (``sampled.json`` as a fallback)
    trial-<id>/error.txt      the traceback of a trial that failed
    test_scores.json          the selected trials scored once on the test split, after the sweep

Each trial's status comes from :func:`tune.report.trial.trial_status`.
The sweep counts as *active* while Ray Tune keeps rewriting its experiment state (it does so
about every 10 s while it runs) or trials keep writing results: a write within the last
``ACTIVE_WINDOW_S`` seconds, and at least one trial that Ray has not marked as ended.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable

import yaml

from jigclu import storage
from jigclu.errors import JigcluError
from jigclu.storage import StorageError
from tune.layout import BUDGET_STOPPED, RESULTS, SAMPLED, TEST_SCORES, TRIAL_PREFIX, WAITING
from tune.report.trial import STATUSES, Trial, finite, finite_int, trial_status

ACTIVE_WINDOW_S = 60.0
_ENDED = ("TERMINATED", "ERROR")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "pkg.mod.SomeError: message", "RayTaskError(TrainingError): ...", "KeyboardInterrupt"
_EXC_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure|Warning)"
                       r"(?:\([\w.]*\))?(?::\s.*)?$")


class SweepDirError(JigcluError):
    """The path is not a sweep directory, or its definition cannot be read."""


@dataclass
class SweepData:
    """A sweep directory, read."""

    location: str                         # the directory: an absolute local path (symlinks resolved) or a URI
    definition: dict[str, Any]
    trials: list[Trial]
    max_t: int | None
    active: bool
    state_file: str | None
    notes: list[str] = field(default_factory=list)  # things that could not be read, said plainly
    test_scores: dict[str, Any] | None = None       # test_scores.json, when the sweep has written it
    budget_stopped: frozenset[str] = frozenset()    # budget_stopped.json: trials the time budget ended
    waiting: frozenset[str] = frozenset()           # waiting.json: trials waiting for resources (tune.waiting)

    def file(self, *parts: str) -> str:
        """A file of the sweep directory (``sweep.file(trial.dirname, "config.yaml")``)."""
        return storage.join(self.location, *parts)

    @property
    def name(self) -> str:
        return str(self.definition.get("name") or self.location.rstrip("/").rsplit("/", 1)[-1])

    @property
    def task(self) -> str:
        return str(self.definition.get("task") or "pretrain")

    @property
    def spec(self) -> Any:
        """The definition as this version's :class:`~tune.spec.SweepSpec` (:func:`~tune.spec.saved_spec`):
        its defaults, not a copy of them."""
        from tune.spec import saved_spec

        if not hasattr(self, "_spec"):
            self._spec = saved_spec(self.definition)
        return self._spec

    @property
    def metric(self) -> str:
        return self.spec.default_metric()

    @property
    def objective(self) -> str:
        """``metric`` (the sweep ranks by its metric) or ``linear_probe`` (by probe_top1)."""
        return self.spec.objective

    @property
    def rung_metric(self) -> str:
        """The metric ASHA (or the promotion scheduler) compares at its rungs."""
        return self.spec.default_rung_metric()

    @property
    def searcher(self) -> str:
        """``tpe`` (Optuna's default sampler) or ``random`` (Optuna's seeded RandomSampler)."""
        return self.spec.searcher

    @property
    def scheduler_type(self) -> str:
        return self.spec.scheduler.type

    @property
    def val_size(self) -> int | float | None:
        """The validation split's size (images, or a fraction of the training images); None: none."""
        if "val_size" in self.definition:  # the sweep decides it for every trial
            value = self.definition["val_size"]
        else:
            data = (self.definition.get("config") or {}).get("data")
            value = data.get("val_size") if isinstance(data, dict) else None
        return value if finite(value) is not None else None

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def scheduler(self) -> dict[str, Any]:
        """The definition's ``scheduler`` mapping (empty when it has none)."""
        scheduler = self.definition.get("scheduler")
        return scheduler if isinstance(scheduler, dict) else {}

    @property
    def space_keys(self) -> list[str]:
        space = self.definition.get("space")
        keys = list(space) if isinstance(space, dict) else []
        for trial in self.trials:  # keys a trial has that the definition does not name (a repeat: its seed)
            keys += [k for k in trial.params if k not in keys and not trial.repeat_of]
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


def as_given(location: str | Path, *parts: str) -> str:
    """``location/part/...`` as the user wrote it (a relative path stays relative), for messages."""
    return storage.join(location, *parts) if storage.is_uri(location) else str(Path(location, *parts))


def load_sweep_dir(path: str | Path, now: float | None = None) -> SweepData:
    """Read a sweep directory (a path or a storage URI); raises :class:`SweepDirError` when it is not one."""
    try:
        if not storage.exists(path):
            raise SweepDirError(f"report: {as_given(path)} does not exist")
        if not storage.is_dir(path):
            raise SweepDirError(f"report: {as_given(path)} is not a directory; pass a sweep directory "
                                f"(<output_dir>/<name>, printed by `jigclu tune`)")
        local = storage.local_path(path)
        location = str(local.resolve()) if local is not None else storage.normalise(path)
        shown = as_given(path, "sweep.yaml")
        if not storage.is_file(storage.join(location, "sweep.yaml")):
            hint = " (it looks like a trial directory; pass its parent)" \
                if storage.exists(storage.join(location, RESULTS)) else ""
            raise SweepDirError(f"report: {as_given(path)} is not a sweep directory: it has no sweep.yaml"
                                f"{hint}; pass <output_dir>/<name> as printed by `jigclu tune`")
        try:
            definition = yaml.safe_load(storage.read_text(storage.join(location, "sweep.yaml")))
        except (StorageError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SweepDirError(f"report: cannot read {shown}: {first_line(str(exc))}") from None
    except StorageError as exc:  # an unknown scheme, unreachable storage
        raise SweepDirError(f"report: {exc}") from None
    if not isinstance(definition, dict):
        raise SweepDirError(f"report: {shown} is not a sweep definition (expected a mapping)")

    notes: list[str] = []
    state, state_file = _read_experiment_state(location, notes)
    trials = _collect_trials(location, state, notes)
    max_t = saved_max_t(definition, location, trials)
    now = time.time() if now is None else now
    active = _is_active(location, state_file, trials, now)
    waiting = _read_ids(location, WAITING)
    for t in trials:
        alive = not (active and t.results and _process_gone(t.results[-1]))
        t.status = trial_status(t.epochs, max_t, ray_status=t.ray_status, done=t.done, has_results=bool(t.results),
                                has_error=t.error_file is not None, active=active, alive=alive,
                                waiting=t.trial_id in waiting)
    trials.sort(key=lambda t: (t.first_start is None, t.first_start or 0.0, t.trial_id))
    test_scores = _read_test_scores(location, notes)
    return SweepData(location=location, definition=definition, trials=trials, max_t=max_t, active=active,
                     state_file=state_file, notes=notes, test_scores=test_scores,
                     budget_stopped=_read_ids(location, BUDGET_STOPPED), waiting=waiting)


# --- reading ------------------------------------------------------------------------------

def _read_experiment_state(location: str, notes: list[str]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """trial id -> what Ray Tune's newest experiment state says about it."""
    # the name holds the session's start time
    files = [n for n in storage.list_dir(location) if fnmatchcase(n, "experiment_state-*.json")]
    if not files:
        return {}, None
    newest = files[-1]
    try:
        data = json.loads(storage.read_text(storage.join(location, newest)))
    except (StorageError, ValueError) as exc:
        notes.append(f"could not read {newest} ({first_line(str(exc))}); statuses come from trial files only")
        return {}, newest
    out: dict[str, dict[str, Any]] = {}
    for entry in data.get("trial_data", []) if isinstance(data, dict) else []:
        try:
            static, runtime = (json.loads(x) if isinstance(x, str) else x for x in entry)
            trial_id = str(static["trial_id"])
        except (TypeError, ValueError, KeyError):
            continue
        runtime = runtime if isinstance(runtime, dict) else {}
        out[trial_id] = {
            "status": static.get("status"),
            "dirname": static.get("relative_logdir") or static.get("custom_dirname") or f"{TRIAL_PREFIX}{trial_id}",
            "config": static.get("config") if isinstance(static.get("config"), dict) else {},
            "start_time": finite(runtime.get("start_time")),
            "num_failures": finite_int(runtime.get("num_failures")),
            "error_filename": runtime.get("error_filename"),
        }
    return out, newest


def _collect_trials(location: str, state: dict[str, dict[str, Any]], notes: list[str]) -> list[Trial]:
    by_id: dict[str, Trial] = {}
    for trial_id, info in state.items():
        by_id[trial_id] = Trial(trial_id=trial_id, dirname=str(info["dirname"]))
    for name in storage.list_dir(location):
        if fnmatchcase(name, f"{TRIAL_PREFIX}*") and storage.is_dir(storage.join(location, name)):
            trial_id = name.removeprefix(TRIAL_PREFIX)
            by_id.setdefault(trial_id, Trial(trial_id=trial_id, dirname=name))
    for trial_id, trial in by_id.items():
        info = state.get(trial_id, {})
        trial.ray_status = info.get("status")
        trial.start_time = info.get("start_time")
        trial.failures = info.get("num_failures") or 0
        directory = storage.join(location, trial.dirname)
        trial.params = _read_params(directory) or dict(info.get("config") or {})
        trial.results, trial.done, bad = _read_results(storage.join(directory, RESULTS))
        if bad:
            notes.append(f"{trial.dirname}/result.json: skipped {bad} unreadable line{'s' * (bad > 1)}")
        trial.has_config = storage.is_file(storage.join(directory, "config.yaml"))
        error_name = next((n for n in (info.get("error_filename") or "error.txt", "error.txt")
                           if storage.is_file(storage.join(directory, n))), None)
        if error_name is not None:
            error_path = storage.join(directory, error_name)
            trial.error_file = f"{trial.dirname}/{error_path.rsplit('/', 1)[-1]}"
            trial.error = error_reason(_read_text(error_path))
    return list(by_id.values())


def _read_test_scores(location: str, notes: list[str]) -> dict[str, Any] | None:
    """test_scores.json: ``{"split": "test", "selected_on": "val", "metric": ..., "trials": [...]}``."""
    path = storage.join(location, TEST_SCORES)
    if not storage.is_file(path):
        return None
    try:
        data = json.loads(storage.read_text(path))
    except (StorageError, UnicodeDecodeError, ValueError) as exc:
        notes.append(f"could not read test_scores.json ({first_line(str(exc))}); test scores left out")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
        notes.append("test_scores.json has no list of trials; test scores left out")
        return None
    data["trials"] = [t for t in data["trials"] if isinstance(t, dict) and t.get("trial_id") is not None]
    return data


def _read_ids(location: str, name: str) -> frozenset[str]:
    """Trial ids listed in a sweep file: ``budget_stopped.json`` (a list: the trials the time budget
    ended, written at the end) or ``waiting.json`` (a mapping: trials waiting for resources)."""
    path = storage.join(location, name)
    try:
        ids = json.loads(storage.read_text(path)) if storage.is_file(path) else []
    except (StorageError, UnicodeDecodeError, ValueError):
        return frozenset()
    return frozenset(str(i) for i in ids) if isinstance(ids, (list, dict)) else frozenset()


def _read_params(directory: str) -> dict[str, Any]:
    for name in ("params.json", SAMPLED):
        try:
            data = json.loads(storage.read_text(storage.join(directory, name)))
        except (StorageError, ValueError):
            continue
        if isinstance(data, dict) and data:
            return data
    return {}


def _read_results(location: str) -> tuple[list[dict[str, Any]], bool, int]:
    """Per-epoch results (the latest line per training_iteration), whether the last line says done,
    and how many lines could not be parsed (a line cut short by a crash is expected)."""
    try:
        text = _read_text(location)
    except StorageError:
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
        by_iteration[finite_int(record.get("training_iteration")) or n + 1] = record
    return [by_iteration[k] for k in sorted(by_iteration)], done, bad


def _read_text(location: str) -> str:
    return storage.read_bytes(location).decode("utf-8", errors="replace")


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


def saved_max_t(definition: dict[str, Any], location: str | None = None,
                trials: Iterable[Trial] = ()) -> int | None:
    """The ``max_t`` of a saved sweep definition (sweep.yaml), by the sweep's own rule
    (:attr:`tune.space.Sweep.max_t`: the scheduler's ``max_t``, else the trainer's epochs)."""
    try:
        from tune.space import Sweep
        from tune.spec import saved_spec

        return int(Sweep(saved_spec(definition), definition.get("config") or {}, []).max_t)
    except Exception:  # noqa: BLE001 - an older or hand-edited sweep.yaml: the same rule, read by hand
        pass
    scheduler = definition.get("scheduler") if isinstance(definition.get("scheduler"), dict) else {}
    if finite_int(scheduler.get("max_t")):
        return finite_int(scheduler.get("max_t"))
    for trial in trials:  # no trainer config in the definition: a trial's resolved config has it
        if location is None or not trial.has_config:
            continue
        try:
            cfg = yaml.safe_load(storage.read_text(storage.join(location, trial.dirname, "config.yaml"))) or {}
            if definition.get("task", "pretrain") == "pretrain":
                return finite_int((cfg.get("train") or {}).get("epochs"))
            return finite_int((cfg.get("eval") or {}).get("epochs")) or 100
        except (StorageError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            continue
    return None


def _is_active(location: str, state_file: str | None, trials: list[Trial], now: float) -> bool:
    if trials and all(t.ray_status in _ENDED or (t.done and t.ray_status is None) for t in trials):
        return False
    files = ([state_file] if state_file else []) + [f"{t.dirname}/result.json" for t in trials]
    stamps = [s for s in (storage.mtime(storage.join(location, f)) for f in files) if s is not None]
    return bool(stamps) and now - max(stamps) <= ACTIVE_WINDOW_S


def _process_gone(result: dict[str, Any]) -> bool:
    """Whether the process that reported ``result`` (Ray's ``pid`` and ``hostname``) is known to
    have exited: only checkable for trials that ran on this machine."""
    pid, host = finite_int(result.get("pid")), result.get("hostname")
    if not pid or not host or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but belongs to someone else
        return False
    return False



def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (stripped), for one-line messages."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text)

