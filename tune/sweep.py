"""Run a sweep: Ray Tune + OptunaSearch (TPE, seeded) + ASHA, persisted and resumable.

A sweep lives at ``<storage or output_dir>/<name>`` (a local directory or an ``s3://`` /
``gs://`` prefix; :class:`tune.layout.SweepLayout` says what is where): Tune's experiment
state, every trial's results and checkpoints, the nested Ray Train runs and the Optuna study
all go there, so a sweep can be resumed and reported from its storage URI alone.

Each trial runs the trainer loop in its Tune actor (one worker), or, with ``scaling.workers``
>= 2 in the base config (or ``trial_mode: ray_train``), a nested Ray Train job whose reports
reach Tune through ``TuneReportCallback``. Re-running the same sweep (same name) continues it:
finished trials are not re-run, unfinished ones resume from their checkpoints, and the
searcher's state is restored.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import yaml

from jigclu.config import RunConfig, build_config, save_config
from jigclu.context import checkpoint_dir, resolve_device
from jigclu.errors import ConfigError, JigcluError
from jigclu.launch import prepare
from jigclu.ray_session import (driver_resources, init_ray, placement_groups,  # sets Ray's env defaults
                                remove_orphaned_worker_groups)
from jigclu.ray_train import ray_storage, root_cause, state_from
from jigclu.runs import RunLayout
from jigclu.values import jsonable
from tune.layout import BUDGET_STOPPED, FAILED, SAMPLED, TRIAL_PREFIX, SweepLayout
from jigclu import storage
from jigclu.storage import check_writable, read_text, write_atomic
from jigclu.trainers import run_task
from tune.repeats import REPEAT_OF
from tune.report.trial import trial_status
from tune.selection import check_data, score_on_test
from tune.space import Sweep
from tune.study_db import DatabaseStudyLayout, open_study_storage

# Tune's own console tables and headers: our live display replaces them (verbose=0, old engine)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Save the experiment state every second (Tune's default is >= 10 s): a driver killed between
# saves loses the record of trials started since, and a resumed sweep would start them anew.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

from ray import tune  # noqa: E402
from ray.tune import Callback, Checkpoint  # noqa: E402


class TuneTrialContext:
    """Run context of an in-process trial: checkpoints and metrics go to Tune."""

    is_main = True
    stream_plan = None  # an in-process trial streams nothing

    def __init__(self, trial_dir: str, device: Any) -> None:
        self.layout, self.device, self.progress = RunLayout(trial_dir), device, False

    def where(self) -> RunLayout:
        return self.layout

    def dataset_shard(self, name: str) -> Any | None:
        return None

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


class TrialFailed(JigcluError):
    """A retried trial that had already failed for a reason of its own."""


def run_trial(params: dict[str, Any], sweep_dict: dict[str, Any], sweep_root: str) -> None:
    """One trial: build its config from the sampled params, save it, run the trainer.

    Tune retries a trial whose driver died (``max_failures``): an in-process trial resumes from its
    Tune checkpoint, a Ray Train trial from its run's newest checkpoint in storage. A trial that
    failed for a reason of its own is not trained again (:data:`FAILED`).
    """
    trial_dir = SweepLayout(sweep_root).trial(tune.get_context().get_trial_id())
    failed = RunLayout(trial_dir).file(FAILED)
    if storage.exists(failed):
        raise TrialFailed(read_text(failed))
    try:
        _run_trial(params, sweep_dict, sweep_root)
    except Exception as exc:
        cause = root_cause(exc)
        if isinstance(cause, JigcluError) or type(exc).__name__ == "TrainingFailedError":
            write_atomic(failed, f"{type(cause).__name__}: {cause}")
        raise


def _run_trial(params: dict[str, Any], sweep_dict: dict[str, Any], sweep_root: str) -> None:
    sweep = Sweep.from_dict(sweep_dict)
    spec = sweep.spec
    layout = SweepLayout(sweep_root)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = layout.trial(trial_id)  # in the sweep's storage, whichever node this trial runs on
    # an invalid combination raises ConfigError: the trial errors; a repeat's leader is no config key
    cfg = sweep.trial_config({k: v for k, v in params.items() if k != REPEAT_OF})
    cfg.name = f"{spec.name}-{trial_id}"
    cfg.monitor.every = 1  # the scheduler needs the metric at every report
    cfg = prepare(spec.task, cfg)  # downstream trials adopt their checkpoint's model, as `jigclu linear` does
    save_config(cfg, RunLayout(trial_dir).config)
    write_atomic(RunLayout(trial_dir).file(SAMPLED), json.dumps(params, indent=1, sort_keys=True))
    if trial_uses_ray_train(sweep, cfg):
        from tune.train_trial import run_train_trial

        before = placement_groups()
        try:
            run_train_trial(sweep, cfg, layout.train_root, trial_dir)
        finally:
            remove_orphaned_worker_groups(cfg, before)
        return
    cfg.scaling.workers = 0
    run_task(spec.task, cfg, TuneTrialContext(trial_dir, device=resolve_device(cfg.device)))


def sweep_layout(sweep: Sweep) -> SweepLayout:
    """Where the sweep lives: ``<storage or output_dir>/<name>``."""
    layout_type = DatabaseStudyLayout if sweep.spec.study_storage else SweepLayout  # no optuna.db with a database
    return layout_type.of(sweep.spec.storage or sweep.spec.output_dir, sweep.spec.name)


def _optuna_storage(sweep: Sweep, layout: SweepLayout) -> Any:
    """The study's Optuna RDB storage: the user's database URL, else SQLite kept with the sweep."""
    import optuna

    if sweep.spec.study_storage:
        return open_study_storage(sweep.spec.study_storage)  # no password in the URL; one line if it fails
    layout.study_cache.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{layout.study_cache}")


def build_tuner(sweep: Sweep, layout: SweepLayout, callbacks: list[Any]) -> tune.Tuner:
    """A fresh Tuner for the sweep (search, scheduler, stop rule, storage: ``tune.schedulers``)."""
    from tune.schedulers import CollapseStopper, build_scheduler, build_search, link

    spec = sweep.spec
    search_alg, param_space = build_search(sweep, None if spec.scheduler.type == "pbt" else
                                           _optuna_storage(sweep, layout))
    scheduler = build_scheduler(sweep)
    link(search_alg, scheduler)
    # a Ray Train trial's actor is only its driver: its start-up is the Train job's, not the actor's
    reuse = spec.reuse_actors and not trial_uses_ray_train(sweep, build_config(RunConfig, sweep.base))
    return tune.Tuner(
        _trainable(sweep, layout),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, reuse_actors=reuse,
                                    num_samples=spec.num_samples, time_budget_s=spec.time_budget_s,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=spec.name, **ray_storage(storage.parent(layout.root), retrying=False),
                                  verbose=0, stop=CollapseStopper(),
                                  # a trial whose driver died with its node starts again (and resumes)
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  callbacks=callbacks, log_to_file=True,
                                  checkpoint_config=_checkpoints_kept(sweep)),
    )


def _checkpoints_kept(sweep: Sweep) -> tune.CheckpointConfig:
    """Each trial keeps the checkpoint of its best epoch by the sweep's metric (what the report ranks
    it by, so the winner's checkpoint gives that value back: tune/report/checkpoints.py) and, as Tune
    always does, its newest (what a resume loads). PBT keeps its 4 newest instead: an exploit loads a
    donor's checkpoint of its last perturbation, which a best-only rule could already have deleted."""
    if sweep.spec.scheduler.type == "pbt":
        return tune.CheckpointConfig(num_to_keep=4)
    return tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=sweep.metric,
                                 checkpoint_score_order=sweep.spec.mode)


