"""The run layout: where a run keeps its config, metrics and checkpoints, on any storage.

Every module asks this one instead of building paths itself. A run directory (a local path,
``file://``, ``s3://`` or ``gs://`` URI; all read and written through :mod:`jigclu.storage`)
holds::

    config.yaml                     the resolved config (re-run it with ``--config``)
    metrics.jsonl                   one JSON line per epoch
    checkpoints/epoch_00004.pt      a plain-process run's checkpoints, the newest ``keep`` kept
    checkpoint_epoch_00004/state.pt a Ray Train run's checkpoints (Ray keeps the newest ``keep``)
    checkpoints/mid_epoch_00005_step_000017.pt  mid-epoch (SIGTERM, ``train.checkpoint_every_s``):
    checkpoint_mid_epoch_00005_step_000017/     epoch 5 after 17 steps of it; for ``--resume`` only
    labels_subset.txt               semi-supervised runs: the labeled subset
    stream_plan.json                streamed runs: the rows they read (jigclu.data.stream.run_plan)

A mid-epoch checkpoint is never taken for a finished epoch: its ``epoch`` entry is the last finished
epoch (its ``position`` says where it stopped after that), it writes no metrics line, does not count
among the ``keep`` epoch checkpoints and goes once a newer epoch checkpoint exists. What loads a
run's newest weights (:meth:`RunLayout.checkpoints`: ``export``, ``knn``, ``eval.pretrained``) sees
finished epochs only; a resume (:meth:`RunLayout.load_latest`) takes the newest of either kind.

Checkpoints are written atomically; when the newest one cannot be read (a disk that filled
up, a truncated upload) :meth:`RunLayout.load_latest` warns and falls back to the previous
one, so a run loses at most one more epoch instead of everything. A checkpoint whose pickle
would import code is no damage but a planted file: the resume stops there with one line
(:class:`~jigclu.checkpoint.UnsafeCheckpointError`), never falling back past it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from jigclu import storage
from jigclu.checkpoint import UnsafeCheckpointError, load_checkpoint, save_checkpoint
from jigclu.config import save_config
from jigclu.errors import ConfigError, JigcluError, warn
from jigclu.values import jsonable

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PLAN_FILE = "stream_plan.json"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"  # the state inside a Ray Train / Tune checkpoint directory
_LOCAL_CKPT = re.compile(r"^epoch_(\d+)\.pt$")
_RAY_CKPT = re.compile(r"^checkpoint_epoch_(\d+)$")
_LOCAL_MID = re.compile(r"^mid_epoch_(\d+)_step_(\d+)\.pt$")
_RAY_MID = re.compile(r"^checkpoint_mid_epoch_(\d+)_step_(\d+)$")
# (epoch, steps of it trained): where a checkpoint lets a run go on; finished epoch e is at (e + 1, 0)
Position = tuple[int, int]


def run_name(task: str, name: str | None) -> str:
    """``name``, checked to be a plain name; a run without one gets ``<task>-<timestamp>``."""
    if name is None:
        return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"name={name!r} must be a plain name, not a path")
    return name


def run_root(cfg: Any) -> str:
    """The storage root a run writes under: ``storage``, else ``output_dir`` (made absolute)."""
    return storage.normalise(cfg.storage or cfg.output_dir)


def ray_checkpoint_name(epoch: int, step: int | None = None) -> str:
    """The directory name Ray Train gives the checkpoint of ``epoch`` (or, mid-epoch, of ``epoch``
    after ``step`` steps of it) inside a run directory."""
    return f"checkpoint_epoch_{epoch:05d}" if step is None else f"checkpoint_mid_epoch_{epoch:05d}_step_{step:06d}"


@dataclass
class RunLayout:
    """The files of one run, rooted at ``root`` (a path or a storage URI)."""

    root: str

    def __post_init__(self) -> None:
        self.root = storage.normalise(self.root)

    @classmethod
    def of(cls, base: str, name: str) -> "RunLayout":
        return cls(storage.join(base, name))

    def file(self, name: str) -> str:
        return storage.join(self.root, name)

    @property
    def config(self) -> str:
        return self.file(CONFIG_FILE)

    @property
    def metrics(self) -> str:
        return self.file(METRICS_FILE)

    @property
    def stream_plan(self) -> str:
        return self.file(PLAN_FILE)

    @property
    def local(self):  # -> pathlib.Path | None
        """The run directory on this machine's disk (None on an object store)."""
        return storage.local_path(self.root)

    def exists(self) -> bool:
        return storage.exists(self.root)

    # ---- checkpoints -------------------------------------------------------------------------

    def checkpoint_file(self, epoch: int) -> str:
        return storage.join(self.root, CHECKPOINT_DIR, f"epoch_{epoch:05d}.pt")

    def mid_epoch_file(self, epoch: int, step: int) -> str:
        return storage.join(self.root, CHECKPOINT_DIR, f"mid_epoch_{epoch:05d}_step_{step:06d}.pt")

    def _scan(self) -> list[tuple[Position, bool, str, bool]]:
        """``(position, finished epoch?, file, a plain-process file?)`` of every checkpoint, newest first."""
        found = []
        for folder, inside, done, mid in ((storage.join(self.root, CHECKPOINT_DIR), (), _LOCAL_CKPT, _LOCAL_MID),
                                          (self.root, (STATE_FILE,), _RAY_CKPT, _RAY_MID)):
            for name in storage.list_dir(folder):
                if m := done.match(name):
                    found.append(((int(m.group(1)) + 1, 0), True, storage.join(folder, name, *inside), not inside))
                elif m := mid.match(name):
                    found.append(((int(m.group(1)), int(m.group(2))), False, storage.join(folder, name, *inside),
                                  not inside))
        return sorted(found, reverse=True)

    def checkpoints(self) -> list[tuple[int, str]]:
        """``(epoch, file)`` of every *finished-epoch* checkpoint of either layout, newest first."""
        return [(pos[0] - 1, file) for pos, finished, file, _ in self._scan() if finished]

    def resume_points(self) -> list[tuple[Position, str]]:
        """``(position, file)`` of every checkpoint, mid-epoch ones included, newest position first."""
        return [(pos, file) for pos, _finished, file, _ in self._scan()]

    def has_checkpoint(self) -> bool:
        return bool(self._scan())

    def latest_checkpoint(self) -> str:
        """The newest finished-epoch checkpoint; a one-line error naming where it looked when there is none."""
        found = self.checkpoints()
        if found:
            return found[0][1]
        if mid := self.resume_points():
            (epoch, step), _file = mid[0]
            raise JigcluError(f"{self.root} has no finished epoch yet, only a mid-epoch checkpoint (epoch {epoch + 1} "
                              f"after step {step}), which is for --resume: resume the run to finish the epoch")
        raise JigcluError(f"no checkpoint in {self.root} (looked for {CHECKPOINT_DIR}/epoch_*.pt and "
                          f"checkpoint_epoch_*/{STATE_FILE})")

    def save_checkpoint(self, state: dict[str, Any], keep: int = 2) -> str:
        """Write ``state`` as the checkpoint of finished epoch ``state['epoch']``; keep only the newest ``keep``."""
        path = save_checkpoint(state, self.checkpoint_file(int(state["epoch"])))
        self._prune(keep)
        return path

    def save_mid_epoch(self, state: dict[str, Any], keep: int = 2) -> str:
        """Write a mid-epoch checkpoint at ``state['position']`` (kept apart from the epoch checkpoints)."""
        position = state["position"]
        path = save_checkpoint(state, self.mid_epoch_file(int(position["epoch"]), int(position["step"])))
        self._prune(keep)
        return path

    def _prune(self, keep: int) -> None:
        """Keep the newest ``keep`` epoch checkpoints, and the newest ``keep`` mid-epoch ones newer than
        those; plain-process files only (a Ray Train run's checkpoint directories are Ray's to delete)."""
        mine = [(p, done, f) for p, done, f, ours in self._scan() if ours]
        finished = [(p, f) for p, done, f in mine if done]
        newest = finished[0][0] if finished else (-1, 0)
        mids = [(p, f) for p, done, f in mine if not done and p > newest]
        for file in [f for _p, f in finished[max(1, keep):] + mids[max(1, keep):]] + \
                [f for p, done, f in mine if not done and p <= newest]:
            storage.delete(file)

    def load_latest(self, skip: str | None = None) -> dict[str, Any] | None:
        """The newest readable checkpoint's state, mid-epoch ones included (None when there is none).

        An unreadable newest checkpoint is skipped with a warning and the previous one is
        used; only when every retained checkpoint is unreadable is that an error. An unsafe
        one (its pickle would import code) is an error at once.
        """
        found = [f for _pos, f in self.resume_points() if f != skip]
        errors = []
        for file in found:
            try:
                state = load_checkpoint(file)
            except UnsafeCheckpointError:  # planted, not damaged: stop, do not resume past it
                raise
            except JigcluError as exc:
                errors.append(str(exc))
                continue
            if errors:
                warn(f"{errors[-1]}; resuming from the previous checkpoint {file} instead")
            return state
        if errors:
            raise JigcluError(f"every checkpoint of {self.root} is unreadable ({errors[0]})")
        return None

    # ---- config and metrics ------------------------------------------------------------------

    def save_config(self, cfg: Any) -> None:
        save_config(cfg, self.config)

    def append_metrics(self, record: dict[str, Any]) -> None:
        storage.append_line(self.metrics, json.dumps({k: jsonable(v) for k, v in record.items()}))

    def read_metrics(self) -> list[dict[str, Any]]:
        """All metric records of the run, in order (empty before the first epoch)."""
        if not storage.is_file(self.metrics):
            return []
        return [json.loads(line) for line in storage.read_text(self.metrics).splitlines() if line.strip()]

    def restore_metrics(self, state: dict[str, Any] | None) -> None:
        """Re-append the metrics line of the checkpoint's epoch when a crash between writing the
        checkpoint and that line lost it (the checkpoint carries its epoch's metrics)."""
        record = (state or {}).get("metrics")
        if record and record.get("epoch") not in {m.get("epoch") for m in self.read_metrics()}:
            self.append_metrics(record)

    def remove(self) -> None:
        storage.delete(self.root)


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """All metric records of the run at ``run_dir`` (a path or URI), in order."""
    return RunLayout(str(run_dir)).read_metrics()


