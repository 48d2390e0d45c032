"""The report as data: one JSON-ready dict (schema: docs/report.md) that the table, JSON, YAML
and plot outputs all read, so they always say the same thing."""

from __future__ import annotations

import math
import re
import shlex
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from jigclu import storage
from jigclu.errors import JigcluError
from jigclu.storage import StorageError
from tune.report.data import SweepData, first_line
from tune.report.trial import STATUS_LABELS, STATUSES, Trial

EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_NO_RESULTS = 3
EXIT_NO_SUCCESS = 4

SCHEMA = "jigclu-report/1"
DEFAULT_TOP = 10


def build_report(sweep: SweepData, top: int | None = DEFAULT_TOP, metric: str | None = None,
                 mode: str | None = None, importances: bool = True) -> dict[str, Any]:
    """Everything the report says, as JSON-ready data (schema: docs/report.md)."""
    metric = metric or sweep.metric
    if mode is None:
        mode = sweep.mode if metric == sweep.metric else guess_mode(metric)
    reported = sweep.metric_keys()
    if metric != sweep.metric and reported and metric not in reported:
        raise JigcluError(f"report: no trial reported '{metric}'; reported: {', '.join(reported)}")

    ranked = [t for t in sweep.trials if t.best(metric, mode) is not None]
    ranked.sort(key=lambda t: -t.best(metric, mode)[0] if mode == "max" else t.best(metric, mode)[0])
    shown = ranked if not top else ranked[:top]
    counts = sweep.counts()
    starts = [s for s in (t.first_start for t in sweep.trials) if s is not None]
    ends = [s for s in (t.last_result_time for t in sweep.trials) if s is not None]
    started, last = (min(starts) if starts else None), (max(ends) if ends else None)

    succeeded = [t for t in ranked if t.status != "errored"]
    if succeeded:
        status, code = "ok", EXIT_OK
    elif counts["errored"]:
        status, code = "no_success", EXIT_NO_SUCCESS
    else:
        status, code = "no_results", EXIT_NO_RESULTS

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "sweep": _sweep_info(sweep),
        "ranked_by": {"metric": metric, "mode": mode},
        "status": status,
        "exit_code": code,
        "messages": _messages(sweep, counts, status, metric),
        "counts": counts,
        "compute_s": _clean(sum(t.time_total_s for t in sweep.trials)),
        "wall_clock_s": _clean(last - started) if started is not None and last is not None else None,
        "started_at": _iso(started),
        "last_result_at": _iso(last),
        "top": [_trial_entry(t, rank, metric, mode) for rank, t in enumerate(shown, 1)],
        "ranked_total": len(ranked),
        "problems": [_problem_entry(sweep, t) for t in sweep.trials
                     if t.status in ("errored", "stopped", "interrupted")],
        "importances": param_importances(sweep) if importances else
        {"method": None, "objective": None, "n_trials": 0, "values": None, "message": "skipped (--no-importance)"},
        "best": _best_entry(sweep, ranked[0], metric, mode) if ranked else None,
        "notes": list(sweep.notes),
    }
    if report["importances"]["values"] and metric != sweep.metric:
        report["importances"]["message"] = (f"importances are for the sweep's objective {sweep.metric}, "
                                            f"not {metric}")
    return report


def guess_mode(metric: str) -> str:
    return "min" if re.search(r"loss|err|time", metric) else "max"


def _sweep_info(sweep: SweepData) -> dict[str, Any]:
    d = sweep.definition
    sched_type = sweep.scheduler.get("type") or "asha"
    asha = sched_type == "asha"
    return {
        "name": sweep.name,
        "dir": sweep.location,
        "task": sweep.task,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "search": {
            # tune/sweep.py always searches with Ray's OptunaSearch, whose default sampler is TPE
            "algorithm": "optuna-tpe",
            "seed": d.get("seed", 0),
            "num_samples": d.get("num_samples"),
            "max_concurrent": d.get("max_concurrent"),
            "time_budget_s": d.get("time_budget_s"),
        },
        "scheduler": {
            "type": sched_type,
            "grace_period": sweep.scheduler.get("grace_period", 1) if asha else None,
            "reduction_factor": sweep.scheduler.get("reduction_factor", 2.0) if asha else None,
            "max_t": sweep.max_t,
        },
        "space": dict(d.get("space") or {}),
        "active": sweep.active,
    }


def _trial_entry(t: Trial, rank: int | None, metric: str, mode: str) -> dict[str, Any]:
    best = t.best(metric, mode)
    return {
        "rank": rank,
        "trial_id": t.trial_id,
        "dir": t.dirname,
        "status": t.status,
        "params": {k: _clean(v) for k, v in t.params.items()},
        "best_value": _clean(best[0]) if best else None,
        "best_epoch": best[1] if best else None,
        "last_value": _clean(t.last_value(metric)),
        "epochs": t.epochs,
        "time_total_s": _clean(t.time_total_s),
        "failures": t.failures,
        "curve": [[e, _clean(v)] for e, v in t.curve(metric)],
    }