def _trial_name(trial: Any) -> str:
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def _trainable(sweep: Sweep, layout: SweepLayout) -> Any:
    # the base config decides (a space over scaling.workers would only change the nested jobs)
    uses_train = trial_uses_ray_train(sweep, build_config(RunConfig, sweep.base))
    fn = tune.with_parameters(run_trial, sweep_dict=sweep.to_dict(), sweep_root=layout.root)
    # A trial that drives a Ray Train job needs no CPU itself (its workers hold them), and runs where a
    # node loss cannot take it: on the head or a node marked as a driver node (jigclu.ray_session).
    resources = {"cpu": 0, **driver_resources()} if uses_train else \
        {"cpu": sweep.spec.resources.cpu, "gpu": sweep.spec.resources.gpu}
    return tune.with_resources(fn, resources)


def save_definition(sweep: Sweep, layout: SweepLayout) -> None:
    """Write sweep.yaml; refuse to continue a sweep defined differently."""
    new = sweep.to_dict()
    if layout.exists():
        old = yaml.safe_load(read_text(layout.definition))
        for key in ("space", "config", "metric", "mode", "task", "seed", "study_storage"):
            if old.get(key) != new.get(key):
                raise ConfigError(f"sweep '{sweep.spec.name}' already exists in {layout.root} with a different "
                                  f"'{key}'; choose another name=... or delete that directory")
    write_atomic(layout.definition, yaml.safe_dump(new, sort_keys=False))


