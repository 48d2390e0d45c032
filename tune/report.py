"""``jigclu report SWEEP_DIR``: what a sweep found, read from its directory.

    jigclu report sweeps/pretrain_digits                      # the rich terminal report
    jigclu report sweeps/pretrain_digits --top 3 --format json  # the same content for scripts
    jigclu report sweeps/pretrain_digits --export trials.parquet --plots plots/

The report: a header (search, scheduler, trials by status, compute and wall-clock), the top
trials by their *best* value of the metric (with a learning-curve sparkline), the errored and
early-stopped trials with the reason, Optuna's parameter importances, and the best trial's
resolved config with the command that re-runs it. One dict (:func:`build_report`) feeds the
table, JSON and YAML outputs, so they always say the same thing; docs/report.md documents it,
the Parquet export and the exit codes:

    0  report printed; at least one trial reported the metric without erroring
    2  not a sweep directory, unreadable, or a bad option (one line on stderr)
    3  no trial has reported the metric yet (no trials, or all pending / just started)
    4  no trial succeeded: trials errored and none reported the metric without erroring

Ray is not imported: the sweep directory holds everything (see :mod:`tune.results`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml
from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from jigclu.errors import JigcluError
from tune.results import STATUS_LABELS, STATUSES, SweepData, Trial, load_sweep_dir

EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_NO_RESULTS = 3
EXIT_NO_SUCCESS = 4

SCHEMA = "jigclu-report/1"
PARQUET_SCHEMA = "jigclu-trials/1"
DEFAULT_TOP = 10
SPARK = "▁▂▃▄▅▆▇█"
SPARK_MAX = 16
STATUS_STYLES = {"finished": "green", "stopped": "yellow", "errored": "bold red", "running": "cyan",
                 "interrupted": "magenta", "pending": "dim"}
PARQUET_BASE = ("sweep", "trial_id", "status", "epoch", "time_total_s")


# --- command line -------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep directory: <output_dir>/<name>")
    p.add_argument("--top", "-k", type=int, default=DEFAULT_TOP, metavar="K",
                   help=f"how many trials to rank (default {DEFAULT_TOP}; 0 = all)")
    p.add_argument("--metric", "-m", default=None, metavar="M",
                   help="rank by this reported metric (default: the sweep's metric)")
    p.add_argument("--mode", choices=("max", "min"), default=None,
                   help="whether higher or lower --metric is better (default: the sweep's mode for its "
                        "own metric; min for names with loss/error/time, else max)")
    p.add_argument("--format", "-f", choices=("table", "json", "yaml"), default="table",
                   help="table (rich, for people) or json / yaml (for scripts; see docs/report.md)")
    p.add_argument("--export", metavar="FILE.parquet", default=None,
                   help="write every trial's per-epoch results, parameters and status to one Parquet file")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="write PNG plots (learning curves, importances) to DIR (needs matplotlib)")
    p.add_argument("--no-importance", action="store_true",
                   help="skip Optuna's parameter importances (they take a second or two)")


def add_cli(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="summarise a sweep directory: best trials, errors, importances, best config",
        description="Report on a sweep directory (finished, running or interrupted). Exit codes: 0 report "
                    "printed; 2 not a sweep directory / unreadable; 3 no trial has reported the metric yet; "
                    "4 no trial succeeded (all errored).")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str], console: Console | None = None) -> int:
    """``jigclu report`` without the rest of the CLI: parse ``argv``, report, return the exit code."""
    parser = argparse.ArgumentParser(prog="jigclu report", description="Report on a sweep directory.")
    add_arguments(parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse printed its usage line
        return int(exc.code or 0) and EXIT_UNREADABLE
    try:
        return run(args, console=console)
    except JigcluError as exc:
        print(f"jigclu: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Report on ``args.sweep_dir``; raises :class:`JigcluError` for exit code 2."""
    if args.top is not None and args.top < 0:
        raise JigcluError("report: --top must be 0 (all) or a positive number")
    if args.plots:
        _require_matplotlib()
    sweep = load_sweep_dir(args.sweep_dir)
    report = build_report(sweep, top=args.top, metric=args.metric, mode=args.mode,
                          importances=not args.no_importance)
    console = console or Console()
    side: list[str] = []
    if args.export:
        rows = export_parquet(sweep, args.export)
        side.append(f"exported {rows} trial-epoch rows to {args.export}")
    if args.plots:
        written = write_plots(report, args.plots)
        side.append(f"plots: {', '.join(str(p) for p in written)}" if written else
                    "plots: nothing to plot yet (no trial has reported the metric)")
    if args.format == "table":
        render(report, console)
        for line in side:
            console.print(Text(line, style="dim"), soft_wrap=True)
    else:
        text = json.dumps(report, indent=2) if args.format == "json" else \
            yaml.safe_dump(report, sort_keys=False, allow_unicode=True, width=100)
        console.file.write(text.rstrip("\n") + "\n")
        console.file.flush()
        for line in report["messages"] + side:  # stdout stays parseable; people still see these
            print(line, file=sys.stderr)
    return int(report["exit_code"])


