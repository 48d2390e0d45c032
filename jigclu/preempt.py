"""Preemption: SIGTERM asks a training run to stop at its next step, with a checkpoint.

Cloud nodes are mostly lost to spot preemption or pod eviction: SIGTERM, then SIGKILL 30 s to
2 min later. Python's default reaction to SIGTERM is to die on the spot, losing everything since
the last whole-epoch checkpoint. Here the first SIGTERM only sets a flag; the training loop
(:mod:`jigclu.trainers.loop`) looks at it after every step, writes a mid-epoch checkpoint that
records its data position, and raises :class:`Preempted`, which the CLI prints as one line and
turns into exit status 143 (128 + SIGTERM, what a shell reports for a process SIGTERM killed).

A second SIGTERM means "now": in a plain process it raises :class:`TerminatedAtOnce` in the main
thread, so a checkpoint being written is abandoned cleanly (its temporary file removed, the
previous checkpoint kept); in a Ray Train worker it runs Ray's own handler (the worker exits). So
does a SIGTERM during a plain process's start-up, before its first step: there is nothing to save.
Ctrl-C (SIGINT) keeps its meaning: stop at once, no checkpoint.

The grace period a SIGTERM needs is one step plus one checkpoint write (or, when it lands in an
epoch's end-of-epoch evaluation, the rest of that evaluation plus the epoch's checkpoint).

Python runs signal handlers in the main thread only, so the handler is installed from there:
by :func:`jigclu.launch.launch` around a plain-process run, and by a Ray Train worker callback
(:mod:`jigclu.ray_preempt`) in each worker's main thread (the loop runs in another thread there;
it only reads the flag). No Ray here.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from jigclu.errors import JigcluError

EXIT_TERMINATED = 128 + int(signal.SIGTERM)  # 143


class Preempted(JigcluError):
    """Training stopped on SIGTERM after saving where it was; ``--resume`` continues from there."""


class TerminatedAtOnce(BaseException):
    """Stop now, saving nothing: a second SIGTERM, or one while there is nothing to save yet
    (start-up). A BaseException (like KeyboardInterrupt), so that no ``except Exception`` on the
    way up (a data loader's, say) swallows it; its message is the line the CLI prints."""


class _Request:
    """What the signal handler leaves for the loop (written in the main thread, read anywhere)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.wakeup: int | None = None  # read end of the signal wakeup pipe (Ray Train workers)
        self.training = False  # a step may have run since the last checkpoint (else: nothing to save)

    def set(self, name: str) -> None:
        if self.name is None:
            self.name = name

    def clear(self) -> None:
        self.name = None
        self.training = False


_REQUEST = _Request()


def requested() -> str | None:
    """The signal that asked this process to stop (``"SIGTERM"``), or None."""
    if _REQUEST.name is None and _REQUEST.wakeup is not None:
        try:
            arrived = os.read(_REQUEST.wakeup, 512)
        except (BlockingIOError, OSError):
            arrived = b""
        if int(signal.SIGTERM) in arrived:
            _REQUEST.set("SIGTERM")
    return _REQUEST.name


def training_started() -> None:
    """Called by the loop before its first step: from now on a SIGTERM waits for the step in flight
    and a checkpoint; before, in a plain process, it stops at once (start-up can take a while at
    scale, loading data and scoring the random-init baseline, and has nothing to save)."""
    _REQUEST.training = True


def request_stop(name: str = "SIGTERM") -> None:
    """Ask the loop to stop at its next step, as SIGTERM does (tests: a stop at an exact step)."""
    _REQUEST.set(name)


def _handler(on_repeat: Callable[[int, Any], None], idle: Callable[[int, Any], None] | None = None
             ) -> Callable[[int, Any], None]:
    """First signal: a stop request (or ``idle`` while the loop has not started training); then
    ``on_repeat``."""
    calls = 0  # its own count: the wakeup pipe may have set the request before the first call

    def handle(signum: int, frame: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            on_repeat(signum, frame)
        elif idle is not None and not _REQUEST.training:
            idle(signum, frame)
        else:
            _REQUEST.set(signal.Signals(signum).name)

    return handle


def _raise_at_once(signum: int, frame: Any) -> None:
    raise TerminatedAtOnce(f"terminated ({signal.Signals(signum).name} twice): stopped at once, without a new "
                           f"checkpoint; --resume continues from the last one")


def _raise_idle(signum: int, frame: Any) -> None:
    raise TerminatedAtOnce(f"terminated ({signal.Signals(signum).name}) during start-up, before the first step: "
                           f"nothing new to save")


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While inside: the first SIGTERM asks the loop to stop at its next step (before the loop trains,
    it raises :class:`TerminatedAtOnce`: nothing to save), a second one raises
    :class:`TerminatedAtOnce`. The previous handler and a clear flag are restored on the way out.
    Outside the main thread (a thread cannot install handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _REQUEST.clear()
    previous = signal.signal(signal.SIGTERM, _handler(_raise_at_once, _raise_idle))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _REQUEST.clear()


def install_in_worker() -> None:
    """In a worker process's main thread (a Ray Train worker): the first SIGTERM asks the loop to
    stop at its next step; a second one goes to the handler that was there before (Ray's: exit).

    A Ray worker's main thread waits in Ray's C++ task loop and runs Python signal handlers only
    when the controller next polls it (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: 0.25 s by jigclu's default).
    So that the loop need not wait for that, the signal is also written to a wakeup pipe
    (``signal.set_wakeup_fd``, done by CPython at delivery) that :func:`requested` reads. Two
    SIGTERMs that arrive before the main thread runs Python count as one.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def chain(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: die as the signal would have killed us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    _REQUEST.clear()
    signal.signal(signal.SIGTERM, _handler(chain))
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    theirs = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    if theirs != -1:  # an event loop's already: leave it be, the handler alone will do
        signal.set_wakeup_fd(theirs)
        os.close(read)
        os.close(write)
        return
    _REQUEST.wakeup = read


def ignore_in_loader_worker(_worker_id: int) -> None:
    """``worker_init_fn`` of DataLoader worker processes: SIGTERM sent to the whole process group
    (``kill -TERM -PGID``, some container inits) must not kill a data worker mid-batch, which would
    fail the main process's step before it can checkpoint; the main process ends its workers."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stopped_message(position: dict[str, Any], epochs: int | None, steps: int | None) -> str:
    """The one line the CLI prints after a stop: where the checkpoint is and how to go on."""
    signame = requested() or "SIGTERM"
    epoch, step = int(position["epoch"]), int(position["step"])
    of_epochs, of_steps = (f"/{epochs}" if epochs else ""), (f"/{steps}" if steps else "")
    if step == 0:
        where = f"checkpoint at the end of epoch {epoch}{of_epochs} saved"
    else:
        where = f"checkpoint in epoch {epoch + 1}{of_epochs} after step {step}{of_steps} saved"
    return f"terminated ({signame}): {where}; --resume continues from there"


__all__ = ["EXIT_TERMINATED", "Preempted", "TerminatedAtOnce", "requested", "training_started", "request_stop",
           "stop_on_sigterm", "install_in_worker", "ignore_in_loader_worker", "stopped_message"]