def run_sweep(sweep: Sweep, *, resume: bool = False, verbose: bool = False, progress: bool = True,
              address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Run (or continue) a sweep; returns a small summary (the report reads the sweep's storage)."""
    import optuna

    from tune.live import SweepProgress, StudyPublisher
    from tune.searcher import fail_abandoned
    from tune.waiting import ResourceWait

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    layout = sweep_layout(sweep)
    check_writable(layout.root)  # missing bucket, credentials, endpoint: one line before anything starts
    check_data(sweep)  # a validation split too large, a metric that needs labels the data lacks
    if sweep.spec.study_storage and sweep.spec.scheduler.type != "pbt":
        _optuna_storage(sweep, layout)  # a missing driver, a wrong password, no server: one line, now
    existed = layout.exists()
    save_definition(sweep, layout)
    init_ray(address, verbose, num_cpus=num_cpus)
    display, budget = SweepProgress(sweep, enabled=progress), BudgetStops(sweep)
    callbacks = [display, StudyPublisher(layout), budget]
    callbacks.append(ResourceWait(sweep.spec.name, layout.root, display.note,
                                  train_trials=trial_uses_ray_train(sweep, build_config(RunConfig, sweep.base))))
    started = time.time()
    restore = ray_storage(layout.root, retrying=False)
    if existed:
        layout.set_aside_torn_state()
        layout.fetch_study()  # a fresh head node: the study comes back from storage
    else:
        layout.forget_study()
    if existed and tune.Tuner.can_restore(restore["storage_path"], storage_filesystem=restore.get("storage_filesystem")):
        tuner = tune.Tuner.restore(restore["storage_path"], trainable=_trainable(sweep, layout),
                                   storage_filesystem=restore.get("storage_filesystem"),
                                   resume_unfinished=True, resume_errored=False, restart_errored=False)
        # Tune restores the searcher (and its Optuna study) from its experiment state
        tuner._local_tuner._run_config.callbacks = callbacks  # restored tuners keep no callbacks
    else:
        tuner = build_tuner(sweep, layout, callbacks)
    with display, SigtermStopsTune() as sigterm:
        grid = tuner.fit()
    # every trial ended (not a Ctrl-C; after a SIGTERM Tune's cleanup marks the stopped trials ended,
    # but the resumed sweep goes on with them: their Optuna trials must stay RUNNING, not be failed)
    ended = grid.num_terminated + grid.num_errors == len(grid) and not sigterm.fired
    if ended and sweep.spec.scheduler.type != "pbt":
        fail_abandoned(optuna.load_study(study_name=sweep.spec.name, storage=_optuna_storage(sweep, layout)))
    layout.publish_study()
    if budget.stopped:  # for the report: these trials were cut by the budget, not by the scheduler
        write_atomic(layout.file(BUDGET_STOPPED), json.dumps(sorted(budget.stopped)))
    test_scores = score_on_test(sweep, layout) if ended else None
    if existed:
        layout.set_aside_orphans({r.path.rstrip("/").rsplit("/", 1)[-1] for r in grid if getattr(r, "path", None)})
    if sigterm.fired:
        from jigclu.preempt import Preempted

        raise Preempted(f"terminated (SIGTERM): sweep '{sweep.spec.name}' saved its state and its study; "
                        f"the same command with --resume continues it")
    return {"sweep_dir": layout.root, "resumed": existed, "wall_s": time.time() - started,
            "trials": len(grid), "test_scores": test_scores, **status_counts(grid, sweep)}


class BudgetStops(Callback):
    """Which trials the sweep's time budget ended, not its scheduler (``budget_stopped.json``, for the
    report). When ``time_budget_s`` is spent Tune ends the experiment and stops the trials still running
    without a trial-complete event (a scheduler's stop has one), so the trials cut by the budget are those
    still open, short of ``max_t``, when the experiment ends past the budget."""

    def __init__(self, sweep: Sweep) -> None:
        self.budget_s, self.max_t, self.started = sweep.spec.time_budget_s, sweep.max_t, time.time()
        self.epochs: dict[str, int] = {}
        self.ended: set[str] = set()  # completed or errored through Tune's own events
        self.stopped: list[str] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.epochs[trial.trial_id] = int(result.get("training_iteration", 0))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not self.budget_s or time.time() - self.started < self.budget_s:
            return  # ended before the budget (every trial done, a SIGTERM, Ctrl-C)
        self.stopped = sorted(t.trial_id for t in trials if t.trial_id not in self.ended
                              and t.status not in ("PENDING", "ERROR")
                              and trial_status(self.epochs.get(t.trial_id, 0), self.max_t,
                                               ray_status="TERMINATED") == "stopped")


class SigtermStopsTune:
    """SIGTERM (a preempted head node, an evicted pod, ``ray job stop``) stops a sweep the way Ctrl-C
    does: Tune's own SIGINT handler ends its loop, stops the trials and saves the experiment state,
    then the study is published; the driver exits with 143 and ``--resume`` continues. A second
    SIGTERM is Python's default again: stop at once (Tune's state is saved every second anyway)."""

    def __init__(self) -> None:
        self.fired, self._previous = False, None

    def __enter__(self) -> "SigtermStopsTune":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.fired = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # Tune's handler while tuner.fit() runs: a graceful stop

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def status_counts(grid: Any, sweep: Sweep) -> dict[str, int]:
    """Trials by outcome: finished (ran every epoch), stopped early (by the scheduler), errored."""
    max_t = sweep.max_t
    counts = {"finished": 0, "stopped": 0, "errored": 0}
    for result in grid:  # Ray ended each trial: with an error, or terminated (done, stopped, out of time)
        epochs = (result.metrics or {}).get("training_iteration", 0)
        counts[trial_status(epochs, max_t, ray_status="ERROR" if result.error is not None else "TERMINATED")] += 1
    return counts


__all__ = ["run_sweep", "run_trial", "sweep_layout", "TuneTrialContext"]