# --- the report as data -------------------------------------------------------------------

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
        "messages": _messages(sweep, counts, status, metric, ranked),
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
    sched = d.get("scheduler") if isinstance(d.get("scheduler"), dict) else {}
    sched_type = sched.get("type") or "asha"
    search = d.get("search") if isinstance(d.get("search"), dict) else {}
    return {
        "name": sweep.name,
        "dir": str(sweep.path.resolve()),
        "task": sweep.task,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "search": {
            # tune/sweep.py always searches with Ray's OptunaSearch, whose default sampler is TPE
            "algorithm": search.get("algorithm", "optuna-tpe"),
            "seed": d.get("seed", 0),
            "num_samples": d.get("num_samples"),
            "max_concurrent": d.get("max_concurrent"),
            "time_budget_s": d.get("time_budget_s"),
        },
        "scheduler": {
            "type": sched_type,
            "grace_period": sched.get("grace_period", 1) if sched_type == "asha" else None,
            "reduction_factor": sched.get("reduction_factor", 2.0) if sched_type == "asha" else None,
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
        sched = (sweep.definition.get("scheduler") or {}).get("type", "asha")
        by = "ASHA" if sched == "asha" else "the sweep (time budget or end of search)"
        reason = f"stopped by {by} at epoch {t.epochs}" + (f" of {sweep.max_t}" if sweep.max_t else "")
    else:
        reason = (f"interrupted after epoch {t.epochs}" if t.epochs else "interrupted before its first epoch") \
            + " (the sweep is not running)"
    return {"trial_id": t.trial_id, "status": t.status, "reason": reason, "epoch": t.epochs,
            "error_file": t.error_file, "failures": t.failures}


def _best_entry(sweep: SweepData, t: Trial, metric: str, mode: str) -> dict[str, Any]:
    best = t.best(metric, mode)
    config_path = sweep.path.resolve() / t.dirname / "config.yaml"
    config_text, config = None, None
    if t.has_config:
        try:
            config_text = config_path.read_text()
            config = yaml.safe_load(config_text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            config_text, config = None, None
    return {
        "trial_id": t.trial_id,
        "status": t.status,
        "value": _clean(best[0]) if best else None,
        "epoch": best[1] if best else None,
        "params": {k: _clean(v) for k, v in t.params.items()},
        "config_path": str(config_path) if config_text is not None else None,
        "config": config,
        "config_yaml": config_text,
        "command": (f"jigclu {sweep.task} --config {shlex.quote(str(config_path))}"
                    if config_text is not None else None),
    }


def _messages(sweep: SweepData, counts: dict[str, int], status: str, metric: str,
              ranked: list[Trial]) -> list[str]:
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
            out.append(f"no trial has finished yet: the ranking uses the epochs reported so far")
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
    db = sweep.path / "optuna.db"
    if not db.is_file():
        out["message"] = "no Optuna study (optuna.db) in the sweep directory"
        return out
    try:
        import warnings

        import optuna
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # read-only: a report never writes to a study that a running sweep may be writing to
        storage = optuna.storages.RDBStorage(f"sqlite:///file:{db.resolve()}?mode=ro&uri=true")
        names = optuna.get_all_study_names(storage)
        name = sweep.name if sweep.name in names else (names[0] if len(names) == 1 else None)
        if name is None:
            out["message"] = f"no study named '{sweep.name}' in optuna.db"
            return out
        study = optuna.load_study(study_name=name, storage=storage)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        out["n_trials"] = len(complete)
        if len(complete) < 2:
            out["message"] = f"needs at least 2 completed trials (the study has {len(complete)})"
            return out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
        values = {k: float(v) for k, v in values.items()}
        if not values or not all(math.isfinite(v) for v in values.values()):
            out["message"] = "fANOVA could not separate the parameters (all trials scored the same?)"
            return out
        out["values"] = values
    except Exception as exc:  # noqa: BLE001 - importances are a nicety; the report goes on
        out["message"] = f"could not compute importances: {type(exc).__name__}: {_first_line(str(exc))}"
    return out


# --- rendering ----------------------------------------------------------------------------

def render(report: dict[str, Any], console: Console) -> None:
    """Print the report with rich; adapts to narrow terminals, and colour means status only."""
    console.print(_header(report))
    metric, mode = report["ranked_by"]["metric"], report["ranked_by"]["mode"]
    if report["top"]:
        n, total = len(report["top"]), report["ranked_total"]
        title = f"Top {n} of {total} trials by best {metric} ({mode})" if n < total else \
            f"Trials by best {metric} ({mode})"
        for table in _top_tables(report, console, title):
            console.print()
            console.print(table)
    if report["problems"]:
        console.print()
        console.print(_problems_table(report["problems"]))
    if report["importances"]["method"] is not None and report["counts"]["total"]:
        console.print()
        console.print(_importances(report["importances"], console.width))
    if report["best"] is not None:
        console.print()
        _print_best(report["best"], report["ranked_by"], console)
    if report["notes"] or report["messages"]:
        console.print()
    for note in report["notes"]:
        console.print(Text(f"note: {note}", style="dim"))
    style = {"ok": "yellow", "no_results": "bold yellow", "no_success": "bold red"}[report["status"]]
    for message in report["messages"]:
        console.print(Text(message, style=style))


def _header(report: dict[str, Any]) -> Panel:
    s = report["sweep"]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    metric = f"{s['metric']} ({s['mode']})"
    if report["ranked_by"]["metric"] != s["metric"]:
        metric += f"; ranked by {report['ranked_by']['metric']} ({report['ranked_by']['mode']})"
    grid.add_row("task", Text(s["task"]))
    grid.add_row("metric", Text(metric))
    search = s["search"]
    algo = "Optuna TPE" if search["algorithm"] == "optuna-tpe" else str(search["algorithm"])
    parts = [f"{algo} (seed {search['seed']})"]
    if search["num_samples"]:
        parts.append(f"{search['num_samples']} samples")
    if search["max_concurrent"]:
        parts.append(f"{search['max_concurrent']} at a time")
    if search["time_budget_s"]:
        parts.append(f"budget {fmt_duration(search['time_budget_s'])}")
    grid.add_row("search", Text(", ".join(parts)))
    sched = s["scheduler"]
    max_t = f"max_t {sched['max_t']}" if sched["max_t"] else "max_t ?"
    grid.add_row("scheduler", f"ASHA (grace {sched['grace_period']:g}, reduction "
                              f"{sched['reduction_factor']:g}, {max_t})" if sched["type"] == "asha"
                 else f"none (FIFO; every trial runs to {max_t})")
    counts = report["counts"]
    line = Text(f"{counts['total']}: ")
    shown = [st for st in STATUSES if counts[st] or st != "interrupted"]
    for i, st in enumerate(shown):
        if i:
            line.append(" · ", style="dim")
        line.append(f"{counts[st]} {STATUS_LABELS[st]}", style=STATUS_STYLES[st] if counts[st] else "dim")
    grid.add_row("trials", line)
    grid.add_row("compute", f"{fmt_duration(report['compute_s'])} (sum of trial times)")
    wall = fmt_duration(report["wall_clock_s"]) if report["wall_clock_s"] is not None else "-"
    if report["started_at"] and report["last_result_at"]:
        a, b = _local(report["started_at"]), _local(report["last_result_at"])
        wall += f" ({a:%Y-%m-%d %H:%M:%S} → {b:%H:%M:%S})" if a.date() == b.date() else \
            f" ({a:%Y-%m-%d %H:%M} → {b:%Y-%m-%d %H:%M})"
    grid.add_row("wall-clock", Text(wall))
    grid.add_row("directory", Text(s["dir"]))
    if s["active"]:
        grid.add_row("state", Text("running (written to within the last minute)", style="cyan"))
    return Panel(grid, title=Text(f"sweep {s['name']}", style="bold"), title_align="left", expand=False)


def _table(title: str | None = None) -> Table:
    # no vertical rules: a narrow terminal keeps its columns for data
    return Table(title=Text(title) if title else None, title_justify="left", title_style="bold", header_style="bold",
                 box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                 collapse_padding=True)


def _fits(table: Table, console: Console) -> bool:
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    return natural <= console.width


def _top_tables(report: dict[str, Any], console: Console, title: str) -> list[Table]:
    """The ranked trials: one table when it fits; else the metrics and the parameters in two,
    leaving out the least useful metric columns (failures, last value, time...) if still too wide."""
    rows = report["top"]
    keys = list(report["sweep"]["space"])
    for row in rows:
        keys += [k for k in row["params"] if k not in keys]
    names = short_names(keys)
    values = [v for row in rows for _, v in row["curve"] if v is not None]
    scale = (min(values), max(values)) if values else (0.0, 1.0)
    # (header, cell, right-justified); listed in the order they are left out when space runs short
    optional = [
        ("fail", lambda r: str(r["failures"]), True),
        ("last", lambda r: fmt_num(r["last_value"]), True),
        ("time", lambda r: fmt_duration(r["time_total_s"]), True),
        ("epochs", lambda r: str(r["epochs"]), True),
        ("@ep", lambda r: str(r["best_epoch"]), True),
    ]
    order = ["best", "@ep", "last", "epochs", "time", "status", "fail", "curve"]
    cells = {h: (f, right) for h, f, right in optional}
    cells["best"] = (lambda r: Text(fmt_num(r["best_value"]), style="bold"), True)
    cells["status"] = (lambda r: Text(r["status"], style=STATUS_STYLES[r["status"]]), False)
    cells["curve"] = (lambda r: sparkline([v for _, v in r["curve"]], scale), False)

    def build(with_params: bool, metric_headers: list[str], table_title: str) -> Table:
        table = _table(table_title)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("trial", no_wrap=True)
        for k in keys if with_params else []:
            table.add_column(names[k], justify="right", no_wrap=True)
        for h in metric_headers:
            table.add_column(h, justify="right" if cells[h][1] else "left", no_wrap=True)
        for row in rows:
            params = [Text(fmt_num(row["params"].get(k))) for k in keys] if with_params else []
            table.add_row(str(row["rank"]), row["trial_id"], *params, *[cells[h][0](row) for h in metric_headers])
        return table

    wide = build(True, order, title)
    if _fits(wide, console) or not keys:
        return [wide]
    headers = list(order)
    metrics = build(False, headers, title)
    for drop, _, _ in optional:
        if _fits(metrics, console):
            break
        headers.remove(drop)
        metrics = build(False, headers, title)
    params = _table("Their sampled parameters")
    params.add_column("trial", no_wrap=True)
    for k in keys:
        params.add_column(names[k], justify="right", overflow="fold")
    for row in rows:
        params.add_row(row["trial_id"], *[Text(fmt_num(row["params"].get(k))) for k in keys])
    return [metrics, params]


def _problems_table(problems: list[dict[str, Any]]) -> Table:
    table = _table("Errored, stopped and interrupted trials")
    table.add_column("trial", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("ep", justify="right", no_wrap=True)
    table.add_column("reason (error file)", overflow="fold")
    order = {"errored": 0, "interrupted": 1, "stopped": 2}
    for p in sorted(problems, key=lambda p: order.get(p["status"], 3)):
        reason = Text(p["reason"])
        if p["error_file"]:
            reason.append(f"\n{p['error_file']}", style="dim")
        table.add_row(p["trial_id"], Text(p["status"], style=STATUS_STYLES[p["status"]]), str(p["epoch"]), reason)
    return table


def _importances(imp: dict[str, Any], width: int) -> Group:
    label = f"Parameter importances ({imp['method']}, Optuna"
    label += f"; {imp['n_trials']} completed trials)" if imp["n_trials"] else ")"
    parts: list[Any] = [Text(label, style="bold")]
    if imp["values"]:
        names = short_names(list(imp["values"]))
        bar_width = max(8, min(40, width - 28))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        top = max(imp["values"].values()) or 1.0
        for key, value in imp["values"].items():
            grid.add_row(Text(names[key]), Text(bar(value / top, bar_width), style="blue"), f"{value:.3f}")
        parts.append(grid)
        parts.append(Text(f"share of the variance of Optuna's objective: {imp['objective']}", style="dim"))
    if imp["message"]:
        parts.append(Text(imp["message"], style="dim"))
    return Group(*parts)


def _print_best(best: dict[str, Any], ranked_by: dict[str, str], console: Console) -> None:
    console.print(Text.assemble(("Best trial ", "bold"), (best["trial_id"], "bold"),
                                (f": {ranked_by['metric']} {fmt_num(best['value'])} at epoch {best['epoch']}"
                                 f" ({STATUS_LABELS[best['status']]})", "")))
    if best["config_yaml"] is None:
        console.print(Text("its config.yaml is missing: the trial never started its trainer", style="dim"))
        return
    console.print(Syntax(best["config_yaml"].rstrip("\n"), "yaml", background_color="default", word_wrap=True))
    console.print(Text("re-run it:", style="dim"))
    console.print(Text(best["command"], style="bold"), soft_wrap=True)


# --- formatting helpers -------------------------------------------------------------------

def short_names(keys: list[str]) -> dict[str, str]:
    """Compact column names: the last key component (``optim.lr`` -> ``lr``), with more
    components only where two keys would otherwise share a name."""
    depth = {k: 1 for k in keys}
    while True:
        names = {k: ".".join(k.split(".")[-depth[k]:]) for k in keys}
        clashes = [k for k in keys if list(names.values()).count(names[k]) > 1 and depth[k] < len(k.split("."))]
        if not clashes:
            return names
        for k in clashes:
            depth[k] += 1


def sparkline(values: list[float | None], scale: tuple[float, float] | None = None) -> str:
    """Unicode sparkline, at most ``SPARK_MAX`` characters (longer curves are averaged in buckets)."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) > SPARK_MAX:
        n = len(values)
        values = [sum(chunk) / len(chunk) for chunk in
                  (values[i * n // SPARK_MAX:(i + 1) * n // SPARK_MAX] for i in range(SPARK_MAX)) if chunk]
    lo, hi = scale or (min(values), max(values))
    if hi <= lo:
        return SPARK[len(SPARK) // 2] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, max(0, round((v - lo) / (hi - lo) * (len(SPARK) - 1))))]
                   for v in values)


def bar(fraction: float, width: int) -> str:
    eighths = max(0, round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "") if eighths else "▏"


def fmt_num(value: Any) -> str:
    """Four significant digits in fixed point where that reads well; ints stay ints."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    a = abs(value)
    if 1e-3 <= a < 1e6:
        return f"{value:.{max(0, 3 - math.floor(math.log10(a)))}f}"
    return f"{value:.3g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts is not None else None


def _local(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone()


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


# --- Parquet export -------------------------------------------------------------------------

def export_parquet(sweep: SweepData, path: str | Path) -> int:
    """Every trial's per-epoch results, its parameters and status, one row per trial-epoch
    (schema: docs/report.md); written atomically (temp file + rename). Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    metric_keys = [k for k in sweep.metric_keys() if k not in ("training_iteration", "time_total_s")]
    metric_cols = {k: (f"result.{k}" if k in PARQUET_BASE or k.startswith("param.") else k) for k in metric_keys}
    param_keys = sweep.space_keys
    rows = [(t, r) for t in sweep.trials for r in t.results]

    def num_column(values: list[Any]) -> Any:
        nums = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values]
        ints = all(isinstance(v, int) for v in nums if v is not None)
        return pa.array([None if v is None else (int(v) if ints else float(v)) for v in nums],
                        type=pa.int64() if ints and any(v is not None for v in nums) else pa.float64())

    def param_column(values: list[Any]) -> Any:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            return pa.array([None if v is None else json.dumps(v) if not isinstance(v, str) else v
                             for v in values], type=pa.string())

    columns: dict[str, Any] = {
        "sweep": pa.array([sweep.name] * len(rows), type=pa.string()),
        "trial_id": pa.array([t.trial_id for t, _ in rows], type=pa.string()),
        "status": pa.array([t.status for t, _ in rows], type=pa.string()),
        "epoch": pa.array([int(r.get("training_iteration") or 0) for _, r in rows], type=pa.int64()),
    }
    for key in metric_keys:
        columns[metric_cols[key]] = num_column([r.get(key) for _, r in rows])
    for key in param_keys:
        column = param_column([t.params.get(key) for t, _ in rows])
        columns[f"param.{key}"] = column if column.type != pa.null() else pa.array([None] * len(rows), pa.string())
    columns["time_total_s"] = num_column([r.get("time_total_s") for _, r in rows]).cast(pa.float64())
    metadata = {"jigclu.schema": PARQUET_SCHEMA, "jigclu.sweep": sweep.name, "jigclu.metric": sweep.metric,
                "jigclu.mode": sweep.mode}
    table = pa.table(columns).replace_schema_metadata(metadata)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise JigcluError(f"report: cannot write {path}: {exc.strerror or exc}") from None
    return len(rows)


# --- plots ----------------------------------------------------------------------------------

def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise JigcluError("report: --plots needs matplotlib, which is not installed "
                          "(pip install 'jigclu[plots]')") from None


def write_plots(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """PNG plots of the top trials' learning curves and of the parameter importances."""
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JigcluError(f"report: cannot create {directory}: {exc.strerror or exc}") from None
    written = []
    metric, mode = report["ranked_by"]["metric"], report["ranked_by"]["mode"]
    name = report["sweep"]["name"]
    if report["top"]:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for row in report["top"]:
            xs = [e for e, v in row["curve"] if v is not None]
            ys = [v for _, v in row["curve"] if v is not None]
            line, = ax.plot(xs, ys, marker="o", markersize=3, label=f"#{row['rank']} {row['trial_id']}")
            ax.plot([row["best_epoch"]], [row["best_value"]], marker="*", markersize=10, color=line.get_color())
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (training_iteration); ★ = best")
        ax.set_ylabel(metric)
        ax.set_title(f"sweep {name}: top trials by best {metric} ({mode})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        written.append(_save(fig, directory / "learning_curves.png"))
        plt.close(fig)
    values = report["importances"]["values"]
    if values:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(values)), dpi=120)
        keys = list(values)[::-1]
        ax.barh(keys, [values[k] for k in keys], color="tab:blue")
        ax.set_xlabel("importance (fANOVA)")
        ax.set_title(f"sweep {name}: parameter importances")
        fig.tight_layout()
        written.append(_save(fig, directory / "importances.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
