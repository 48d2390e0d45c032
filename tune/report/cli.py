"""``jigclu report SWEEP_DIR``: parse the options, print the report (exit codes: docs/report.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.text import Text

from jigclu.errors import JigcluError
from tune.report.data import load_sweep_dir
from tune.report.export import export_parquet, require_matplotlib, to_text, write_plots
from tune.report.render import render
from tune.report.summary import DEFAULT_TOP, EXIT_UNREADABLE, build_report
from tune.report.winner import parse_reference


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", metavar="SWEEP_DIR",
                   help="a sweep directory: <output_dir>/<name>; SWEEP_DIR/trial-<id> or SWEEP_DIR@<id> end the "
                        "report with the commands for that trial instead of the winner (SWEEP_DIR@best)")
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
        require_matplotlib()
    ref = parse_reference(args.sweep_dir)  # a trial directory or SWEEP@<id>: the sweep's report, acting on it
    sweep_dir = ref.sweep if ref is not None else args.sweep_dir
    sweep = load_sweep_dir(sweep_dir)
    report = build_report(sweep, top=args.top, metric=args.metric, mode=args.mode,
                          importances=not args.no_importance, act_on=ref.trial if ref else None, shown_as=sweep_dir)
    console = console or Console()
    side: list[str] = []
    if args.export:
        rows = export_parquet(sweep, args.export)
        side.append(f"exported {rows} trial-epoch rows to {args.export}")
    if args.plots:
        written = write_plots(report, args.plots)
        side.append(f"plots: {', '.join(written)}" if written else
                    "plots: nothing to plot yet (no trial has reported the metric)")
    if args.format == "table":
        render(report, console)
        for line in side:
            console.print(Text(line, style="dim"), soft_wrap=True)
    else:
        console.file.write(to_text(report, args.format))
        console.file.flush()
        for line in report["messages"] + side:  # stdout stays parseable; people still see these
            print(line, file=sys.stderr)
    return int(report["exit_code"])
