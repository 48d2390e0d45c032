"""Training tasks, each a set of hooks on the one loop (:mod:`jigclu.trainers.loop`).

:data:`TASKS` maps a task name to its :class:`~jigclu.trainers.loop.Task` class; the classes
load on demand (torch-heavy modules import only when a task runs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jigclu.errors import ConfigError

if TYPE_CHECKING:
    from jigclu.config import RunConfig
    from jigclu.context import RunContext
    from jigclu.trainers.loop import Task

TASKS: dict[str, str] = {
    "pretrain": "jigclu.trainers.pretrain:PretrainTask",
    "linear": "jigclu.trainers.classify:LinearTask",
    "semi": "jigclu.trainers.semi:SemiTask",
    "finetune": "jigclu.trainers.classify:FinetuneTask",
}
DOWNSTREAM = ("linear", "semi", "finetune")


def task_class(name: str) -> "type[Task]":
    """The :class:`Task` subclass of ``name``; an unknown name is one :class:`ConfigError`."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def run_task(name: str, cfg: "RunConfig", ctx: "RunContext") -> dict[str, Any]:
    """Run task ``name`` on the one loop; returns its summary."""
    from jigclu.trainers.loop import run

    return run(task_class(name)(), cfg, ctx)


def epoch_line(name: str, metrics: dict[str, Any], cfg: "RunConfig") -> str:
    """The task's one-line epoch summary (rich markup)."""
    return task_class(name).epoch_line(metrics, cfg)


__all__ = ["TASKS", "DOWNSTREAM", "task_class", "run_task", "epoch_line"]
