"""The report for scripts and files: JSON / YAML text, the Parquet export of every trial-epoch,
and PNG plots (schemas: docs/report.md). Files are written atomically through
:mod:`jigclu.storage`, so a reader never sees half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from jigclu import storage
from jigclu.errors import JigcluError
from jigclu.storage import StorageError
from tune.report.data import SweepData, as_given

PARQUET_SCHEMA = "jigclu-trials/1"
PARQUET_BASE = ("sweep", "trial_id", "status", "epoch", "time_total_s")


def to_text(report: dict[str, Any], fmt: str) -> str:
    """The report as a ``json`` or ``yaml`` document (ending in one newline)."""
    text = json.dumps(report, indent=2) if fmt == "json" else \
        yaml.safe_dump(report, sort_keys=False, allow_unicode=True, width=100)
    return text.rstrip("\n") + "\n"


def _write(location: str | Path, write: Callable[[str], Any], suffix: str) -> None:
    try:
        storage.write_atomic_with(location, write, suffix=suffix)
    except StorageError as exc:
        raise JigcluError(f"report: {exc}") from None


# --- Parquet export -------------------------------------------------------------------------

def export_parquet(sweep: SweepData, path: str | Path) -> int:
    """Every trial's per-epoch results, its parameters and status, one row per trial-epoch
    (schema: docs/report.md); written atomically. Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    _write(path, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
    return len(rows)


# --- plots ----------------------------------------------------------------------------------

def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise JigcluError("report: --plots needs matplotlib, which is not installed "
                          "(pip install 'jigclu[plots]')") from None


def write_plots(report: dict[str, Any], directory: str | Path) -> list[str]:
    """PNG plots of the top trials' learning curves and of the parameter importances; returns
    the files written (as ``directory/<name>.png``)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    local = storage.local_path(directory)
    if local is not None:
        try:
            local.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JigcluError(f"report: cannot create {as_given(directory)}: {exc.strerror or exc}") from None
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
        written.append(_save(fig, directory, "learning_curves.png"))
        plt.close(fig)
    values = report["importances"]["values"]
    if values:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(values)), dpi=120)
        keys = list(values)[::-1]
        ax.barh(keys, [values[k] for k in keys], color="tab:blue")
        ax.set_xlabel("importance (fANOVA)")
        ax.set_title(f"sweep {name}: parameter importances")
        fig.tight_layout()
        written.append(_save(fig, directory, "importances.png"))
        plt.close(fig)
    return written


def _save(fig: Any, directory: str | Path, name: str) -> str:
    path = as_given(directory, name)
    _write(path, fig.savefig, suffix=".png")
    return path
