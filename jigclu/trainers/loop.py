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

import sys
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jigclu import dist, preempt
from jigclu.config import RunConfig
from jigclu.context import RunContext
from jigclu.data.loader import ShardSampler
from jigclu.errors import ConfigError, TrainingError
from jigclu.preempt import Preempted
from jigclu.progress import TrainProgress
from jigclu.values import jsonable
from jigclu.trainers.common import rng_state, seed_everything, set_rng_state

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
    steps_per_epoch: int  # the most an epoch takes: one pass, or train.steps_per_epoch
    epoch_s: float | None = None  # train.epoch_s: an epoch also ends once it has trained this many seconds

    @abstractmethod
    def setup(self, cfg: RunConfig, ctx: RunContext, state: dict[str, Any] | None) -> None:
        """Build data, model, optimizer and scheduler (and load ``state``'s model weights)."""

    def on_start(self, ctx: RunContext) -> None:
        """Main worker, once everything is validated, just before the first step."""

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Before epoch ``epoch``; on a mid-epoch resume the sampler skips the ``skip`` samples of the
        epoch's global order that the steps before the stop drew, so the rest of the epoch sees the rest."""
        self.sampler.set_epoch(epoch, skip)

    def samples_drawn(self, skip: int, steps: int) -> int | None:
        """Samples of the epoch's global order drawn once ``steps`` more steps followed the first
        ``skip``, all workers together (world-size independent: a resume may be on another world
        size); None when the loader cannot seek (a stream)."""
        if not isinstance(self.sampler, ShardSampler):
            return None
        per_step = self.loader.batch_size * dist.world_size()  # type: ignore[attr-defined]
        return min(skip + steps * per_step, self.sampler.dataset_len)

    @abstractmethod
    def step(self, batch: Any, epoch: int, step: int) -> StepResult | None:
        """One step's loss; None skips the batch (the same on every worker)."""

    def after_step(self, elapsed: float) -> None:
        """After ``optimizer.step()`` (per-step schedules); ``elapsed``: seconds the epoch in flight
        has trained so far (a resumed epoch counts its seconds before the stop)."""

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
    """Train ``task`` to its last epoch, resuming from ``ctx``'s state; returns a summary.

    A stop request (SIGTERM, :mod:`jigclu.preempt`) is honoured after the step in flight: a
    mid-epoch checkpoint records the position, then :class:`~jigclu.preempt.Preempted` is raised.
    """
    seed_everything(cfg.seed)
    state = ctx.load_state()
    started_from = resumed_from(state)  # said in the first epoch's metrics: where this run (re)started
    if state is not None:
        check_resume(state, cfg, task.name, task.resume_keys)
    task.setup(cfg, ctx, state)
    start_epoch, start_step = resume_position(state)
    saved: dict[str, Any] = state or {}
    global_step = int(state.get("global_step") or 0) if state is not None else 0
    if state is not None:
        configured = configured_hyperparameters(task.optimizer, task.scheduler)
        task.optimizer.load_state_dict(state["optimizer"])
        task.scheduler.load_state_dict(state["scheduler"])
        apply_configured(task.optimizer, task.scheduler, configured)
        if state.get("rng") and not start_step:  # mid-epoch: once the epoch's iterator exists (below)
            set_rng_state(state["rng"])
    if ctx.is_main:
        task.on_start(ctx)
    gate = StopGate(ctx, cfg.train.checkpoint_every_s)
    steps = task.steps_per_epoch

    summary: dict[str, Any] = {"epochs_run": 0, "start_epoch": start_epoch, "start_step": start_step, "last": {}}
    with TrainProgress(steps * task.epochs, task.name, enabled=ctx.progress if ctx.is_main else False,
                       completed=start_epoch * steps + start_step) as bar:
        bar.log(start_line(task.name, cfg.name, task.epochs, steps, start_epoch, start_step))
        if gate.poll()[0]:  # asked during start-up (a Ray Train worker; a plain process stopped at once)
            raise Preempted(f"terminated ({preempt.requested()}) before the first step: nothing new to save")
        preempt.training_started()
        for epoch in range(start_epoch, task.epochs):
            first = start_step if epoch == start_epoch else 0  # steps of this epoch already trained
            # what the steps before a stop drew, counted when they drew it (the world size may differ now)
            skip = int(saved["position"].get("samples") or 0) if first else 0
            task.start_epoch(epoch, skip)
            sums = resumed_sums(saved) if first else {}
            t0 = time.perf_counter() - (float(saved.get("epoch_seconds") or 0.0) if first else 0.0)
            batches = iter(task.loader)  # a DataLoader draws its base seed from the global RNG here
            if first and saved.get("rng"):
                set_rng_state(saved["rng"])  # as it was after that step, as if uninterrupted
            for step, batch in zip(range(first, steps), batches):
                result = task.step(batch, epoch, step)
                if result is not None:
                    loss, stats, images = result
                    if not torch.isfinite(loss):
                        raise TrainingError(f"loss became {loss.item()} at epoch {epoch} step {step}; "
                                            f"{task.nan_hint} (no checkpoint written for this epoch)")
                    task.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    task.optimizer.step()
                    task.after_step(time.perf_counter() - t0)
                    global_step += 1
                    for key, value in stats.items():
                        sums[key] = sums.get(key, 0) + value
                    bar.advance(images=images, description=f"{task.name} {epoch + 1}/{task.epochs}",
                                loss=loss.item())
                stop, due = gate.poll()
                if stop or (due and step + 1 < steps):  # a due one at the epoch's end: the epoch's own follows
                    position = {"epoch": epoch, "step": step + 1, "samples": task.samples_drawn(skip, step + 1 - first)}
                    sums_of_all = dist.all_gather_objects({k: float(v) for k, v in sums.items()})
                    gate.save(checkpoint_state(task, epoch - 1, global_step, position=position, epoch_sums=sums_of_all,
                                               epoch_seconds=time.perf_counter() - t0))
                    if stop:
                        raise Preempted(preempt.stopped_message(position, task.epochs, steps))
                if task.epoch_s is not None and step + 1 < steps and out_of_time(task.epoch_s, t0):
                    bar.skip(steps - step - 1)
                    break
            metrics = task.end_epoch(epoch, sums, time.perf_counter() - t0)
            metrics.update(epoch=epoch, step=global_step, world_size=dist.world_size(),
                           epoch_time_s=time.perf_counter() - t0, time=time.time(), peak_rss_mib=peak_rss_mib())
            if first:
                metrics["resumed_at_step"] = first  # this epoch was stopped and resumed after that step
            metrics.update(started_from)
            started_from = {}
            bar.log(task.epoch_line(metrics, task.cfg))
            # a lost metrics line is restored from the checkpoint ("metrics")
            ctx.report(metrics, checkpoint_state(task, epoch, global_step,
                                                 metrics={k: jsonable(v) for k, v in metrics.items()}))
            gate.saved()
            summary["epochs_run"] += 1
            summary["last"] = metrics
            if epoch + 1 < task.epochs and gate.poll()[0]:
                raise Preempted(preempt.stopped_message({"epoch": epoch + 1, "step": 0}, task.epochs, steps))
    summary.update(task.summary())
    return summary


