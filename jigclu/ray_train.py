"""Ray Train (V2 API) wrapper: the same trainer loops on N workers, elastic and fault tolerant.

One of the Ray wrapper modules (starting Ray and keeping a cluster clean is
:mod:`jigclu.ray_session`'s). ``scaling.workers: N`` runs the
loop on N workers, ``[min, max]`` runs it elastically (Ray restarts the worker group at a new
size from the latest checkpoint when nodes come or go). The loop itself does not change:

* the global batch is fixed; each worker takes ``data.batch_size / world_size`` of it, so
  the learning rate (scaled by the global batch) does not move when the world size does;
* sampling is a per-epoch permutation from the seed, sharded by rank, independent of the
  world size (:class:`jigclu.data.ShardSampler`);
* every epoch the checkpoint goes through ``ray.train.report`` to the run's storage (local
  path, ``s3://`` or ``gs://``) and a restarted worker group resumes from
  ``ray.train.get_checkpoint()``; re-running the same command (same name and storage)
  continues a run whose driver died;
* a SIGTERMed worker (spot preemption, pod eviction) stops the whole group at the next step with
  a mid-epoch checkpoint, and Ray Train's restart continues from that step; a SIGTERMed driver
  passes it on to the workers, then exits 143 (:mod:`jigclu.ray_preempt`).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from contextlib import nullcontext
from typing import Any

from jigclu import storage
from jigclu.checkpoint import load_checkpoint
from jigclu.config import RunConfig
from jigclu.context import checkpoint_dir, state_in
from jigclu.data.stream import StreamPlan
from jigclu.data.stream_runs import run_plan
from jigclu.errors import ConfigError, JigcluError
from jigclu.preempt import Preempted
from jigclu.progress import Display
from jigclu.ray_data import quiet_data_context, train_datasets
from jigclu.retrying_fs import retrying_filesystem
from jigclu.runs import RunLayout, cleanup_failed, open_run, ray_checkpoint_name, run_root
from jigclu.trainers import epoch_line, run_task
from jigclu.values import jsonable

from jigclu.ray_session import (FreshNodesAfterFailure, WorkerGroupJanitor, init_ray, prepare_elastic_run,  # sets Ray's env defaults
                                remove_left_groups)
from jigclu.ray_preempt import DriverSigterm, StopOnSigterm  # noqa: E402

import ray  # noqa: E402
import ray.train  # noqa: E402
from ray.train import Checkpoint, CheckpointConfig, FailureConfig  # noqa: E402
from ray.train import RunConfig as RayRunConfig  # noqa: E402
from ray.train import ScalingConfig  # noqa: E402
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

"""Called on every worker after each report with ``(metrics, rank)`` (e.g. fault injection)."""

def state_from(ckpt: Checkpoint | None) -> dict[str, Any] | None:
    """The training state inside a Ray Train / Tune checkpoint (None when there is none)."""
    if ckpt is None:
        return None
    with ckpt.as_directory() as directory:
        return state_in(directory)


class RayTrainContext:
    """Run context of a Ray Train worker: checkpoints and metrics go through ``ray.train``.

    Rank 0 also appends each epoch's metrics to the run's ``metrics.jsonl`` (in the run's
    storage, local or not) for the driver's progress display and for humans.
    """

    progress = False

    def __init__(self, run_dir: str, device: Any,
                 stream_plan: StreamPlan | None = None, initial_state: str | None = None,
                 keep_best: tuple[str, str] | None = None) -> None:
        self.layout = RunLayout(run_dir)
        self.device = device
        self.stream_plan = stream_plan  # the driver's plan of the stream it gave the trainer (data.loader=ray_data)
        self.initial_state = initial_state  # where a run with no checkpoint of its own starts (a PBT donor's)
        self.keep_best = keep_best  # (metric, mode): Ray keeps the best checkpoints by it (see keep_score)

    @property
    def is_main(self) -> bool:
        return ray.train.get_context().get_world_rank() == 0

    def where(self) -> RunLayout:
        return self.layout

    def dataset_shard(self, name: str) -> Any | None:
        return ray.train.get_dataset_shard(name) if self.stream_plan is not None else None

    def load_state(self) -> dict[str, Any] | None:
        state = self._load_state()
        if state is None and self.initial_state is not None:  # the donor's state: not this run's metrics
            return load_checkpoint(self.initial_state)
        if ray.train.get_context().get_world_rank() == 0:
            self.layout.restore_metrics(state)
        return state

    def _load_state(self) -> dict[str, Any] | None:
        """The newest readable checkpoint of the run directory, whether or not Ray registered it.

        Ray's checkpoint is the newest its controller collected; a worker may have persisted newer
        ones whose reports were still uncollected when its node died (2 epochs redone without
        this: ``benchmarks/faults/fault_matrix.py``). An unreadable newest one falls back to the previous one
        with a warning (:meth:`RunLayout.load_latest`).
        """
        if ray.train.get_checkpoint() is None and not self.layout.has_checkpoint():
            return None
        return self.layout.load_latest()

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        metrics = {k: jsonable(v) for k, v in metrics.items()}
        rank = ray.train.get_context().get_world_rank()
        epoch = int(metrics.get("epoch", 0))
        self._report({**metrics, KEEP_SCORE: keep_score(metrics, epoch, self.keep_best)}, state if rank == 0 else None,
                     ray_checkpoint_name(epoch))
        if rank == 0:
            self.layout.append_metrics(metrics)

    def checkpoint_mid_epoch(self, state: dict[str, Any]) -> None:
        """Every worker reports (``ray.train.report`` is collective), rank 0 with the checkpoint. Its
        ``epoch`` is the last finished one, so a sweep trial's reporter, which skips epochs it has
        seen (``tune/train_trial.py``), never takes it for an epoch; nothing goes to ``metrics.jsonl``."""
        position = state["position"]
        metrics = {"epoch": int(state["epoch"]), "mid_epoch": True, "position_epoch": int(position["epoch"]),
                   "position_step": int(position["step"]), KEEP_SCORE: LOWEST_SCORE}
        rank = ray.train.get_context().get_world_rank()
        self._report(metrics, state if rank == 0 else None,
                     ray_checkpoint_name(int(position["epoch"]), int(position["step"])))

    @staticmethod
    def _report(metrics: dict[str, Any], state: dict[str, Any] | None, name: str) -> None:
        if state is None:
            ray.train.report(metrics)
            return
        with checkpoint_dir(state, metrics) as directory:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory), checkpoint_dir_name=name)


KEEP_SCORE = "checkpoint_keep_score"
"""Ray keeps the ``train.keep_checkpoints`` best checkpoints by this, and always the newest
(:func:`keep_score`); a mid-epoch checkpoint scores :data:`LOWEST_SCORE`, so one never pushes out
an epoch checkpoint and goes once it is no longer the newest."""
LOWEST_SCORE = -sys.float_info.max  # finite: Ray's checkpoint snapshot is JSON, where -inf and NaN turn to null


def keep_score(metrics: dict[str, Any], epoch: int, keep_best: tuple[str, str] | None) -> float:
    """How Ray ranks epoch ``epoch``'s checkpoint. A run of its own keeps its newest epochs (``e + 1``,
    as the plain-process layout does); a sweep trial's run (``keep_best``: the sweep's metric and
    mode) keeps its best epochs by that metric, so the epoch a trial is ranked by has a checkpoint
    (an epoch without the metric scores lowest). Ray always keeps the newest besides, to resume from."""
    if keep_best is None:
        return float(epoch + 1)
    metric, mode = keep_best
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return LOWEST_SCORE
    return float(value) if mode == "max" else -float(value)


def _train_fn(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: rebuild the config and run the task's loop."""
    import ray.train.torch as rtt

    cfg = RunConfig.model_validate(loop_config["config"])
    keep_best, plan = loop_config.get("keep_best"), loop_config.get("stream_plan")
    ctx = RayTrainContext(loop_config["run_dir"], device=rtt.get_device(),
                          stream_plan=StreamPlan.from_json(plan) if plan else None,
                          initial_state=loop_config.get("initial_state"), keep_best=tuple(keep_best) if keep_best else None)
    run_task(loop_config["task"], cfg, ctx)


