"""Ray Train (V2 API) wrapper: the same trainer loops on N workers, elastic and fault tolerant.

This is the only module of ``jigclu`` that imports Ray. ``scaling.workers: N`` runs the
loop on N workers, ``[min, max]`` runs it elastically (Ray restarts the worker group at a new
size from the latest checkpoint when nodes come or go). The loop itself does not change:

* the global batch is fixed; each worker takes ``data.batch_size / world_size`` of it, so
  the learning rate (scaled by the global batch) does not move when the world size does;
* sampling is a per-epoch permutation from the seed, sharded by rank, independent of the
  world size (:class:`jigclu.data.ShardSampler`);
* every epoch the checkpoint goes through ``ray.train.report`` to the run's storage (local
  path, ``s3://`` or ``gs://``) and a restarted worker group resumes from
  ``ray.train.get_checkpoint()``; re-running the same command (same name and storage)
  continues a run whose driver died.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from jigclu.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from jigclu.config import RunConfig, save_config
from jigclu.context import LocalContext, _jsonable
from jigclu.errors import ConfigError, JigcluError

# quiet, fast-failing defaults for local clusters; users may override them in the environment
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import ray  # noqa: E402
import ray.train  # noqa: E402
from ray.train import Checkpoint, CheckpointConfig, FailureConfig  # noqa: E402
from ray.train import RunConfig as RayRunConfig  # noqa: E402
from ray.train import ScalingConfig  # noqa: E402
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

OBJECT_STORE_BYTES = 256 * 1024 * 1024


def init_ray(address: str | None = None, verbose: bool = False, num_cpus: int | None = None) -> bool:
    """Connect to a cluster (``address`` or ``RAY_ADDRESS``) or start a quiet local one.

    A local Ray gets its dashboard process bound to 127.0.0.1: Train's placement-group
    cleanup uses the State API, which only exists when the dashboard runs; without it a
    stopped trial's workers leak their CPUs (see DESIGN.md). Returns True when this call
    started Ray.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    common: dict[str, Any] = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR,
                                  configure_logging=True)
    if address:
        ray.init(address=address, **common)
        return True
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             object_store_memory=OBJECT_STORE_BYTES, **common)
    return True


def state_from(ckpt: Checkpoint | None) -> dict[str, Any] | None:
    """The training state inside a Ray Train / Tune checkpoint (None when there is none)."""
    if ckpt is None:
        return None
    with ckpt.as_directory() as directory:
        return load_checkpoint(Path(directory) / CHECKPOINT_NAME, map_location="cpu")