def _problem_entry(sweep: SweepData, t: Trial) -> dict[str, Any]:
    if t.status == "errored":
        reason = t.error or "Ray marked the trial as errored (no error file)"
    elif t.status == "stopped":
        by = "ASHA" if sweep.scheduler.get("type", "asha") == "asha" else "the sweep (time budget or end of search)"
        reason = f"stopped by {by} at epoch {t.epochs}" + (f" of {sweep.max_t}" if sweep.max_t else "")
    else:
        reason = (f"interrupted after epoch {t.epochs}" if t.epochs else "interrupted before its first epoch") \
            + " (the sweep is not running)"
    return {"trial_id": t.trial_id, "status": t.status, "reason": reason, "epoch": t.epochs,
            "error_file": t.error_file, "failures": t.failures}


def _best_entry(sweep: SweepData, t: Trial, metric: str, mode: str) -> dict[str, Any]:
    best = t.best(metric, mode)
    config_path = sweep.file(t.dirname, "config.yaml")
    config_text, config = None, None
    if t.has_config:
        try:
            config_text = storage.read_text(config_path)
            config = yaml.safe_load(config_text)
        except (StorageError, UnicodeDecodeError, yaml.YAMLError):
            config_text, config = None, None
    return {
        "trial_id": t.trial_id,
        "status": t.status,
        "value": _clean(best[0]) if best else None,
        "epoch": best[1] if best else None,
        "params": {k: _clean(v) for k, v in t.params.items()},
        "config_path": config_path if config_text is not None else None,
        "config": config,
        "config_yaml": config_text,
        "command": (f"jigclu {sweep.task} --config {shlex.quote(config_path)}"
                    if config_text is not None else None),
    }


def _messages(sweep: SweepData, counts: dict[str, int], status: str, metric: str) -> list[str]:
    out = []
    if status == "no_results":
        if not counts["total"]:
            out.append("this sweep has no trials yet" + (" (it is starting)" if sweep.active else ""))
        else:
            waiting = ", ".join(f"{counts[s]} {STATUS_LABELS[s]}" for s in STATUSES if counts[s])
            out.append(f"no trial has reported {metric} yet ({waiting})")
    elif status == "no_success":
        others = counts["total"] - counts["errored"]
        out.append(f"no trial succeeded: {counts['errored']} of {counts['total']} trials errored"
                   + (f" and {others} reported no {metric} yet" if others else ""))
    else:
        if not counts["finished"] and not counts["stopped"]:
            out.append("no trial has finished yet: the ranking uses the epochs reported so far")
        if counts["errored"]:
            out.append(f"{counts['errored']} of {counts['total']} trials errored; see the errors table")
    if not sweep.active and (counts["interrupted"] or counts["pending"]) and counts["total"]:
        n = counts["interrupted"] + counts["pending"]
        out.append(f"the sweep is not running and {n} trial{'s' * (n > 1)} did not finish: re-run "
                   f"`jigclu tune` with the same config and name to resume")
    return out


# --- parameter importances ----------------------------------------------------------------

def param_importances(sweep: SweepData) -> dict[str, Any]:
    """Optuna's fANOVA importances over the study's completed trials (the objective Optuna
    records for a trial is the last value of the sweep's metric that Ray Tune told it)."""
    out: dict[str, Any] = {"method": "fANOVA", "objective": f"each trial's last reported {sweep.metric}",
                           "n_trials": 0, "values": None, "message": None}
    db = sweep.file("optuna.db")
    if not storage.is_file(db):
        out["message"] = "no Optuna study (optuna.db) in the sweep directory"
        return out
    try:
        with _local_copy(db) as local:
            _fanova(sweep, local, out)
    except Exception as exc:  # noqa: BLE001 - importances are a nicety; the report goes on
        out["message"] = f"could not compute importances: {type(exc).__name__}: {first_line(str(exc))}"
    return out


def _fanova(sweep: SweepData, db: Path, out: dict[str, Any]) -> None:
    import warnings

    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # read-only: a report never writes to a study that a running sweep may be writing to
    rdb = optuna.storages.RDBStorage(f"sqlite:///file:{db.resolve()}?mode=ro&uri=true")
    names = optuna.get_all_study_names(rdb)
    name = sweep.name if sweep.name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        out["message"] = f"no study named '{sweep.name}' in optuna.db"
        return
    study = optuna.load_study(study_name=name, storage=rdb)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    out["n_trials"] = len(complete)
    if len(complete) < 2:
        out["message"] = f"needs at least 2 completed trials (the study has {len(complete)})"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    values = {k: float(v) for k, v in values.items()}
    if not values or not all(math.isfinite(v) for v in values.values()):
        out["message"] = "fANOVA could not separate the parameters (all trials scored the same?)"
        return
    out["values"] = values


@contextmanager
def _local_copy(location: str) -> Iterator[Path]:
    """The local path of a storage file: itself when it is local, else a temporary download."""
    local = storage.local_path(location)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="jigclu-report-") as tmp:
        path = Path(tmp) / "copy.db"
        path.write_bytes(storage.read_bytes(location))
        yield path


# --- JSON-ready values --------------------------------------------------------------------

def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts is not None else None
