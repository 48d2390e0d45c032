"""Where a trainer writes and how it reports: one loop, three ways to run it.

A trainer is a function of (validated config, run context). The context decides where
checkpoints go, how metrics are reported and how a run resumes:

* :class:`LocalContext`: a plain process (laptop, one GPU, tests): checkpoints and
  ``metrics.jsonl`` in the run's :class:`~jigclu.runs.RunLayout` (local disk or object storage).
* ``RayTrainContext`` (``jigclu.ray_train``): reported through ``ray.train.report`` so Ray
  Train persists checkpoints to its storage and Ray Tune sees the metrics.
* ``TuneTrialContext`` (``tune.sweep``): a sweep trial running the loop in its Tune actor.

The two Ray contexts hand Ray a checkpoint *directory*; :func:`checkpoint_dir` writes it once
for both.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from jigclu import dist
from jigclu.checkpoint import load_checkpoint, save_checkpoint
from jigclu.errors import ConfigError
from jigclu.progress import Display
from jigclu.runs import STATE_FILE, RunLayout
from jigclu.values import jsonable


class RunContext(Protocol):
    """What a trainer needs from where it runs."""

    device: torch.device
    progress: Display
    stream_plan: Any  # the StreamPlan behind dataset_shard (jigclu.data.stream), or None

    @property
    def is_main(self) -> bool: ...

    def load_state(self) -> dict[str, Any] | None:
        """The state to resume from, or None for a fresh start."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        """Persist the epoch's checkpoint (if any), then its metrics."""

    # A context that can also keep mid-epoch checkpoints (SIGTERM, ``train.checkpoint_every_s``) has
    # ``checkpoint_mid_epoch(state)``, called on every worker; one without it (a sweep's in-process
    # trial, whose checkpoints Tune keeps per epoch) gets none, and the loop then ignores both.

    def where(self) -> RunLayout | None:
        """The run's layout, for files a task writes beside its checkpoints (None: Ray keeps them)."""

    def dataset_shard(self, name: str) -> Any | None:
        """This worker's shard of the streamed dataset ``name`` (``data.loader=ray_data``), whose plan
        is the context's ``stream_plan``; None when the run streams nothing (a plain process, an
        in-process sweep trial: their ``stream_plan`` is None)."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the GPU when there is one; ``cuda`` without a GPU is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={spec} but no CUDA GPU is visible to this process")
    return torch.device(spec)


@dataclass
class LocalContext:
    """Run context of a plain process: files in ``run_dir``, resume from its newest checkpoint."""

    run_dir: str | Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume: bool = False
    progress: Display = True
    keep: int = 2  # checkpoints kept (train.keep_checkpoints)
    stream_plan = None  # a plain process streams nothing

    def __post_init__(self) -> None:
        self.layout = RunLayout(str(self.run_dir))

    @property
    def is_main(self) -> bool:
        return dist.rank() == 0

    def where(self) -> RunLayout | None:
        return self.layout

    def dataset_shard(self, name: str) -> Any | None:
        return None

    def load_state(self) -> dict[str, Any] | None:
        if not self.resume:
            return None
        state = self.layout.load_latest()
        if self.is_main:
            self.layout.restore_metrics(state)
        return state

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        """Checkpoint first, then the metrics line, so metrics never run ahead of a checkpoint."""
        if self.is_main:
            if state is not None:
                self.layout.save_checkpoint(state, keep=self.keep)
            self.layout.append_metrics(metrics)

    def checkpoint_mid_epoch(self, state: dict[str, Any]) -> None:
        """A checkpoint inside an epoch (``state['position']``); no metrics line: the epoch is not done."""
        if self.is_main:
            self.layout.save_mid_epoch(state, keep=self.keep)


@contextmanager
def checkpoint_dir(state: dict[str, Any], metrics: dict[str, Any]) -> Iterator[str]:
    """A temporary directory holding ``state.pt`` and ``metrics.json``, for Ray to persist."""
    with tempfile.TemporaryDirectory(prefix="jigclu-ckpt-") as tmp:
        save_checkpoint(state, Path(tmp) / STATE_FILE)
        (Path(tmp) / "metrics.json").write_text(json.dumps({k: jsonable(v) for k, v in metrics.items()}))
        yield tmp


def state_in(directory: str) -> dict[str, Any]:
    """The training state inside a checkpoint directory written by :func:`checkpoint_dir`."""
    return load_checkpoint(Path(directory) / STATE_FILE, map_location="cpu")


__all__ = ["RunContext", "LocalContext", "resolve_device", "checkpoint_dir", "state_in"]
