"""Start a training task: pick its run directory, save its config, run it here or on Ray.

``scaling.workers: 0`` (the default) runs the loop in this process; ``N`` or ``[min, max]``
hands the same loop to Ray Train (``jigclu.ray_train``), which is the only module that
imports Ray.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from jigclu.config import RunConfig, save_config
from jigclu.context import LocalContext, resolve_device
from jigclu.errors import ConfigError, JigcluError

TASKS = ("pretrain", "linear", "semi", "finetune")


def trainer_for(task: str) -> Callable[[Any, LocalContext], dict[str, Any]]:
    """The loop function of a task (imported lazily: torch-heavy modules load on demand)."""
    if task == "pretrain":
        from jigclu.trainers.pretrain import run_pretrain
        return run_pretrain
    if task == "linear":
        from jigclu.trainers.linear import run_linear
        return run_linear
    if task == "semi":
        from jigclu.trainers.semi import run_semi
        return run_semi
    if task == "finetune":
        from jigclu.trainers.finetune import run_finetune
        return run_finetune
    raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def run_dir_for(task: str, cfg: RunConfig) -> Path:
    """``<output_dir>/<name>``; a run without a name gets ``<task>-<timestamp>``."""
    if cfg.name is None:
        cfg.name = f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"name={cfg.name!r} must be a plain name, not a path")
    return Path(cfg.output_dir) / cfg.name


def prepare_run_dir(run_dir: Path, resume: bool) -> bool:
    """Check the run directory against ``--resume``; returns True when this call created it.

    A directory that already holds a checkpoint is never overwritten by a new run: the user
    either resumes it or picks another name.
    """
    ckpt = run_dir / "checkpoints" / "last.pt"
    if ckpt.exists() and not resume:
        raise ConfigError(f"run directory {run_dir} already holds a checkpoint; pass --resume to "
                          f"continue it, or set name=<new name> for a new run")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
    return created


def launch(task: str, cfg: RunConfig, *, resume: bool = False, verbose: bool = False,
           progress: bool = True, address: str | None = None) -> dict[str, Any]:
    """Run ``task`` with ``cfg``; returns the trainer's summary with ``run_dir`` added."""
    trainer = trainer_for(task)
    workers = cfg.scaling.workers
    if workers != 0:
        from jigclu.ray_train import launch_ray  # noqa: PLC0415 - only this path needs Ray

        return launch_ray(task, cfg, resume=resume, verbose=verbose, progress=progress, address=address)
    device = resolve_device(cfg.device)
    run_dir = run_dir_for(task, cfg)
    created = prepare_run_dir(run_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    ctx = LocalContext(run_dir, device=device, resume=resume, progress=progress and cfg.train.progress,
                       verbose=verbose)
    try:
        summary = trainer(cfg, ctx)
    except (JigcluError, KeyboardInterrupt):
        # a run that failed before its first checkpoint leaves nothing behind
        if created and not ctx.checkpoint_path.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    summary["run_dir"] = str(run_dir)
    return summary
