"""The one training loop; a task adds only its model, its step and its metrics.

Shaped like solo-learn's ``BaseMethod``: seeding, resume, the epoch/step loop, the progress
bar, the NaN check, the optimiser step, the per-epoch checkpoint and ``ctx.report`` live here
once. A task (:class:`Task`) builds its data, model, optimiser and scheduler in ``setup``,
computes one step's loss in ``step`` and turns an epoch's sums into metrics in ``end_epoch``.
Pretraining (``jigclu.trainers.pretrain``) and the downstream classifiers
(``jigclu.trainers.classify``) are such tasks; ``jigclu.trainers.run_task`` runs one by name.

The loop knows nothing of Ray: under Ray Train the context reports through ``ray.train`` and
``torch.distributed`` is initialised, which :func:`wrap_ddp` and the tasks' all-reduces use.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jigclu import dist
from jigclu.config import RunConfig
from jigclu.context import RunContext
from jigclu.errors import ConfigError, TrainingError
from jigclu.progress import TrainProgress
from jigclu.runs import jsonable
from jigclu.trainers.common import seed_everything

StepResult = tuple[Tensor, dict[str, Any], int]
"""``(loss, sums to accumulate over the epoch, images this step across all workers)``."""


class Task(ABC):
    """Hooks of one training task. ``setup`` must set every attribute annotated below; the four
    abstract hooks are what a task must write, the rest have defaults."""

    name: ClassVar[str]
    resume_keys: ClassVar[tuple[str, ...]] = ("model.arch", "model.width")  # must match to resume
    nan_hint: ClassVar[str] = "try a lower learning rate"

    cfg: RunConfig
    model: nn.Module  # unwrapped: what the checkpoint holds
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Iterable[Any]
    sampler: Any  # has set_epoch(epoch)
    epochs: int
    steps_per_epoch: int

    @abstractmethod
    def setup(self, cfg: RunConfig, ctx: RunContext, state: dict[str, Any] | None) -> None:
        """Build data, model, optimizer and scheduler (and load ``state``'s model weights)."""

    def on_start(self, ctx: RunContext) -> None:
        """Main worker, once everything is validated, just before the first step."""

    def start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @abstractmethod
    def step(self, batch: Any, epoch: int, step: int) -> StepResult | None:
        """One step's loss; None skips the batch (the same on every worker)."""

    def after_step(self) -> None:
        """After ``optimizer.step()`` (per-step schedules)."""

    @abstractmethod
    def end_epoch(self, epoch: int, sums: dict[str, Any], seconds: float) -> dict[str, Any]:
        """The epoch's metrics from its accumulated sums (evaluation included)."""

    def extra_state(self) -> dict[str, Any]:
        """Task-specific entries of the checkpoint (best metric so far, label subset, ...)."""
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    @classmethod
    @abstractmethod
    def epoch_line(cls, metrics: dict[str, Any], cfg: RunConfig) -> str:
        """One readable line per epoch (also printed by the Ray driver's progress display)."""


def run(task: Task, cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Train ``task`` to its last epoch, resuming from ``ctx``'s state; returns a summary."""
    seed_everything(cfg.seed)
    state = ctx.load_state()
    if state is not None:
        check_resume(state, cfg, task.name, task.resume_keys)
    task.setup(cfg, ctx, state)
    start_epoch = state["epoch"] + 1 if state is not None else 0
    global_step = int(state.get("global_step") or 0) if state is not None else 0
    if state is not None:
        configured = configured_hyperparameters(task.optimizer, task.scheduler)
        task.optimizer.load_state_dict(state["optimizer"])
        task.scheduler.load_state_dict(state["scheduler"])
        apply_configured(task.optimizer, task.scheduler, configured)
    if ctx.is_main:
        task.on_start(ctx)

    summary: dict[str, Any] = {"epochs_run": 0, "start_epoch": start_epoch, "last": {}}
    with TrainProgress(task.steps_per_epoch * task.epochs, task.name, enabled=ctx.progress and ctx.is_main,
                       completed=start_epoch * task.steps_per_epoch) as bar:
        for epoch in range(start_epoch, task.epochs):
            task.start_epoch(epoch)
            sums: dict[str, Any] = {}
            t0 = time.perf_counter()
            for step, batch in zip(range(task.steps_per_epoch), task.loader):
                result = task.step(batch, epoch, step)
                if result is None:
                    continue
                loss, stats, images = result
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at epoch {epoch} step {step}; "
                                        f"{task.nan_hint} (no checkpoint written for this epoch)")
                task.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                task.optimizer.step()
                task.after_step()
                global_step += 1
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0) + value
                bar.advance(images=images, description=f"{task.name} {epoch + 1}/{task.epochs}", loss=loss.item())
            metrics = task.end_epoch(epoch, sums, time.perf_counter() - t0)
            metrics.update(epoch=epoch, step=global_step, world_size=dist.world_size(),
                           epoch_time_s=time.perf_counter() - t0, time=time.time())
            bar.log(task.epoch_line(metrics, task.cfg))
            checkpoint = {
                "task": task.name, "model": task.model.state_dict(), "optimizer": task.optimizer.state_dict(),
                "scheduler": task.scheduler.state_dict(), "epoch": epoch, "global_step": global_step,
                "config": task.cfg.model_dump(mode="json"), "world_size": dist.world_size(), **task.extra_state(),
                "metrics": {k: jsonable(v) for k, v in metrics.items()},  # a lost metrics line is restored from it
            }
            ctx.report(metrics, checkpoint)
            summary["epochs_run"] += 1
            summary["last"] = metrics
    summary.update(task.summary())
    return summary