def out_of_time(epoch_s: float, t0: float) -> bool:
    """Has the epoch that started at ``t0`` trained ``epoch_s`` seconds on any worker? Every worker
    answers the same, at the same step (one all-reduce), so the group ends the epoch together."""
    return dist.any_true([time.perf_counter() - t0 >= epoch_s])[0]


def checkpoint_state(task: Task, epoch: int, global_step: int, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict: ``epoch`` is the last *finished* epoch (-1: none yet), also in a
    mid-epoch checkpoint, whose ``position`` says where in the next epoch it stopped."""
    return {"task": task.name, "model": task.model.state_dict(), "optimizer": task.optimizer.state_dict(),
            "scheduler": task.scheduler.state_dict(), "epoch": epoch, "global_step": global_step,
            "config": task.cfg.model_dump(mode="json"), "world_size": dist.world_size(), "rng": rng_state(),
            **task.extra_state(), **extra}


def peak_rss_mib() -> float:
    """The largest peak resident memory of any worker so far (MiB): what a worker of this run needs."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    mib = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return max(dist.all_gather_objects(round(mib, 1)))


def start_line(task: str, name: str, epochs: int, steps: int, start_epoch: int, start_step: int) -> str:
    """The run's first line: what it trains and where it starts."""
    where = (f"resumed at epoch {start_epoch + 1} step {start_step + 1}" if start_step else
             f"resumed at epoch {start_epoch + 1}" if start_epoch else "from the start")
    return f"{task} run {name}: {epochs} epochs of {steps} steps, {where}"


def resumed_from(state: dict[str, Any] | None) -> dict[str, Any]:
    """The first epoch after loading ``state``: which finished epoch it continues and a checksum of the
    weights it loaded (:func:`weights_l1`), so a resume, or a PBT trial exploiting another trial's
    checkpoint, shows in the metrics what it started from."""
    if state is None:
        return {}
    return {"resumed_from_epoch": int(state["epoch"]), "resumed_weights_l1": weights_l1(state["model"])}


def weights_l1(model_state: dict[str, Any]) -> float:
    """Sum of the absolute values of a state dict's floating-point tensors (float64): a checksum that
    tells two models' weights apart."""
    return float(sum(t.detach().double().abs().sum() for t in model_state.values()
                     if torch.is_tensor(t) and t.is_floating_point()))


def resume_position(state: dict[str, Any] | None) -> tuple[int, int]:
    """``(epoch, steps of it already trained)`` to continue from."""
    if state is None:
        return 0, 0
    position = state.get("position")
    if position:
        return int(position["epoch"]), int(position["step"])
    return int(state["epoch"]) + 1, 0


def resumed_sums(state: dict[str, Any] | None) -> dict[str, Any]:
    """This worker's share of the stopped epoch's sums. The checkpoint holds every rank's; when the
    world size changed, rank ``r`` takes those of the old ranks ``r, r + W, ...``, so the totals
    the tasks all-reduce are kept exactly."""
    parts = (state or {}).get("epoch_sums") or []
    world, rank = dist.world_size(), dist.rank()
    out: dict[str, Any] = {}
    for i, part in enumerate(parts):
        if i % world == rank:
            for key, value in part.items():
                out[key] = out.get(key, 0.0) + value
    return out


class StopGate:
    """After every step: stop (SIGTERM) and/or a periodic checkpoint (``train.checkpoint_every_s``)?

    Every worker answers the same, at the same step: the flags are all-reduced (one small
    collective per step, only when ``torch.distributed`` runs), so one SIGTERMed worker stops the
    whole group there. A context that keeps no mid-epoch checkpoints (a sweep's in-process trial)
    turns both off.
    """

    def __init__(self, ctx: RunContext, every_s: float | None) -> None:
        self.write = getattr(ctx, "checkpoint_mid_epoch", None)
        self.every_s = every_s
        self.last = time.monotonic()

    def poll(self) -> tuple[bool, bool]:
        """``(stop, a periodic checkpoint is due)``, agreed by every worker."""
        if self.write is None:
            return False, False
        due = self.every_s is not None and time.monotonic() - self.last >= self.every_s
        stop, due = dist.any_true([preempt.requested() is not None, due])
        return stop, due

    def save(self, state: dict[str, Any]) -> None:
        self.write(state)  # type: ignore[misc]
        self.saved()

    def saved(self) -> None:
        self.last = time.monotonic()


def check_resume(state: dict[str, Any], cfg: RunConfig, task: str, keys: tuple[str, ...]) -> None:
    """Refuse to resume a checkpoint of another task, or one whose ``keys`` differ from ``cfg``.

    A key is ``section`` (every key of it), ``section.key`` or a top-level setting (``method``).
    """
    if state.get("task") not in (None, task):
        raise ConfigError(f"cannot resume: the run directory holds a {state.get('task')} run, not {task}")
    saved, now = state.get("config") or {}, cfg.model_dump(mode="json")
    for key in keys:
        section, _, sub = key.partition(".")
        before, after = saved.get(section), now[section]
        if not isinstance(after, dict):  # a top-level setting; a checkpoint from before it existed holds none
            if section in saved and before != after:
                raise ConfigError(f"cannot resume: {section} differs from the checkpoint ({before!r} there, "
                                  f"{after!r} now)")
            continue
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


__all__ = ["Task", "StepResult", "run", "check_resume", "checkpoint_state", "resume_position", "StopGate", "wrap_ddp",
           "apply_configured", "configured_hyperparameters", "resumed_from", "weights_l1"]