def check_resources(cfg: RunConfig, local_cluster: bool) -> None:
    """Reject requests the cluster can never satisfy instead of waiting for them forever."""
    total = ray.cluster_resources()
    workers = cfg.scaling.workers
    min_workers = workers[0] if isinstance(workers, tuple) else workers
    if cfg.scaling.gpu and total.get("GPU", 0) < 1 and local_cluster:
        raise ConfigError("scaling.gpu=true but this Ray cluster has no GPU; "
                          "use scaling.gpu=false or --address of a GPU cluster")
    if local_cluster:  # no autoscaler: what the cluster has now is all it will ever have
        need = min_workers * cfg.scaling.cpus_per_worker
        have = total.get("CPU", 0)
        if need > have:
            raise ConfigError(f"scaling.workers needs {need:g} CPUs for {min_workers} workers but the local "
                              f"Ray cluster has {have:g}; lower scaling.workers or scaling.cpus_per_worker")
        if cfg.scaling.gpu and min_workers > total.get("GPU", 0):
            raise ConfigError(f"scaling.workers={min_workers} with one GPU each, but the cluster has "
                              f"{total.get('GPU', 0):g} GPUs")


def _local_cpus(cfg: RunConfig) -> int | None:
    """CPUs of a local Ray: the machine's, plus room for Ray Data's decode tasks when streaming
    (Ray Data only uses what Ray Train's workers leave; with none left it would wait forever)."""
    if cfg.data.loader != "ray_data":
        return None
    workers = cfg.scaling.workers
    most = workers[1] if isinstance(workers, tuple) else workers
    need = most * cfg.scaling.cpus_per_worker + 2 * cfg.data.decode_cpus
    return max(os.cpu_count() or 1, math.ceil(need))


