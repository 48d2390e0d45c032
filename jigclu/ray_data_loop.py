"""Ray Data's scheduling loop, made to wait while it has nothing to do.

Ray Data's streaming executor blocks (``ray.wait``, 0.1 s at most) on its running tasks, and a
task whose outputs backpressure leaves unread is ready at once. So while backpressure holds the
stream back, which is most of a run whose training is slower than its decoding (and all of a
capped epoch once its read-ahead is full), the loop spins: 31-38 CPU seconds of the
``SplitCoordinator`` actor over two 50-step epochs of a 120,000-image source on 2 cores (``make
bench-stream``, AVX512), 5 with this callback; CPU taken from the training workers. :class:`IdleWait`, an execution
callback the stream's dataset carries to the coordinator, sleeps a moment after each step in
which nothing moved: a consumer that frees room waits at most that long for the next decode.

Imported by the coordinator's process when it unpickles the dataset, so it imports nothing but
Ray (not torch: :mod:`jigclu.ray_data` does).
"""

from __future__ import annotations

import time
from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback

IDLE_WAIT_S = 0.02


class IdleWait(ExecutionCallback):
    """After a scheduling step in which nothing moved (no input taken, task submitted or finished,
    output made or taken), sleep :data:`IDLE_WAIT_S`. "No task running" is not the test: a task
    whose outputs backpressure leaves unread stays active, and ``ray.wait`` on it returns at once."""

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple | None = None

    def on_execution_step(self, executor: Any) -> None:
        topology = getattr(executor, "_topology", None)  # private: without it, no wait (Ray's own loop)
        if not topology:
            return
        now = tuple((m.num_inputs_received, m.num_tasks_submitted, m.num_tasks_finished, m.num_task_outputs_generated,
                     m.num_outputs_taken) for m in (op.metrics for op in topology))
        if now == self._last:
            _wait()
        self._last = now


def _wait() -> None:
    time.sleep(IDLE_WAIT_S)


__all__ = ["IDLE_WAIT_S", "IdleWait"]
