"""Live sweep progress: one compact rich display instead of Ray Tune's periodic tables.

    sweep demo  ━━━━━━━━━━━━━━━━━━━━━━  5/8 trials   running 2 · done 2 · stopped 1 · errored 0
    best knn_top1 81.4 (trial-3f2a, epoch 4)   elapsed 0:04:12

It is a Tune callback (driver side): it hears about every trial start, result, completion and
error, and redraws. When stdout is not a terminal (``ray job logs``, ``kubectl logs``, CI) it
prints one plain line per event instead. Tune pickles its run config (callbacks included) into
the sweep directory, so the rich objects are dropped when pickled.

:class:`StudyPublisher` uploads the Optuna study to the sweep's storage after every trial.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from tune.layout import TRIAL_PREFIX
from tune.report.trial import trial_status


class SweepProgress(Callback):
    """Counts trials by status, tracks the best value so far, and draws it live."""

    def __init__(self, sweep: Any, enabled: bool = True) -> None:  # enabled: live display wanted
        self.name, self.metric, self.mode = sweep.spec.name, sweep.metric, sweep.spec.mode
        self.total, self.max_t = sweep.spec.num_samples, sweep.max_t
        # a live display on a terminal; otherwise (logs, --no-progress) one plain line per event
        self.enabled = enabled and Console().is_terminal
        self.plain = not self.enabled
        self.status: dict[str, str] = {}
        self.iterations: dict[str, int] = {}
        self.best: tuple[float, str, int] | None = None
        self.started = time.time()
        self._live: Live | None = None
        self._progress: Progress | None = None

    # pickling (Tune stores its run config, callbacks included): keep only plain state
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = state["_progress"] = None
        state["enabled"] = state["plain"] = False
        return state

    def __enter__(self) -> "SweepProgress":
        if self.plain:
            self._line(f"sweep {self.name}: {self.total} trials, metric {self.metric} ({self.mode})")
        elif self.enabled:
            self._progress = Progress(TextColumn(f"[bold]sweep {self.name}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("trials"), TimeElapsedColumn())
            self._task = self._progress.add_task("", total=self.total)
            self._live = Live(self._render(), console=Console(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._redraw()
            self._live.__exit__(*exc)
            self._live.console.print()
            self._live = None

    # --- Tune callback hooks -------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.status[trial.trial_id] = "running"
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted((trial.config or {}).items()))
        self._line(f"{TRIAL_PREFIX}{trial.trial_id} started: {params}")
        self._redraw()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.iterations[trial.trial_id] = int(result.get("training_iteration", 0))
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial.trial_id, int(result.get("training_iteration", 0)))
        self._line(f"{TRIAL_PREFIX}{trial.trial_id} epoch {result.get('training_iteration', '?')}: "
                   f"{self.metric} {_fmt(value)}")
        self._redraw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "ERROR")

    def _ended(self, trial: Any, ray_status: str) -> None:
        epochs = self.iterations.get(trial.trial_id, 0)
        self.status[trial.trial_id] = status = trial_status(epochs, self.max_t, ray_status=ray_status)
        self._line(f"{TRIAL_PREFIX}{trial.trial_id} {status.replace('stopped', 'stopped early')} after {epochs} epochs")
        self._redraw()

    def _line(self, text: str) -> None:
        if self.plain:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def note(self, text: str) -> None:
        """A line for the user whatever the display: above the live display, or one plain line."""
        if self._live is not None:
            self._live.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")
        else:
            self._line(text)

    # --- display -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        values = list(self.status.values())
        return {k: values.count(k) for k in ("running", "finished", "stopped", "errored")}

    def _render(self) -> Group:
        c = self.counts()
        line = Text.assemble(
            ("running ", "dim"), (str(c["running"]), "bold cyan"), ("  done ", "dim"), (str(c["finished"]), "bold green"),
            ("  stopped early ", "dim"), (str(c["stopped"]), "bold yellow"),
            ("  errored ", "dim"), (str(c["errored"]), "bold red" if c["errored"] else "bold"))
        if self.best is not None:
            value, trial_id, it = self.best
            best = Text.assemble(("best ", "dim"), (f"{self.metric} {value:.2f}", "bold"),
                                 (f"  (trial-{trial_id}, epoch {it})", "dim"))
        else:
            best = Text(f"best {self.metric}: none yet", style="dim")
        parts: list[Any] = [line, best]
        if self._progress is not None:
            parts.insert(0, self._progress)
        return Group(*parts)

    def _redraw(self) -> None:
        if self._live is None or self._progress is None:
            return
        c = self.counts()
        self._progress.update(self._task, completed=c["finished"] + c["stopped"] + c["errored"])
        self._live.update(self._render())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class StudyPublisher(Callback):
    """Uploads the Optuna study (SQLite on the driver's disk) to the sweep's storage whenever Tune
    added trials (the searcher has just created their Optuna trials, which Tune's saved state
    refers to, even while they still wait for resources) and when a trial ends, so a sweep
    resumed on a fresh head node finds every trial it knows of (``SweepLayout.publish_study``)."""

    def __init__(self, layout: Any) -> None:
        self.layout = layout
        self.published_for = 0  # trials Tune knew of at the last upload

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if len(trials) > self.published_for:
            self.published_for = len(trials)
            self.layout.publish_study()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.layout.publish_study()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.layout.publish_study()
