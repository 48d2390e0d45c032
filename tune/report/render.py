"""The report as rich renderables: the header panel, the ranked trials (one table, or two in a
narrow terminal), the problems, the importances and the best trial's config (docs/report.md,
"What the report shows"). Colour marks status only."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from tune.report.trial import STATUS_LABELS, STATUSES

SPARK = "▁▂▃▄▅▆▇█"
SPARK_MAX = 16
STATUS_STYLES = {"finished": "green", "stopped": "yellow", "errored": "bold red", "running": "cyan",
                 "interrupted": "magenta", "pending": "dim"}


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
    search = s["search"]  # always Optuna's TPE (tune/sweep.py)
    parts = [f"Optuna TPE (seed {search['seed']})"]
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


def _local(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone()
