"""The report as rich renderables: the header panel, the ranked trials (one table, or two in a
narrow terminal), the problems, the importances, the PBT schedules and the best trial's config
(docs/report.md, "What the report shows"; the sections on what the numbers are worth come from
:mod:`tune.report.render_science`). Colour marks status only."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from tune.report.fmt import fmt_duration, fmt_num, local_time, report_table, short_names, sparkline
from tune.report.render_science import (best_test_text, header_rows, importances, scheduler_text, schedules,
                                         search_text, seeds_table)
from tune.report.trial import STATUS_LABELS, STATUSES

STATUS_STYLES = {"finished": "green", "stopped": "yellow", "errored": "bold red", "running": "cyan",
                 "waiting": "bold cyan", "interrupted": "magenta", "pending": "dim"}


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report with rich; adapts to narrow terminals, and colour means status only."""
    console.print(_header(report))
    metric, mode = report["ranked_by"]["metric"], report["ranked_by"]["mode"]
    split = report["selection"]["ranked_split"]
    if report["top"]:
        n, total = len(report["top"]), report["ranked_total"]
        by = f"{metric} on {split}" if split else metric
        title = f"Top {n} of {total} trials by best {by} ({mode})" if n < total else f"Trials by best {by} ({mode})"
        for i, table in enumerate(_top_tables(report, console, title)):
            console.print()
            console.print(table)
            if i == 0 and _has_test(report):
                console.print(Text("test: scored once on the test split after the sweep (test_scores.json), "
                                   "for the trials selected on val; - = not scored", style="dim"))
    if report.get("by_method"):
        console.print()
        console.print(_methods_table(report["by_method"], metric))
    if (report.get("seeds") or {}).get("leaders"):
        console.print()
        console.print(seeds_table(report["seeds"], metric))
    if report["problems"]:
        console.print()
        console.print(_problems_table(report["problems"]))
    if report["importances"]["method"] is not None and report["counts"]["total"]:
        console.print()
        console.print(importances(report["importances"], console.width))
    if report["schedules"] is not None:
        console.print()
        console.print(schedules(report))
    if report["best"] is not None:
        console.print()
        _print_best(report, console)
    if report["notes"] or report["messages"]:
        console.print()
    for note in report["notes"]:
        console.print(Text(f"note: {note}", style="dim"))
    style = {"ok": "yellow", "no_results": "bold yellow", "no_success": "bold red"}[report["status"]]
    for message in report["messages"]:
        console.print(Text(message, style=style))
    if report.get("act") is not None:
        console.print()
        _print_act(report["act"], console)


def _header(report: dict[str, Any]) -> Panel:
    s = report["sweep"]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    metric = f"{s['metric']} ({s['mode']})"
    if report["ranked_by"]["metric"] != s["metric"]:
        metric += f"; ranked by {report['ranked_by']['metric']} ({report['ranked_by']['mode']})"
    if not s["legacy"] and s["objective"] != "metric":
        metric += f"; objective {s['objective']}"
    if not s["legacy"] and s["rung_metric"] not in (None, s["metric"]):
        metric += f"; ASHA rungs on {s['rung_metric']}"
    grid.add_row("task", Text(s["task"]))
    grid.add_row("metric", Text(metric))
    search = s["search"]
    parts = [search_text(search)]
    if search["num_samples"]:
        parts.append(f"{search['num_samples']} samples")
    if search["max_concurrent"]:
        parts.append(f"{search['max_concurrent']} at a time")
    if search["time_budget_s"]:
        parts.append(f"budget {fmt_duration(search['time_budget_s'])}")
    grid.add_row("search", Text(", ".join(parts)))
    grid.add_row("scheduler", scheduler_text(s["scheduler"]))
    counts = report["counts"]
    line = Text(f"{counts['total']}: ")
    shown = [st for st in STATUSES if counts[st] or st != "interrupted"]
    for i, st in enumerate(shown):
        if i:
            line.append(" · ", style="dim")
        line.append(f"{counts[st]} {STATUS_LABELS[st]}", style=STATUS_STYLES[st] if counts[st] else "dim")
    grid.add_row("trials", line)
    for label, text in header_rows(report):
        grid.add_row(label, text)
    grid.add_row("compute", f"{fmt_duration(report['compute_s'])} (sum of trial times)")
    wall = fmt_duration(report["wall_clock_s"]) if report["wall_clock_s"] is not None else "-"
    if report["started_at"] and report["last_result_at"]:
        a, b = local_time(report["started_at"]), local_time(report["last_result_at"])
        wall += f" ({a:%Y-%m-%d %H:%M:%S} → {b:%H:%M:%S})" if a.date() == b.date() else \
            f" ({a:%Y-%m-%d %H:%M} → {b:%Y-%m-%d %H:%M})"
    grid.add_row("wall-clock", Text(wall))
    grid.add_row("directory", Text(s["dir"]))
    if s["active"]:
        grid.add_row("state", Text("running (written to within the last minute)", style="cyan"))
    return Panel(grid, title=Text(f"sweep {s['name']}", style="bold"), title_align="left", expand=False)


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
    split = report["selection"]["ranked_split"]
    best = f"{report['ranked_by']['metric']} ({split})" if split else "best"
    order = [best] + ["test"] * _has_test(report) + ["@ep", "last", "epochs", "time", "status", "fail", "curve"]
    cells = {h: (f, right) for h, f, right in optional}
    cells[best] = (lambda r: Text(fmt_num(r["best_value"]), style="bold"), True)
    cells["test"] = (lambda r: Text(fmt_num((r["test"] or {}).get("value"))), True)
    cells["status"] = (lambda r: Text(r["status"], style=STATUS_STYLES[r["status"]]), False)
    cells["curve"] = (lambda r: sparkline([v for _, v in r["curve"]], scale), False)

    def build(with_params: bool, metric_headers: list[str], table_title: str) -> Table:
        table = report_table(table_title)
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
    params = report_table("Their sampled parameters")
    params.add_column("trial", no_wrap=True)
    for k in keys:
        params.add_column(names[k], justify="right", overflow="fold")
    for row in rows:
        params.add_row(row["trial_id"], *[Text(fmt_num(row["params"].get(k))) for k in keys])
    return [metrics, params]


