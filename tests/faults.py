"""Fault injection for tests only: the product contexts carry no test hooks.

* :class:`CrashingContext`: a :class:`~jigclu.context.LocalContext` that "crashes" (raises
  :class:`SimulatedCrash`) right after reporting a given epoch.
* :class:`~ray_faults.KillOnce` (``tests/ray_faults.py``): a Ray Train callback that SIGKILLs one
  worker process once, during the epoch after the one named, like an OOM kill.
"""

from __future__ import annotations

from dataclasses import dataclass
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