def make_trainer(task: str, cfg: RunConfig, root: str, callbacks: list[Any] | None = None,
                 initial_state: str | None = None,
                 keep_best: tuple[str, str] | None = None) -> TorchTrainer:
    """The TorchTrainer of run ``cfg.name`` under storage ``root`` (the CLI's and each sweep trial's).

    ``initial_state``: the checkpoint file the run starts from while it has none of its own (a sweep
    trial exploiting a PBT donor); ``keep_best``: ``(metric, mode)`` by which Ray keeps the run's
    ``train.keep_checkpoints`` best checkpoints (a sweep trial's), instead of its newest."""
    workers = cfg.scaling.workers
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.gpu:
        resources["GPU"] = 1
    plan = run_plan(task, cfg, RunLayout.of(root, cfg.name))  # made once, here; the workers get it
    return TorchTrainer(
        _train_fn,
        datasets=train_datasets(cfg, plan),
        train_loop_config={"task": task, "config": cfg.model_dump(mode="json"),
                           "stream_plan": plan.to_json() if plan is not None else None,
                           "run_dir": storage.join(root, cfg.name),
                           "initial_state": initial_state, "keep_best": list(keep_best) if keep_best else None},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.scaling.gpu,
                                     resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=float(
                                         os.environ.get("JIGCLU_ELASTIC_MONITOR_S", "10"))),
        run_config=RayRunConfig(name=cfg.name, **ray_storage(root),
                                failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                                   checkpoint_score_attribute=KEEP_SCORE),
                                # removes worker groups Ray Train's own shutdown left behind; a failed
                                # group's next size from the nodes left, not a view of 20 s ago
                                callbacks=[*(callbacks or []), WorkerGroupJanitor(storage.join(root, cfg.name)),
                                           FreshNodesAfterFailure(), StopOnSigterm()]),
    )


def ray_storage(root: str, retrying: bool = True) -> dict[str, Any]:
    """``storage_path`` (and ``storage_filesystem`` for object stores) of a storage root for Ray.

    A local root goes as an absolute path; an object-store URI goes as its pyarrow filesystem
    and path, so ``?endpoint_override=...&scheme=http`` options (S3-compatible stores) reach Ray.
    Ray Train gets it wrapped to ride out an outage (:mod:`jigclu.retrying_fs`); Tune gets it
    bare (``retrying=False``): through the wrapper its trial results stopped reaching the store.
    """
    if storage.is_local(root):
        return {"storage_path": storage.normalise(root)}
    fs, path = storage.resolve(root)
    return {"storage_path": path, "storage_filesystem": retrying_filesystem(fs) if retrying else fs}