def check_resume(state: dict[str, Any], cfg: RunConfig, task: str, keys: tuple[str, ...]) -> None:
    """Refuse to resume a checkpoint of another task, or one whose ``keys`` differ from ``cfg``.

    A key is ``section`` (every key of it) or ``section.key``.
    """
    if state.get("task") not in (None, task):
        raise ConfigError(f"cannot resume: the run directory holds a {state.get('task')} run, not {task}")
    saved, now = state.get("config") or {}, cfg.model_dump(mode="json")
    for key in keys:
        section, _, sub = key.partition(".")
        before, after = saved.get(section), now[section]
        if not isinstance(before, dict):
            continue
        for k in [sub] if sub else list(after):
            if k in before and before[k] != after[k]:
                raise ConfigError(f"cannot resume: {section}.{k} differs from the checkpoint "
                                  f"({before[k]!r} there, {after[k]!r} now)")


def configured_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """What the config asks of the optimiser (each group's hyper-parameters, the schedule's base lrs),
    read before a checkpoint's optimiser state is loaded over it."""
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in optimizer.param_groups]
    return {"groups": groups, "base_lrs": list(getattr(scheduler, "base_lrs", []))}


def apply_configured(optimizer: torch.optim.Optimizer, scheduler: Any, configured: dict[str, Any]) -> None:
    """After loading a checkpoint's optimiser and scheduler: keep their state (momentum buffers, the
    step count, where the schedule is) but the config's values (base lr, momentum, weight decay).

    A resumed run whose config changed, and a PBT trial restored from another trial's checkpoint
    with mutated values (ray-project/ray#36660), train with the new values, not the checkpoint's:
    the lr keeps its position in the schedule, rescaled from the old base lr to the new one.
    """
    old_base = list(getattr(scheduler, "base_lrs", []))
    new_base = configured["base_lrs"]
    for i, (group, hyper) in enumerate(zip(optimizer.param_groups, configured["groups"])):
        group.update(hyper)
        if i < len(old_base) and i < len(new_base) and old_base[i] > 0:
            group["lr"] *= new_base[i] / old_base[i]
            group["initial_lr"] = new_base[i]
    if new_base and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = list(new_base)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when ``torch.distributed`` runs, else as it is."""
    if not dist.is_distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


__all__ = ["Task", "StepResult", "run", "check_resume", "wrap_ddp", "apply_configured", "configured_hyperparameters"]