class RayTrainContext(LocalContext):
    """Run context of a Ray Train worker: checkpoints and metrics go through ``ray.train``.

    ``fault`` (tests only) is ``"<epoch>:<rank>:<marker file>"``: that rank's process kills
    itself once, right after reporting that epoch, to exercise Ray Train's recovery.
    """

    fault: str | None = None

    def load_state(self) -> dict[str, Any] | None:
        return state_from(ray.train.get_checkpoint())

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        metrics = {k: _jsonable(v) for k, v in metrics.items()}
        rank = ray.train.get_context().get_world_rank()
        if rank == 0 and state is not None:
            with tempfile.TemporaryDirectory(prefix="jigclu-ckpt-") as tmp:
                save_checkpoint(state, Path(tmp) / CHECKPOINT_NAME)
                (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_epoch_{metrics.get('epoch', 0):05d}")
        else:
            ray.train.report(metrics)
        if rank == 0 and _is_local(str(self.run_dir)):
            # a local mirror of the metrics for the driver's progress display and for humans
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if self.fault:
            _maybe_inject_fault(self.fault, metrics.get("epoch"), rank)


def _maybe_inject_fault(spec: str, epoch: Any, rank: int) -> None:
    """Kill this worker process once (SIGKILL, like an OOM kill or a lost node); tests only."""
    at_epoch, at_rank, marker = spec.split(":", 2)
    if epoch == int(at_epoch) and rank == int(at_rank) and not os.path.exists(marker):
        # Die during the next epoch, once the controller has collected this epoch's report (it
        # polls workers every health-check interval), as a real crash mid-epoch would.
        time.sleep(float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")) * 3)
        Path(marker).write_text(str(time.time()))
        os.kill(os.getpid(), 9)


def _train_fn(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: rebuild the config and run the task's loop."""
    import ray.train.torch as rtt

    from jigclu.launch import trainer_for

    cfg = RunConfig.model_validate(loop_config["config"])
    ctx = RayTrainContext(Path(loop_config["run_dir"].removeprefix("file://")), device=rtt.get_device(),
                          resume=True, progress=False)
    ctx.fault = loop_config.get("fault")
    trainer_for(loop_config["task"])(cfg, ctx)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def check_storage(storage: str) -> None:
    """Fail in seconds, not after workers start, when the storage cannot be written."""
    if _is_local(storage):
        path = Path(storage.removeprefix("file://"))
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".jigclu-write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(f"storage {storage} is not writable: {exc.strerror or exc}") from None
        return
    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(storage)
        fs.create_dir(base, recursive=True)
    except Exception as exc:  # credentials, unknown scheme, missing bucket
        raise ConfigError(f"storage {storage} is not usable: {str(exc).splitlines()[0]}") from None


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


def make_trainer(task: str, cfg: RunConfig, run_dir: str, storage: str,
                 callbacks: list[Any] | None = None, fault: str | None = None) -> TorchTrainer:
    """The TorchTrainer of one run (used by the CLI and by each sweep trial)."""
    workers = cfg.scaling.workers
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        _train_fn,
        train_loop_config={"task": task, "config": cfg.model_dump(mode="json"), "run_dir": run_dir,
                           "fault": fault},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.scaling.gpu,
                                     resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=float(
                                         os.environ.get("JIGCLU_ELASTIC_MONITOR_S", "10"))),
        run_config=RayRunConfig(name=cfg.name, storage_path=storage,
                                failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                                checkpoint_config=CheckpointConfig(num_to_keep=2),
                                callbacks=callbacks or None),
    )


def root_cause(exc: BaseException) -> BaseException:
    """The first worker's original exception inside a Ray Train failure, if there is one."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        first = failures[min(failures)]
        return getattr(first, "cause", None) or first
    cause = getattr(exc, "controller_failure", None) or exc.__cause__
    return root_cause(cause) if cause is not None and cause is not exc else exc


def launch_ray(task: str, cfg: RunConfig, *, resume: bool = False, verbose: bool = False,
               progress: bool = True, address: str | None = None, fault: str | None = None) -> dict[str, Any]:
    """Run ``task`` under Ray Train; same return value as :func:`jigclu.launch.launch`."""
    from jigclu.launch import run_dir_for

    run_dir_for(task, cfg)  # fills in the name
    storage = cfg.storage or str(Path(cfg.output_dir).resolve())
    check_storage(storage)
    run_dir = f"{storage.rstrip('/')}/{cfg.name}"
    local, created = None, False
    if _is_local(storage):
        local = Path(run_dir.removeprefix("file://"))
        if any(local.glob("checkpoint_epoch_*")) and not resume:
            raise ConfigError(f"run directory {local} already holds checkpoints; pass --resume to "
                              f"continue it, or set name=<new name> for a new run")
        created = not local.exists()
        save_config(cfg, local / "config.yaml")
    init_ray(address, verbose)
    check_resources(cfg, local_cluster=not (address or os.environ.get("RAY_ADDRESS")))
    trainer = make_trainer(task, cfg, run_dir, storage, fault=fault)
    watcher = _MetricsWatcher(Path(run_dir), cfg, enabled=progress and cfg.train.progress and _is_local(run_dir),
                              task=task)
    try:
        with watcher:
            result = trainer.fit()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # Ray wraps worker errors: surface a user error as one line
        cause = root_cause(exc)
        if local is not None and created and not any(local.glob("checkpoint_epoch_*")):
            shutil.rmtree(local, ignore_errors=True)
        if isinstance(cause, JigcluError):
            raise type(cause)(str(cause)) from None
        if isinstance(exc, ray.train.TrainingFailedError):
            raise JigcluError(f"training failed after {cfg.scaling.max_failures} retries: "
                              f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from exc
        raise
    last = dict(result.metrics or {})
    return {"epochs_run": watcher.epochs_seen, "last": last, "run_dir": run_dir,
            "best_knn_top1": last.get("best_knn_top1"), "best_val_top1": last.get("best_val_top1"),
            "checkpoint": result.checkpoint.path if result.checkpoint else None}


class _MetricsWatcher:
    """Driver-side progress: tails the run's ``metrics.jsonl`` while the workers train."""

    def __init__(self, run_dir: Path, cfg: RunConfig, enabled: bool, task: str = "pretrain") -> None:
        self.task = task
        self.path = Path(str(run_dir).removeprefix("file://")) / "metrics.jsonl"
        self.cfg, self.enabled = cfg, enabled
        self.epochs_seen = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_MetricsWatcher":
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._poll(None)

    def _loop(self) -> None:
        from rich.console import Console

        console = Console() if self.enabled else None
        with (console.status(f"[bold]{self.cfg.name}[/]: starting {self.cfg.scaling.workers} Ray workers...")
              if console else _nullcontext()) as status:
            while not self._stop.wait(1.0):
                self._poll(status, console)

    def _poll(self, status: Any, console: Any = None) -> None:
        if not self.path.exists():
            return
        with open(self.path) as fh:
            fh.seek(self._offset)
            lines = fh.readlines()
            self._offset = fh.tell()
        for line in lines:
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.epochs_seen += 1
            if console is not None:
                if "loss_clu" in m:
                    from jigclu.trainers.pretrain import _epoch_line

                    text = _epoch_line(m, self.cfg.train.epochs)
                else:
                    from jigclu.trainers.classify import epoch_line

                    text = epoch_line(self.task, m, self.cfg.eval.epochs or 100)
                console.print(f"[{m.get('world_size', '?')} workers] {text}")
                if status is not None:
                    status.update(f"[bold]{self.cfg.name}[/]: epoch {m.get('epoch', 0) + 2}/"
                                  f"{self.cfg.train.epochs} on {m.get('world_size', '?')} workers")


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