def root_cause(exc: BaseException) -> BaseException:
    """The first worker's original exception inside a Ray Train failure, if there is one."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        first = failures[min(failures)]
        return getattr(first, "cause", None) or first
    cause = getattr(exc, "controller_failure", None) or exc.__cause__
    return root_cause(cause) if cause is not None and cause is not exc else exc


def launch_ray(task: str, cfg: RunConfig, *, resume: bool = False, verbose: bool = False,
               progress: Display = True, address: str | None = None,
               callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run ``task`` under Ray Train; same return value as :func:`jigclu.launch.launch` (which
    :func:`~jigclu.launch.prepare`\ s the config first: ``cfg`` is a prepared one). ``callbacks``: Ray Train
    callbacks of the run (its ``RunConfig.callbacks``, beside jigclu's own)."""
    layout, created = open_run(cfg, resume)
    root = run_root(cfg)
    init_ray(address, verbose, num_cpus=_local_cpus(cfg))
    quiet_data_context(verbose)
    check_resources(cfg, local_cluster=not (address or os.environ.get("RAY_ADDRESS")))
    if isinstance(cfg.scaling.workers, tuple):  # elastic: Ray's coordinator must not sit on a node that may go
        prepare_elastic_run(cfg.name)
    remove_left_groups(layout.root)  # what an earlier attempt of this run (--resume) left holding resources
    layout.save_config(cfg)  # only once every check has passed: a refused run leaves nothing
    trainer = make_trainer(task, cfg, root, callbacks=callbacks)
    watcher = _MetricsWatcher(layout, cfg, enabled=progress if cfg.train.progress else False,
                              task=task)

    driver_sigterm = DriverSigterm(layout, cfg.train.epochs if task == "pretrain" else cfg.eval.epochs)

    def fit() -> Any:
        with watcher, driver_sigterm:
            return trainer.fit()

    try:
        result = cleanup_failed(layout, created, fit)
    except BaseException as exc:  # Ray wraps worker errors: surface a user error as one line
        if driver_sigterm.outcome is not None:  # whatever Ray Train's abort left on the way out
            raise Preempted(driver_sigterm.outcome) from None
        if not isinstance(exc, Exception):
            raise
        cause = root_cause(exc)
        if isinstance(cause, JigcluError):
            raise type(cause)(str(cause)) from None
        if isinstance(exc, ray.train.TrainingFailedError):
            raise JigcluError(f"training failed after {cfg.scaling.max_failures} retries: "
                              f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from exc
        raise
    last = dict(result.metrics or {})
    return {"epochs_run": watcher.epochs_seen, "last": last, "run_dir": layout.root,
            "best_knn_top1": last.get("best_knn_top1"), "best_val_top1": last.get("best_val_top1"),
            "checkpoint": result.checkpoint.path if result.checkpoint else None}


class _MetricsWatcher:
    """Driver-side progress: follows the run's ``metrics.jsonl`` while the workers train, with a
    status line on a terminal, else (logs, ``--no-progress``) one plain line per event."""

    def __init__(self, layout: RunLayout, cfg: RunConfig, enabled: Display, task: str = "pretrain") -> None:
        from rich.console import Console

        self.layout, self.cfg, self.task = layout, cfg, task
        self.console = Console(soft_wrap=True) if enabled else None
        self.live = enabled is True and self.console is not None and self.console.is_terminal
        self.epochs_seen = 0
        self.interval = 1.0 if layout.local is not None else 5.0  # object stores: one GET per poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_MetricsWatcher":
        self._seen = len(self.layout.read_metrics())
        if self.console is not None and not self.live:
            self.console.print(f"{self.task} run {self.cfg.name}: starting {self.cfg.scaling.workers} Ray workers")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._poll(None)  # the last epochs, written after the last poll

    def _loop(self) -> None:
        with (self.console.status(f"[bold]{self.cfg.name}[/]: starting {self.cfg.scaling.workers} Ray workers...")
              if self.live and self.console is not None else nullcontext()) as status:
            while not self._stop.wait(self.interval):
                self._poll(status)

    def _poll(self, status: Any) -> None:
        try:
            records = self.layout.read_metrics()
        except (JigcluError, ValueError):  # a line being written, a store briefly unreachable
            return
        new, self._seen = records[self._seen:], max(self._seen, len(records))
        for m in new:
            self.epochs_seen += 1
            if self.console is not None:
                self.console.print(f"[{m.get('world_size', '?')} workers] {epoch_line(self.task, m, self.cfg)}")
                if status is not None:
                    status.update(f"[bold]{self.cfg.name}[/]: epoch {m.get('epoch', 0) + 2} "
                                  f"on {m.get('world_size', '?')} workers")
