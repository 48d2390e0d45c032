"""Training progress: a rich bar on a terminal (steps, images/s, ETA, the latest loss), else one
plain line per event (the run's start, each epoch), which is what a log file or a RayJob shows.

``Display`` says which: True, a bar on a terminal and plain lines elsewhere; ``"lines"`` (the CLI's
``--no-progress``), plain lines always; False, nothing (non-main ranks, sweep trials, tests,
``train.progress=false``).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Literal, TypeAlias

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


Display: TypeAlias = bool | Literal["lines"]


class _RateColumn(ProgressColumn):
    """Items per second, in the unit the task names (img/s)."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        return Text(f"{rate:,.0f} {task.fields.get('unit', 'it')}/s" if rate else "-", style="cyan")


class TrainProgress:
    """``with TrainProgress(total_steps, ...) as bar: bar.advance(images=n, loss=...)``."""

    def __init__(self, total_steps: int, description: str = "train", enabled: Display = True,
                 unit: str = "img", console: Console | None = None, completed: int = 0) -> None:
        self.enabled = bool(enabled)
        self.console = console or Console(soft_wrap=True)  # a log line is never wrapped at 80 columns
        bar = self.enabled and enabled != "lines" and self.console.is_terminal
        self._images = 0
        self._t0 = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            _RateColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not bar, transient=False,
        )
        self._task = self._progress.add_task(description, total=total_steps, completed=completed,
                                             info="", rate=None, unit=unit)

    def __enter__(self) -> "TrainProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def advance(self, images: int = 0, description: str | None = None, **info: float) -> None:
        self._images += images
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        text = "  ".join(f"{k} {v:.3f}" for k, v in info.items())
        kwargs = {"description": description} if description else {}
        self._progress.update(self._task, advance=1, info=text, rate=self._images / elapsed, **kwargs)

    def skip(self, steps: int) -> None:
        """Count ``steps`` not taken as done: an epoch that ended on its time (``train.epoch_s``)."""
        self._progress.update(self._task, advance=max(steps, 0))

    def log(self, message: str) -> None:
        """Print a line (above the bar, if there is one): the start, each epoch's summary."""
        if self.enabled:
            self.console.print(message)
