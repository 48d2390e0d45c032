"""Fault injection into a Ray Train run, for tests only (the product has no test hooks).

:class:`KillOnce` is a Ray Train callback (``launch_ray(..., callbacks=[KillOnce(...)])``, the run's
``RunConfig.callbacks``): Ray copies it into every worker and enters its ``on_report`` around each of the
worker's ``ray.train.report`` calls, so it can SIGKILL one worker right after a given epoch's report, as
an OOM kill would.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ray.cloudpickle
from ray.train.v2._internal.execution.callback import TrainContextCallback


@dataclass
class KillOnce(TrainContextCallback):
    """SIGKILL worker ``rank`` once, after it reported ``epoch``; ``marker`` records the time.

    Reports are counted per worker: in a run that starts fresh (every test's), a worker's report n is
    epoch n. With ``run_dir`` (a local run directory) it dies once Ray Train has registered that
    epoch's checkpoint (Ray rewrites ``checkpoint_manager_snapshot.json`` on each registration), so
    the resume point a test expects is certain; without, after three health-check intervals.
    """

    epoch: int
    rank: int
    marker: str
    run_dir: str | None = None
    reports: int = 0  # this worker's so far (each worker holds its own copy)

    def __post_init__(self) -> None:
        # Ray workers cannot import this test module: ship its code with the callback
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def _registered(self) -> bool:
        try:
            snapshot = json.loads((Path(self.run_dir) / "checkpoint_manager_snapshot.json").read_text())
            name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being rewritten
            return False
        return name == f"checkpoint_epoch_{self.epoch:05d}"

    @contextmanager
    def on_report(self) -> Iterator[None]:
        yield
        epoch, self.reports = self.reports, self.reports + 1
        if epoch != self.epoch or ray.train.get_context().get_world_rank() != self.rank or os.path.exists(self.marker):
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
