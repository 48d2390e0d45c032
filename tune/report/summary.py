"""The report as data: one JSON-ready dict (schema: docs/report.md) that the table, JSON, YAML
and plot outputs all read, so they always say the same thing."""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timezone
from typing import Any

import yaml

from jigclu import storage
from jigclu.errors import JigcluError
from jigclu.storage import StorageError
from tune.report.act import act_entry
from tune.report.data import SweepData
from tune.report.groups import by_method
from tune.report.importance import param_importances, skipped_importances
from tune.report.seeds import seed_stats
from tune.report.science import (is_legacy, margins, rung_correlation, schedules, selection, selection_messages,
                                 test_entry)
from jigclu.values import jsonable as clean
from tune.report.trial import STATUS_LABELS, STATUSES, Trial

EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_NO_RESULTS = 3
EXIT_NO_SUCCESS = 4

SCHEMA = "jigclu-report/1"
DEFAULT_TOP = 10


def build_report(sweep: SweepData, top: int | None = DEFAULT_TOP, metric: str | None = None,
                 mode: str | None = None, importances: bool = True, act_on: str | None = None,
                 shown_as: str | None = None) -> dict[str, Any]:
    """Everything the report says, as JSON-ready data (schema: docs/report.md). ``act_on``: the trial
    whose commands end the report (default: the winner); ``shown_as``: the sweep's path as the user
    wrote it, for those commands (:mod:`tune.report.act`)."""
    metric = metric or sweep.metric
    if mode is None:
        mode = sweep.mode if metric == sweep.metric else guess_mode(metric)
    reported = sweep.metric_keys()
    if metric != sweep.metric and reported and metric not in reported:
        raise JigcluError(f"report: no trial reported '{metric}'; reported: {', '.join(reported)}")

    # a repeat trial is one more seed of its leader (the seeds table), not a config of its own
    ranked = [t for t in sweep.trials if t.best(metric, mode) is not None and not t.repeat_of]
    ranked.sort(key=lambda t: -t.best(metric, mode)[0] if mode == "max" else t.best(metric, mode)[0])
    seeds = seed_stats(sweep, metric, mode)
    if seeds and seeds["leaders"]:  # the leaders rank by their mean over seeds, ahead of one-seed configs
        order = {e["trial_id"]: e["rank"] for e in seeds["leaders"]}
        ranked.sort(key=lambda t: order.get(t.trial_id, len(order) + 1))
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

    sel = selection(sweep, metric)
    messages = _messages(sweep, counts, status, metric)
    if status == "ok":
        messages += selection_messages(sel, sweep, metric)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "sweep": _sweep_info(sweep),
        "ranked_by": {"metric": metric, "mode": mode},
        "status": status,
        "exit_code": code,
        "messages": messages,
        "selection": sel,
        "counts": counts,
        "compute_s": clean(sum(t.time_total_s for t in sweep.trials)),
        "wall_clock_s": clean(last - started) if started is not None and last is not None else None,
        "started_at": _iso(started),
        "last_result_at": _iso(last),
        "top": [_trial_entry(sweep, t, rank, metric, mode) for rank, t in enumerate(shown, 1)],
        "ranked_total": len(ranked),
        "by_method": by_method(sweep, metric, mode),
        "margins": margins(sweep, metric, mode, seeds),
        "seeds": seeds,
        "rung_correlation": rung_correlation(sweep),
        "problems": [_problem_entry(sweep, t) for t in sweep.trials
                     if t.status in ("errored", "stopped", "interrupted") or t.collapse_reason],
        "importances": param_importances(sweep) if importances else skipped_importances(),
        "schedules": schedules(sweep),
        "best": _best_entry(sweep, ranked[0], metric, mode) if ranked else None,
        "act": act_entry(sweep, ranked, metric, mode, act_on, shown_as),
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
    sched_type = sweep.scheduler_type
    asha, pbt = sched_type in ("asha", "promote"), sched_type == "pbt"
    scheduler = {
        "type": sched_type,
        "grace_period": sweep.scheduler.get("grace_period", 1) if asha else None,
        "reduction_factor": sweep.scheduler.get("reduction_factor", 2.0) if asha else None,
        "max_t": sweep.max_t,
    }
    if pbt:  # epochs between PBT's exploit/explore steps
        scheduler["perturbation_interval"] = sweep.scheduler.get("perturbation_interval")
    return {
        "name": sweep.name,
        "dir": sweep.location,
        "task": sweep.task,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "objective": sweep.objective,
        "rung_metric": sweep.rung_metric if asha else None,
        "legacy": is_legacy(sweep),
        "search": {
            # Ray's OptunaSearch (TPE, or Optuna's seeded RandomSampler); under PBT Tune's variant
            # generator draws the initial configs and there is no Optuna study
            "algorithm": "pbt (random initial configs)" if pbt else f"optuna-{sweep.searcher}",
            "seed": d.get("seed", 0),
            "num_samples": d.get("num_samples"),
            "max_concurrent": d.get("max_concurrent"),
            "time_budget_s": d.get("time_budget_s"),
        },
        "scheduler": scheduler,
        "space": dict(d.get("space") or {}),
        "active": sweep.active,
    }


def _trial_entry(sweep: SweepData, t: Trial, rank: int | None, metric: str, mode: str) -> dict[str, Any]:
    best = t.best(metric, mode)
    return {
        "rank": rank,
        "trial_id": t.trial_id,
        "dir": t.dirname,
        "status": t.status,
        "params": {k: clean(v) for k, v in t.params.items()},
        "best_value": clean(best[0]) if best else None,
        "best_epoch": best[1] if best else None,
        "last_value": clean(t.last_value(metric)),
        "epochs": t.epochs,
        "time_total_s": clean(t.time_total_s),
        "failures": t.failures,
        "curve": [[e, clean(v)] for e, v in t.curve(metric)],
        "test": test_entry(sweep, t.trial_id, metric),
        "collapsed": t.collapse_reason,
    }


def _problem_entry(sweep: SweepData, t: Trial) -> dict[str, Any]:
    if t.status == "errored":
        reason = t.error or "Ray marked the trial as errored (no error file)"
    elif t.collapse_reason:
        reason = f"collapsed: {t.collapse_reason}"
    elif t.status == "stopped":
        by = {"asha": "ASHA", "promote": "the promotion scheduler (never promoted past this rung)"}.get(
            sweep.scheduler.get("type", "asha"), "the sweep (time budget or end of search)")
        if t.trial_id in sweep.budget_stopped:
            budget = sweep.definition.get("time_budget_s")
            by = f"the sweep's time budget ({budget:g} s)" if budget else "the sweep's time budget"
        reason = f"stopped by {by} at epoch {t.epochs}" + (f" of {sweep.max_t}" if sweep.max_t else "")
    else:
        reason = (f"interrupted after epoch {t.epochs}" if t.epochs else "interrupted before its first epoch") \
            + " (the sweep is not running)"
    return {"trial_id": t.trial_id, "status": t.status, "reason": reason, "epoch": t.epochs,
            "error_file": t.error_file, "failures": t.failures, "collapsed": t.collapse_reason}


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
        "value": clean(best[0]) if best else None,
        "epoch": best[1] if best else None,
        "test": test_entry(sweep, t.trial_id, metric),
        "collapsed": t.collapse_reason,
        "params": {k: clean(v) for k, v in t.params.items()},
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


# --- JSON-ready values --------------------------------------------------------------------

def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts is not None else None
