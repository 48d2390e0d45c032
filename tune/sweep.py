"""Run a sweep: Ray Tune + OptunaSearch (TPE, seeded) + ASHA, persisted and resumable.

Layout of a sweep directory ``<output_dir>/<name>/``::

    sweep.yaml          the resolved sweep definition (base config inlined)
    optuna.db           the Optuna study (SQLite through Optuna's RDB storage)
    experiment_state-*  Ray Tune's own state (trials, searcher, scheduler)
    trial-<id>/         one per trial: result.json (one line per epoch), params.json,
                        config.yaml (re-run it with ``jigclu <task> --config``), checkpoints,
                        error.txt when it failed
    train/<trial-id>/   Ray Train run directories of trials that run on Ray Train workers

Each trial runs the trainer loop in its Tune actor (one worker), or, with ``scaling.workers``
>= 2 in the base config (or ``trial_mode: ray_train``), a nested Ray Train job whose reports
reach Tune through ``TuneReportCallback``. Re-running the same sweep (same name) continues it:
finished trials are not re-run, unfinished ones resume from their checkpoints, and the
searcher's state is restored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from jigclu.config import RunConfig, build_config, save_config
from jigclu.context import checkpoint_dir, resolve_device
from jigclu.errors import ConfigError
from jigclu.launch import prepare
from jigclu.ray_train import init_ray, make_trainer, state_from  # also sets Ray's quiet env defaults
from jigclu.runs import RunLayout, jsonable
from jigclu.storage import write_atomic
from jigclu.trainers import run_task
from tune.report.trial import trial_status
from tune.space import Sweep

# Tune's own console tables and headers: our live display replaces them (verbose=0, old engine)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Save the experiment state every second (Tune's default is >= 10 s): a driver killed between
# saves loses the record of trials started since, and a resumed sweep would start them anew.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

from ray import tune  # noqa: E402
from ray.tune import Checkpoint  # noqa: E402


class TuneTrialContext:
    """Run context of an in-process trial: checkpoints and metrics go to Tune."""

    is_main = True

    def __init__(self, trial_dir: Path, device: Any) -> None:
        self.layout, self.device, self.progress = RunLayout(str(trial_dir)), device, False

    def where(self) -> RunLayout:
        return self.layout

    def load_state(self) -> dict[str, Any] | None:
        return state_from(tune.get_checkpoint())

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        metrics = {k: jsonable(v) for k, v in metrics.items()}
        if state is None:
            tune.report(metrics)
            return
        with checkpoint_dir(state, metrics) as directory:
            tune.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def trial_uses_ray_train(sweep: Sweep, cfg: Any) -> bool:
    if sweep.spec.trial_mode == "ray_train":
        return True
    if sweep.spec.trial_mode == "inprocess":
        return False
    workers = cfg.scaling.workers
    return (workers[1] if isinstance(workers, tuple) else workers) >= 2


def run_trial(params: dict[str, Any], sweep_dict: dict[str, Any], sweep_dir: str) -> None:
    """One trial: build its config from the sampled params, save it, run the trainer."""
    from tune.space import Sweep, SweepSpec, parse_param

    spec = SweepSpec.model_validate(sweep_dict)
    sweep = Sweep(spec, sweep_dict["config"], [parse_param(k, v) for k, v in spec.space.items()])
    context = tune.get_context()
    trial_id = context.get_trial_id()
    trial_dir = Path(context.get_trial_dir())
    cfg = sweep.trial_config(params)  # an invalid combination raises ConfigError: the trial errors
    cfg.name = f"{spec.name}-{trial_id}"
    cfg.monitor.every = 1  # the scheduler needs the metric at every report
    cfg = prepare(spec.task, cfg)  # downstream trials adopt their checkpoint's model, as `jigclu linear` does
    save_config(cfg, trial_dir / "config.yaml")
    (trial_dir / "sampled.json").write_text(json.dumps(params, indent=1, sort_keys=True))
    if trial_uses_ray_train(sweep, cfg):
        from ray.tune.integration.ray_train import TuneReportCallback

        trainer = make_trainer(spec.task, cfg, str(Path(sweep_dir) / "train"), callbacks=[TuneReportCallback()])
        trainer.fit()
        return
    cfg.scaling.workers = 0
    run_task(spec.task, cfg, TuneTrialContext(trial_dir, device=resolve_device(cfg.device)))


def sweep_dir_of(sweep: Sweep) -> Path:
    return Path(sweep.spec.output_dir).resolve() / sweep.spec.name


def _optuna_storage(sweep_dir: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}")


def build_tuner(sweep: Sweep, sweep_dir: Path, callbacks: list[Any]) -> tune.Tuner:
    """A fresh Tuner for the sweep (searcher, scheduler, limiter, storage)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    spec = sweep.spec
    searcher = OptunaSearch(space=sweep.define_by_run(), metric=sweep.metric, mode=spec.mode, seed=spec.seed,
                            study_name=spec.name, storage=_optuna_storage(sweep_dir))
    limited = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)
    if spec.scheduler.type == "asha":
        max_t = sweep.max_t
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                  grace_period=min(spec.scheduler.grace_period, max_t),  # short runs
                                  reduction_factor=spec.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        _trainable(sweep, sweep_dir),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=spec.mode, search_alg=limited, scheduler=scheduler,
                                    num_samples=spec.num_samples, time_budget_s=spec.time_budget_s,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(sweep_dir.parent), verbose=0,
                                  callbacks=callbacks, log_to_file=True,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


