"""Where a trainer writes and how it reports: one loop, three ways to run it.

A trainer is a function of (validated config, run context). The context decides where
checkpoints go, how metrics are reported and how a run resumes:

* :class:`LocalContext`: a plain process (laptop, one GPU, tests). Checkpoints in
  ``<run_dir>/checkpoints/last.pt``, metrics appended to ``<run_dir>/metrics.jsonl``.
* ``RayTrainContext`` (``jigclu.ray_train``): the same, reported through ``ray.train.report``
  so Ray Train persists checkpoints to its storage and Ray Tune sees the metrics.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jigclu import dist
from jigclu.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the GPU when there is one; ``cuda`` without a GPU is a clear error."""
    from jigclu.errors import ConfigError

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={spec} but no CUDA GPU is visible to this process")
    return torch.device(spec)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class LocalContext:
    """Run context of a plain process: files in ``run_dir``, resume from its last checkpoint."""

    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume: bool = False
    progress: bool = True
    verbose: bool = False
    stop_after_epoch: int | None = None  # fault injection for tests: "crash" after this epoch
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def is_main(self) -> bool:
        return dist.rank() == 0

    def load_state(self) -> dict[str, Any] | None:
        """The state to resume from, or None for a fresh start."""
        if self.resume and self.checkpoint_path.is_file():
            return load_checkpoint(self.checkpoint_path, map_location="cpu")
        return None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        """Persist the checkpoint first, then the metrics line, so metrics never run ahead."""
        if self.is_main:
            if state is not None:
                save_checkpoint(state, self.checkpoint_path)
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps({k: _jsonable(v) for k, v in metrics.items()}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        if self.stop_after_epoch is not None and metrics.get("epoch") == self.stop_after_epoch:
            raise SimulatedCrash(f"stopped after epoch {self.stop_after_epoch} (test fault injection)")


class SimulatedCrash(RuntimeError):
    """Raised by a context configured to stop mid-run; tests use it to simulate a crash."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All metric records of a run, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
