"""SIGTERM under Ray Train (a Ray wrapper module): a worker's, and the driver's.

* :class:`StopOnSigterm`: a Ray Train worker callback that installs jigclu's SIGTERM handler
  (:func:`jigclu.preempt.install_in_worker`) in each worker's main thread, where Python runs
  signal handlers (the training loop runs in another thread and only reads the flag). The loop
  all-reduces the flag every step, so one SIGTERMed worker stops the whole group at the same step;
  rank 0 reports a mid-epoch checkpoint and every worker raises ``Preempted``.
* :class:`DriverSigterm`: the driver's SIGTERM, passed on to the run's workers.

How Ray Train 2.60's controller sees it: a worker group whose workers raised, so it restarts the
group (``scaling.max_failures``, ``FailureConfig.max_failures``), which resumes at that step from
the run directory; with no retries left the driver exits 143. Workers must not return normally
after a stop: the controller would take that for a finished run, also in ``PreemptingState``
(a node drain Ray saw coming). In that state a worker error that is not a preempted worker's
death ends the wait at once, as a worker failure (``max_failures``, not Ray's separate
``max_preemption_failures``): the restart then comes before the drain deadline, from the fresh
checkpoint. (Watching ``ray.train.get_preemption_info()`` for a checkpoint at drain time, before
any SIGTERM, is not done: it is a barrier across workers at every call.)
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from typing import Any

from jigclu.errors import warn
from jigclu.ray_session import init_ray  # noqa: F401  (sets Ray's env defaults before Ray is imported)

import ray  # noqa: E402
from ray.train.v2._internal.execution.callback import WorkerCallback  # noqa: E402

from jigclu.preempt import install_in_worker, stopped_message  # noqa: E402
from jigclu.runs import RunLayout  # noqa: E402


class StopOnSigterm(WorkerCallback):
    """Installs jigclu's SIGTERM handler in each Ray Train worker's main thread (where Python runs
    signal handlers; the loop runs in another thread and reads the flag): the first SIGTERM stops
    the group at the next step with a checkpoint, a second one goes to Ray's handler (exit now)."""

    def after_init_train_context(self) -> None:
        install_in_worker()


def _sigterm_pid(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)


class DriverSigterm:
    """The driver's SIGTERM (its pod evicted, ``docker stop``, its node reclaimed): the run's Train
    workers get SIGTERM too (at once on this node, by a zero-CPU task on any other), so the group
    stops at its next step with a mid-epoch checkpoint, as when a worker is SIGTERMed. Once those
    workers are gone (or after ``wait_s``), Ray Train's own graceful abort, its Ctrl-C path, ends the
    run instead of the controller restarting the group, and the driver exits 143 naming the newest
    checkpoint. A second SIGTERM aborts at once.

    Signal handlers must not raise while the main thread waits in ``ray.get`` (Ray passes only a
    KeyboardInterrupt through), hence the abort through SIGINT. Main thread only."""

    def __init__(self, layout: RunLayout, epochs: int | None, wait_s: float = 90.0) -> None:
        self.layout, self.epochs, self.wait_s = layout, epochs, wait_s
        self.outcome: str | None = None
        self.calls, self.closed, self.previous = 0, False, None

    def __enter__(self) -> "DriverSigterm":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closed = True
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            threading.Thread(target=self._stop_workers, name="jigclu-sigterm", daemon=True).start()
            return
        self.outcome = self.outcome or ("terminated (SIGTERM twice): stopped at once, without a new checkpoint; "
                                        "--resume continues from the last one")
        _thread.interrupt_main(signal.SIGINT)

    def _workers(self) -> list[Any]:
        from ray.util.state import list_actors

        job = ray.get_runtime_context().get_job_id()
        mine = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"), ("job_id", "=", job)]
        return list_actors(filters=mine, limit=1000, raise_on_missing_output=False)

    def _stop_workers(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        deadline, told = time.monotonic() + self.wait_s, set()
        try:
            actors, here = self._workers(), ray.get_runtime_context().get_node_id()
            for actor in actors:  # on this node at once; elsewhere a task has to start first
                if actor.node_id == here:
                    _sigterm_pid(actor.pid)
            kill = ray.remote(num_cpus=0, max_retries=0)(_sigterm_pid)
            ray.get([kill.options(scheduling_strategy=NodeAffinitySchedulingStrategy(a.node_id, soft=False))
                     .remote(a.pid) for a in actors if a.node_id != here], timeout=30)
            told = {a.actor_id for a in actors}
            # they stop at a step, checkpoint and raise; the controller then ends that worker group
            while not self.closed and time.monotonic() < deadline and told & {a.actor_id for a in self._workers()}:
                time.sleep(0.5)
        except Exception as exc:  # noqa: BLE001 - no State API, a node already gone: leave with what is saved
            warn(f"could not pass SIGTERM on to the Ray Train workers ({type(exc).__name__})")
        points = self.layout.resume_points()
        if told and time.monotonic() < deadline and points:
            (epoch, step), _file = points[0]
            message = stopped_message({"epoch": epoch, "step": step}, self.epochs, None)
        else:
            message = ("terminated (SIGTERM): the workers did not stop in time; --resume continues from the last "
                       "checkpoint")
        self.outcome = self.outcome or message
        if not self.closed:
            _thread.interrupt_main(signal.SIGINT)


__all__ = ["StopOnSigterm", "DriverSigterm"]