def find_checkpoint(location: str) -> str:
    """The checkpoint file a user means by ``location``: a file, or a run directory of either
    layout (its newest checkpoint)."""
    if storage.is_file(location):
        return storage.normalise(location)
    if not storage.exists(location):
        raise JigcluError(f"checkpoint not found: {location}")
    return RunLayout(location).latest_checkpoint()


def guard_new_run(layout: RunLayout, resume: bool) -> bool:
    """Refuse to overwrite a run that holds checkpoints unless resuming; True when the run
    directory does not exist yet (so a run that fails before its first checkpoint can remove it)."""
    if not resume and layout.has_checkpoint():
        raise ConfigError(f"run directory {layout.root} already holds a checkpoint; pass --resume to "
                          f"continue it, or set name=<new name> for a new run")
    return not layout.exists()


def open_run(cfg: Any, resume: bool) -> tuple[RunLayout, bool]:
    """The run directory of a prepared config (``<storage or output_dir>/<name>``), checked writable and
    guarded (:func:`guard_new_run`): the one set-up a run gets wherever it trains (here or on Ray Train).
    Returns the layout and whether the directory is new; nothing is written yet."""
    layout = RunLayout.of(run_root(cfg), cfg.name)
    storage.check_writable(layout.root)
    return layout, guard_new_run(layout, resume)


def cleanup_failed(layout: RunLayout, created: bool, run: Callable[[], Any]) -> Any:
    """Run ``run()``; a run that fails before its first checkpoint leaves no directory behind."""
    try:
        return run()
    except BaseException:
        if created:
            try:
                if not layout.has_checkpoint():
                    layout.remove()
            except JigcluError:
                pass
        raise


__all__ = ["RunLayout", "run_name", "run_root", "ray_checkpoint_name", "read_metrics", "find_checkpoint", "guard_new_run", "open_run",
           "cleanup_failed", "warn", "CONFIG_FILE", "METRICS_FILE", "STATE_FILE"]