def _has_test(report: dict[str, Any]) -> bool:
    return report["selection"]["test_scores"] is not None


def _methods_table(groups: list[dict[str, Any]], metric: str) -> Table:
    """The searched ``method``'s configs side by side (tune/report/groups.py)."""
    table = report_table(f"By method: each method's configs by best {metric}")
    for name, justify in (("method", "left"), ("configs", "right"), ("best", "right"), ("trial", "left"),
                          ("median", "right")):
        table.add_column(name, justify=justify)
    for g in groups:
        table.add_row(g["method"], f"{g['scored']}/{g['trials']}", fmt_num(g["best"]) if g["best"] is not None else "-",
                      g["best_trial"] or "-", fmt_num(g["median"]) if g["median"] is not None else "-")
    return table


def _problems_table(problems: list[dict[str, Any]]) -> Table:
    collapsed = any(p.get("collapsed") for p in problems)
    table = report_table("Errored, stopped, interrupted and collapsed trials" if collapsed else
                         "Errored, stopped and interrupted trials")
    table.add_column("trial", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("ep", justify="right", no_wrap=True)
    table.add_column("reason (error file)", overflow="fold")
    order = {"errored": 0, "interrupted": 1, "stopped": 2, "finished": 3}
    for p in sorted(problems, key=lambda p: order.get(p["status"], 3)):
        reason = Text(p["reason"])
        if p["error_file"]:
            reason.append(f"\n{p['error_file']}", style="dim")
        table.add_row(p["trial_id"], Text(p["status"], style=STATUS_STYLES[p["status"]]), str(p["epoch"]), reason)
    return table


def _print_best(report: dict[str, Any], console: Console) -> None:
    best, split = report["best"], report["selection"]["ranked_split"]
    on = f" ({split})" if split else ""  # after the value: "knn_top1 90.00 (val)"
    console.print(Text.assemble(("Best trial ", "bold"), (best["trial_id"], "bold"),
                                (f": {report['ranked_by']['metric']} {fmt_num(best['value'])}{on} at epoch "
                                 f"{best['epoch']} ({STATUS_LABELS[best['status']]})", "")))
    test = best_test_text(best)
    if test is not None:
        console.print(Text(test, style="bold"))
    elif split == "val":
        console.print(Text("not scored on the test split (test_scores.json does not list it)", style="dim"))
    if best["collapsed"]:
        console.print(Text(f"its representation collapsed: {best['collapsed']}", style="yellow"))
    if (report["schedules"] or {}).get(best["trial_id"]):
        console.print(Text("PBT changed its config while it trained (see its schedule): its config.yaml is the "
                           "initial one", style="dim"))
    if best["config_yaml"] is None:
        console.print(Text("its config.yaml is missing: the trial never started its trainer", style="dim"))
        return
    console.print(Syntax(best["config_yaml"].rstrip("\n"), "yaml", background_color="default", word_wrap=True))
    console.print(Text("re-run it:", style="dim"))
    console.print(Text(best["command"], style="bold"), soft_wrap=True)


def _print_act(act: dict[str, Any], console: Console) -> None:
    """The commands that evaluate and export the winner (or the trial named), each on a line of its own."""
    who = "the winner" if act["chosen"] == "best" else "the trial named"
    console.print(Text.assemble(("Act on trial ", "bold"), (act["trial_id"], "bold"), (f" ({who})", "")))
    if act["error"]:
        console.print(Text(f"no checkpoint to act on: {act['error']}", style="yellow"))
        return
    console.print(Text(act["ranked"]))
    if not act["ended"]:
        console.print(Text("it has not finished: its best epoch may still change", style="yellow"))
    for entry in act["commands"]:  # one line each, to copy (the terminal wraps it)
        console.print(Text(f"{entry['what']}:", style="dim"))
        console.print(Text(entry["command"], style="bold"), soft_wrap=True)
