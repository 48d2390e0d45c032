"""The rich renderables of what the numbers are worth (:mod:`tune.report.science`): the header's
search, selection, random-init and rung-correlation lines, the best trial's test score, the
parameter importances with their flags, and the PBT schedules (docs/report.md)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tune.report.fmt import bar, fmt_num, report_table, short_names


def search_text(search: dict[str, Any]) -> str:
    """The search algorithm and its seed (the header's first words on the search)."""
    algorithm, seed = search["algorithm"], search["seed"]
    if algorithm == "optuna-tpe":
        return f"Optuna TPE (seed {seed})"
    if algorithm == "optuna-random":
        return f"optuna-random (Optuna's RandomSampler, seed {seed})"
    if algorithm.startswith("pbt"):
        return f"pbt (random initial configs from Tune's variant generator, seed {seed})"
    return f"{algorithm} (seed {seed})"


def scheduler_text(sched: dict[str, Any]) -> str:
    max_t = f"max_t {sched['max_t']}" if sched["max_t"] else "max_t ?"
    if sched["type"] == "promote":
        return (f"promotion (pause at rungs, promote the top 1/{sched['reduction_factor']:g}; grace "
                f"{sched['grace_period']:g}, {max_t})")
    if sched["type"] == "asha":
        return f"ASHA (grace {sched['grace_period']:g}, reduction {sched['reduction_factor']:g}, {max_t})"
    if sched["type"] == "pbt":
        every = sched.get("perturbation_interval")
        return f"PBT (perturbation every {every} epoch{'s' * (every != 1)}, {max_t})" if every else f"PBT ({max_t})"
    return f"none (FIFO; every trial runs to {max_t})"


def header_rows(report: dict[str, Any]) -> list[tuple[str, Text]]:
    """The header's lines on selection, random init, spread and the first rung (not for a legacy
    sweep, whose files carry none of it: there the messages say what needs saying)."""
    s, sel = report["sweep"], report["selection"]
    if s["legacy"]:
        return []
    rows: list[tuple[str, Text]] = []
    if sel["split"] == "val":
        size = sel["val_size"]
        held = (f"{size:g} of the training images" if isinstance(size, float) and size < 1 else
                f"{fmt_num(size)} training images" if size is not None else "training images")
        line = f"on val ({held}, held out of pretraining)"
        line += "; test scored once (test_scores.json)" if sel["test_scores"] is not None else "; test not scored yet"
        rows.append(("selection", Text(line)))
    elif sel["split"] == "mixed":
        rows.append(("selection", Text("mixed: some trials scored on val, others on test", style="yellow")))
    else:
        rows.append(("selection", Text(f"on {sel['split']}: the best value is optimistic", style="yellow")))
    m = report["margins"]
    init = m["random_init"]
    if init is not None:
        line = (f"{init['metric']} {fmt_num(init['mean'])} (mean of {init['n_trials']}; "
                f"{fmt_num(init['min'])}-{fmt_num(init['max'])})")
        if init["best_minus_mean"] is not None:
            line += f"; best {init['of']} − random init {_signed(init['best_minus_mean'])}"
        rows.append(("random init", Text(line)))
    if m["best_minus_worst"] is not None and m["n_trials"] >= 2:
        rows.append(("spread", Text(f"best − worst {m['metric']} {_signed(m['best_minus_worst'])} "
                                    f"(last values of {m['n_trials']} trials)")))
    rows += seed_rows(report)
    rows.append(("first rung", Text(rung_text(report["rung_correlation"]))))
    if report["rung_correlation"].get("per_rung"):
        rows.append(("rungs", Text(per_rung_text(report["rung_correlation"]["per_rung"]))))
    return rows


def seed_rows(report: dict[str, Any]) -> list[tuple[str, Text]]:
    """The winner's interval over seeds, the margins against the seed spread, and whether the top
    two can be told apart; or, with no repeats, that nothing measured the seed noise."""
    seeds, m = report.get("seeds"), report["margins"]
    if not seeds or not seeds["leaders"]:
        text = "not measured: one run per config, so no margin here can be told from seed noise" if not seeds \
            else "repeats planned, none finished yet"
        return [("seeds", Text(text + " (sweep option repeats: {top_k, seeds})", style="yellow"))]
    win = seeds["leaders"][0]
    level = f"{seeds['confidence']:.0%}"
    line = f"winner {win['trial_id']}: mean {fmt_num(win['mean'])} over {win['n']} seed{'s' * (win['n'] != 1)}"
    if win["interval"]:
        line += f", {level} interval {fmt_num(win['interval'][0])} to {fmt_num(win['interval'][1])}"
    if seeds["pooled_sd"] is not None:
        line += f"; seed sd {fmt_num(seeds['pooled_sd'])} (pooled over {len(seeds['leaders'])} leaders)"
    rows = [("seeds", Text(line))]
    vs = m.get("vs_seeds") or {}
    for key, label in (("random_init", "best − random init"), ("worst", "best − worst")):
        if vs.get(key):
            rows.append(("", Text(f"{label}: {vs[key]}", style="yellow" if "within" in vs[key] else "")))
    if seeds["comparison"]:
        told = seeds["comparison"]["told_apart"]
        rows.append(("top two", Text(seeds["comparison"]["message"], style="" if told else "yellow")))
    return rows


def per_rung_text(per_rung: list[dict[str, Any]]) -> str:
    """``epoch 1: knn_top1 0.50, probe_top1 0.71 (8 trials)`` for each rung."""
    parts = []
    for epoch in dict.fromkeys(e["epoch"] for e in per_rung):
        at = [e for e in per_rung if e["epoch"] == epoch]
        shown = ", ".join(f"{e['metric']} {e['spearman']:.2f}" if e["spearman"] is not None else f"{e['metric']} -"
                          for e in at)
        parts.append(f"epoch {epoch}: {shown} ({max(e['n_trials'] for e in at)} trials)")
    return "Spearman with the final objective; " + "; ".join(parts)


def seeds_table(seeds: dict[str, Any], metric: str) -> Table:
    """One row per leader: its value per seed, mean, sd and interval (the rank is by mean)."""
    out = report_table(f"Leaders over seeds: {metric}, ranked by mean ({seeds['confidence']:.0%} t-intervals)")
    for name, justify in (("rank", "right"), ("trial", "left"), ("seeds", "right"), ("values", "left"),
                          ("mean", "right"), ("sd", "right"), ("interval", "right")):
        out.add_column(name, justify=justify, no_wrap=name != "values", overflow="fold")
    for e in seeds["leaders"]:
        ci = f"{fmt_num(e['interval'][0])} to {fmt_num(e['interval'][1])}" if e["interval"] else "-"
        out.add_row(str(e["rank"]), e["trial_id"], str(e["n"]), " ".join(fmt_num(v) for v in e["values"]),
                    fmt_num(e["mean"]), fmt_num(e["sd"]) if e["sd"] is not None else "-", ci)
    return out


def rung_text(rc: dict[str, Any]) -> str:
    if rc["spearman"] is not None:
        return (f"rung {rc['rung_metric']} (epoch {rc['rung_epoch']}) vs final {rc['final_metric']}: "
                f"Spearman {rc['spearman']:.2f} over {rc['n_trials']} trials")
    return rc["message"] or "-"


def best_test_text(best: dict[str, Any]) -> str | None:
    """``test 83.00 (scored once, epoch 3, 10000 queries)``, or None when the trial was not scored."""
    test = best.get("test")
    if test is None:
        return None
    shown = ", ".join(f"{k} {fmt_num(v)}" for k, v in test["metrics"].items()) or "no metrics"
    where = [f"epoch {test['epoch']}"] if test["epoch"] is not None else []
    where += [f"{test['queries']} queries"] if test["queries"] is not None else []
    return f"{test['split']}: {shown} (scored once" + "".join(f", {w}" for w in where) + ")"


def importances(imp: dict[str, Any], width: int) -> Group:
    label = f"Parameter importances ({imp['method']}, Optuna"
    label += f"; {imp['n_trials']} completed trials)" if imp["n_trials"] else ")"
    parts: list[Any] = [Text(label, style="bold")]
    flags = imp.get("flags") or {}
    names = short_names(list(imp["values"] or {}) + [k for k in flags if k not in (imp["values"] or {})])
    if imp["values"] or flags:
        bar_width = max(8, min(40, width - 28))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_column(justify="right", no_wrap=True)
        top = max((imp["values"] or {}).values(), default=0.0) or 1.0
        for key, value in (imp["values"] or {}).items():
            grid.add_row(Text(names[key]), Text(bar(value / top, bar_width), style="blue"), f"{value:.3f}")
        for key, reason in flags.items():
            grid.add_row(Text(names[key]), Text(reason, style="dim"), "-")
        parts.append(grid)
    if imp["values"]:
        parts.append(Text(f"share of the variance of the objective: {imp['objective']}", style="dim"))
    if imp["message"]:
        parts.append(Text(imp["message"], style="dim"))
    return Group(*parts)


def schedules(report: dict[str, Any]) -> Group:
    """Under PBT: each trial's config changes, by the epoch they took effect."""
    every = report["sweep"]["scheduler"].get("perturbation_interval")
    title = "PBT schedules: config changes by epoch" + (f" (perturbation every {every})" if every else "")
    keys = [k for changes in report["schedules"].values() for c in changes for k in c["changes"]]
    names = short_names(list(dict.fromkeys(keys)))
    out = report_table()
    out.add_column("trial", no_wrap=True)
    out.add_column("epoch", justify="right", no_wrap=True)
    out.add_column("changes (old → new)", overflow="fold")
    for trial_id, changes in report["schedules"].items():
        if not changes:
            out.add_row(trial_id, "-", Text("no change", style="dim"))
        for i, c in enumerate(changes):
            text = ", ".join(f"{names[k]} {fmt_num(old)} → {fmt_num(new)}" for k, (old, new) in c["changes"].items())
            out.add_row(trial_id if i == 0 else "", str(c["epoch"]), text)
    return Group(Text(title, style="bold"), out)


def _signed(value: float) -> str:
    return ("+" if value > 0 else "") + fmt_num(value)