def _trial_name(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


def _trainable(sweep: Sweep, sweep_dir: Path) -> Any:
    # the base config decides (a space over scaling.workers would only change the nested jobs)
    uses_train = trial_uses_ray_train(sweep, build_config(RunConfig, sweep.base))
    fn = tune.with_parameters(run_trial, sweep_dict=sweep.to_dict(), sweep_dir=str(sweep_dir))
    # A trial that drives a Ray Train job needs almost nothing itself: its workers hold the CPUs.
    resources = {"cpu": 0.01} if uses_train else {"cpu": sweep.spec.resources.cpu, "gpu": sweep.spec.resources.gpu}
    return tune.with_resources(fn, resources)


def save_definition(sweep: Sweep, sweep_dir: Path) -> None:
    """Write sweep.yaml; refuse to continue a sweep directory defined differently."""
    path = sweep_dir / "sweep.yaml"
    new = sweep.to_dict()
    if path.exists():
        old = yaml.safe_load(path.read_text())
        for key in ("space", "config", "metric", "mode", "task", "seed"):
            if old.get(key) != new.get(key):
                raise ConfigError(f"sweep '{sweep.spec.name}' already exists in {sweep_dir} with a different "
                                  f"'{key}'; choose another name=... or delete that directory")
    write_atomic(path, yaml.safe_dump(new, sort_keys=False))


def set_aside_torn_state(sweep_dir: Path) -> list[str]:
    """Rename Tune state files that a killed driver left empty or half-written.

    Tune writes its experiment and searcher state in place; a driver killed mid-write leaves a
    truncated newest file, and restoring from it fails (Tune then silently starts the sweep
    over). Setting it aside (``*.torn``, nothing deleted) lets the restore use the previous one.
    """
    import pickle

    torn = []
    for pattern in ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl"):
        for path in sweep_dir.glob(pattern):
            try:
                with open(path, "rb") as fh:
                    json.load(fh) if path.suffix == ".json" else pickle.load(fh)
            except Exception:  # empty, truncated or otherwise unreadable
                path.rename(path.with_name(path.name + ".torn"))
                torn.append(path.name)
    return torn


def set_aside_orphans(sweep_dir: Path, grid: Any) -> None:
    """Hide trial directories Tune no longer knows: trials started after the last state save of
    a killed driver, which the resumed sweep ran again under a new id (``.orphan-trial-*``)."""
    known = {Path(r.path).name for r in grid if getattr(r, "path", None)}
    if not known:
        return
    for directory in sweep_dir.glob("trial-*"):
        if directory.name not in known:
            directory.rename(sweep_dir / f".orphan-{directory.name}")


def run_sweep(sweep: Sweep, *, resume: bool = False, verbose: bool = False, progress: bool = True,
              address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Run (or continue) a sweep; returns a small summary (the report reads the directory)."""
    import optuna

    from tune.live import SweepProgress

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    sweep_dir = sweep_dir_of(sweep)
    existed = (sweep_dir / "sweep.yaml").exists()
    save_definition(sweep, sweep_dir)
    init_ray(address, verbose, num_cpus=num_cpus)
    live = SweepProgress(sweep, enabled=progress)
    started = time.time()
    if existed:
        set_aside_torn_state(sweep_dir)
    if existed and tune.Tuner.can_restore(str(sweep_dir)):
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=_trainable(sweep, sweep_dir),
                                   resume_unfinished=True, resume_errored=False, restart_errored=False)
        # Tune restores the searcher (and its Optuna study) from its experiment state
        tuner._local_tuner._run_config.callbacks = [live]  # restored tuners keep no callbacks
    else:
        tuner = build_tuner(sweep, sweep_dir, [live])
    with live:
        grid = tuner.fit()
    if existed:
        set_aside_orphans(sweep_dir, grid)
    return {"sweep_dir": str(sweep_dir), "resumed": existed, "wall_s": time.time() - started,
            "trials": len(grid), **status_counts(grid, sweep)}


def status_counts(grid: Any, sweep: Sweep) -> dict[str, int]:
    """Trials by outcome: finished (ran every epoch), stopped early (by the scheduler), errored."""
    max_t = sweep.max_t
    counts = {"finished": 0, "stopped": 0, "errored": 0}
    for result in grid:  # Ray ended each trial: with an error, or terminated (done, stopped, out of time)
        epochs = (result.metrics or {}).get("training_iteration", 0)
        counts[trial_status(epochs, max_t, ray_status="ERROR" if result.error is not None else "TERMINATED")] += 1
    return counts


__all__ = ["run_sweep", "run_trial", "sweep_dir_of", "TuneTrialContext"]
