"""``jigclu report SWEEP_DIR``: what a sweep found, read from its directory.

    jigclu report sweeps/pretrain_digits                      # the rich terminal report
    jigclu report sweeps/pretrain_digits --top 3 --format json  # the same content for scripts
    jigclu report sweeps/pretrain_digits --export trials.parquet --plots plots/

The report: a header (search, scheduler, trials by status, compute and wall-clock), the top
trials by their *best* value of the metric (with a learning-curve sparkline) beside their test
score when the sweep scored one, the errored, early-stopped and collapsed trials with the reason,
parameter importances (fANOVA on the trials' own results, with flags for parameters sampled at
one value), PBT schedules, and the best trial's resolved config with the command that re-runs
it. The header says what the numbers are worth: the split trials were selected on, the
random-init baseline, the spread, and whether ASHA's first rung predicted the final objective.
docs/report.md documents it, the JSON and Parquet schemas and the exit codes (0 ok, 2
unreadable, 3 no results yet, 4 no success).

One concern a module, each importing only those before it:

- :mod:`tune.report.trial`: one trial (:class:`Trial`) and the one trial-status rule,
  :func:`trial_status`, which the live display and ``tune.sweep`` use too;
- :mod:`tune.report.data`: the sweep directory read into :class:`SweepData` (no Ray);
- :mod:`tune.report.science`: selection split and test scores, margins, the first rung's
  Spearman correlation, PBT schedules;
- :mod:`tune.report.importance`: fANOVA importances from the trials' results, with flags;
- :mod:`tune.report.checkpoints`: which kept checkpoint of a trial holds the value it is ranked by;
- :mod:`tune.report.act`: the report's last section, that checkpoint of the winner (or of a trial
  named) and the commands that evaluate and export it;
- :mod:`tune.report.summary`: the report as one JSON-ready dict (:func:`build_report`), which
  every output reads, so they always say the same thing;
- :mod:`tune.report.fmt`: the table style and text formatters the renderers share;
- :mod:`tune.report.render_science`: the renderables of the science sections;
- :mod:`tune.report.render`: the rich tables and panels (``render.render(report, console)``);
- :mod:`tune.report.export`: JSON / YAML text, the Parquet export, the plots;
- :mod:`tune.report.winner`: ``SWEEP@best``, ``SWEEP@<id>`` and trial directories as checkpoint
  files, for ``export``, ``knn``, ``eval.pretrained=`` (through ``jigclu.cli``) and ``report``;
- :mod:`tune.report.cli`: ``jigclu report``'s options and printing.
"""

from tune.report.cli import add_arguments, add_cli, main, run
from tune.report.data import SweepData, SweepDirError, error_reason, load_sweep_dir, saved_max_t
from tune.report.export import PARQUET_SCHEMA, export_parquet, to_text, write_plots
from tune.report.fmt import SPARK, SPARK_MAX, bar, fmt_duration, fmt_num, short_names, sparkline
from tune.report.importance import param_importances
from tune.report.render import STATUS_STYLES
from tune.report.science import average_ranks, spearman
from tune.report.summary import (DEFAULT_TOP, EXIT_NO_RESULTS, EXIT_NO_SUCCESS, EXIT_OK, EXIT_UNREADABLE, SCHEMA,
                                 build_report, guess_mode)
from tune.report.trial import STATUS_LABELS, STATUSES, Trial, trial_status

__all__ = ["add_arguments", "add_cli", "main", "run", "STATUS_LABELS", "STATUSES", "SweepData", "SweepDirError",
           "Trial", "error_reason", "load_sweep_dir", "saved_max_t", "trial_status", "PARQUET_SCHEMA",
           "export_parquet", "to_text", "write_plots", "SPARK", "SPARK_MAX", "STATUS_STYLES", "bar", "fmt_duration",
           "fmt_num", "short_names", "sparkline", "DEFAULT_TOP", "EXIT_NO_RESULTS", "EXIT_NO_SUCCESS",
           "EXIT_OK", "EXIT_UNREADABLE", "SCHEMA", "build_report", "guess_mode", "param_importances", "average_ranks",
           "spearman"]
