"""Fault injection for tests only: the product contexts carry no test hooks.

* :class:`CrashingContext`: a :class:`~jigclu.context.LocalContext` that "crashes" (raises
  :class:`SimulatedCrash`) right after reporting a given epoch.
* :class:`KillOnce`: a Ray Train report hook (``launch_ray(after_report=...)``) that SIGKILLs
  one worker process once, during the epoch after the one named, like an OOM kill.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jigclu.context import LocalContext


class SimulatedCrash(RuntimeError):
    """Raised by :class:`CrashingContext` to simulate a crash mid-run."""


@dataclass
class CrashingContext(LocalContext):
    stop_after_epoch: int | None = None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        super().report(metrics, state)
        if metrics.get("epoch") == self.stop_after_epoch:
            raise SimulatedCrash(f"stopped after epoch {self.stop_after_epoch} (test fault injection)")


@dataclass
class KillOnce:
    """SIGKILL worker ``rank`` once, after it reported ``epoch``; ``marker`` records the time.

    With ``run_dir`` (a local run directory) it dies once Ray Train has registered that epoch's
    checkpoint (Ray rewrites ``checkpoint_manager_snapshot.json`` on each registration), so the
    resume point a test expects is certain; without, after three health-check intervals.
    """

    epoch: int
    rank: int
    marker: str
    run_dir: str | None = None

    def __post_init__(self) -> None:
        # Ray workers cannot import this test module: ship its code with the hook
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def _registered(self) -> bool:
        import json

        try:
            snapshot = json.loads((Path(self.run_dir) / "checkpoint_manager_snapshot.json").read_text())
            name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being rewritten
            return False
        return name == f"checkpoint_epoch_{self.epoch:05d}"

    def __call__(self, metrics: dict[str, Any], rank: int) -> None:
        if metrics.get("epoch") != self.epoch or rank != self.rank or os.path.exists(self.marker):
            return
        # Die during the next epoch, once the controller has collected this epoch's report, as a
        # real crash mid-epoch would.
        if self.run_dir is None:
            time.sleep(float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")) * 3)
        else:
            deadline = time.time() + 60
            while not self._registered() and time.time() < deadline:
                time.sleep(0.1)
        Path(self.marker).write_text(str(time.time()))
        os.kill(os.getpid(), 9)
