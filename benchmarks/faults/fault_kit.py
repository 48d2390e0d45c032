"""How a fault-matrix row runs jigclu and judges what the fault left (``benchmarks/faults/fault_matrix.py``).

A row starts the real ``jigclu`` command in a child process of its own session, injects its
fault from outside, and then checks the run with :func:`judge`: completed epochs trained twice
(``redone``), every retained checkpoint loads with no temporary file beside them, what stderr
showed, and whether any epoch's metrics or the final checkpoint is missing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import common
from jigclu import storage
from jigclu.checkpoint import load_checkpoint
from jigclu.errors import JigcluError
from jigclu.runs import RunLayout

# a small real pretraining run: digits at 32 px, 8 steps of 32 images per epoch
TINY = ["data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=256", "model.width=8",
        "jigsaw.crop_size=32", "monitor.knn=false", "optim.lr=0.2", "train.steps_per_epoch=8"]
EPOCHS = 6


@dataclass
class Row:
    fault: str
    run: str
    outcome: str = "?"
    redone: int | None = None
    checkpoints: str = "?"
    user_saw: str = "?"
    data_lost: str = "?"
    seconds: float = 0.0
    ok: bool = False
    epochs: tuple[int, ...] = ()  # the final metrics' epoch sequence (for a failing test's message)

    def cells(self) -> list[str]:
        return [self.fault, self.run, self.outcome, "-" if self.redone is None else str(self.redone),
                self.checkpoints, self.user_saw, self.data_lost, f"{self.seconds:.0f} s", common.verdict(self.ok)]


COLUMNS = ["fault (injected from outside)", "run", "outcome", "epochs redone", "checkpoints", "user saw",
           "data lost", "time", "target"]


class Command:
    """``jigclu <args>`` in a child process of its own session (killable as a group).

    A child in its own session outlives a test that fails or times out: every Command is listed in
    :attr:`live` until it is waited for, and :meth:`kill_all` (a fixture in ``tests/conftest.py``)
    kills whatever a test left running.
    """

    live: set["Command"] = set()

    @classmethod
    def kill_all(cls) -> int:
        left = [cmd for cmd in cls.live if cmd.proc.poll() is None]
        for cmd in left:
            cmd.kill()
        cls.live.clear()
        return len(left)

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.err_path = cwd / f"stderr-{time.time_ns()}.txt"
        self._err = open(self.err_path, "w")
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "jigclu.cli", *args], cwd=cwd, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=self._err, start_new_session=True)
        Command.live.add(self)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._err.close()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        Command.live.discard(self)

    @property
    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.err_path.read_text()


def epochs_of(run_dir: str) -> list[int]:
    try:
        return [m["epoch"] for m in RunLayout(run_dir).read_metrics()]
    except (JigcluError, ValueError):  # a torn line or an unreachable store: not there yet
        return []


def wait_for_epochs(run_dir: str, n: int, cmd: Command, timeout: float = 300) -> float:
    """Block until ``n`` epochs are reported; returns the mean seconds per epoch after the first."""
    deadline, seen = time.time() + timeout, {}
    while time.time() < deadline:
        done = len(epochs_of(run_dir))
        seen.setdefault(done, time.time())
        if done >= n:
            firsts = [seen[k] for k in sorted(seen) if k >= 1]
            return (firsts[-1] - firsts[0]) / max(1, len(firsts) - 1) if len(firsts) > 1 else 2.0
        if cmd.proc.poll() is not None:
            raise RuntimeError(f"jigclu exited ({cmd.proc.returncode}) before epoch {n}: {cmd.stderr[-500:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no epoch {n} in {run_dir} after {timeout:.0f} s")


def check_checkpoints(run_dir: str) -> tuple[bool, str]:
    """Every retained checkpoint loads and no temporary file lies beside them."""
    layout = RunLayout(run_dir)
    found = layout.checkpoints()
    bad = []
    for _epoch, file in found:
        try:
            load_checkpoint(file)
        except JigcluError:
            bad.append(file.rsplit("/", 1)[-1])
    ckdir = storage.join(run_dir, "checkpoints")
    stray = [n for n in storage.list_dir(ckdir) if not n.endswith(".pt")] if storage.is_dir(ckdir) else []
    ok = bool(found) and not bad and not stray
    text = f"{len(found) - len(bad)}/{len(found)} load"
    text += f", {len(stray)} temp file(s) left" if stray else ""
    return ok, text + (f" (unreadable: {', '.join(bad)})" if bad else "")


def user_saw(stderr: str) -> tuple[bool, str]:
    """What stderr showed, shortened; ok when it is at most two lines and holds no traceback."""
    # paths shortened to their last part (and no path of this machine in RESULTS.md)
    stderr = re.sub(r"(\w+://)(?:[\w.-]+/)+", r"\1…/", common.scrub(stderr))
    stderr = re.sub(r"(?<![\w:/])/?(?:[\w.<>~-]+/)+([\w.-]+)", r"…/\1", stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return True, "nothing"
    traceback = any(ln.startswith("Traceback") for ln in lines)
    first = lines[0] if len(lines[0]) <= 90 else lines[0][:87] + "..."
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return (len(lines) <= 2 and not traceback), f"`{first}`{more}" + (", traceback" if traceback else "")


def judge(row: Row, run_dir: str, before: list[int], faulted_err: str, epochs: int = EPOCHS) -> Row:
    """Fill the row's checks from the finished run and the faulted command's stderr."""
    after = epochs_of(run_dir)
    row.epochs = tuple(after)
    row.redone = len(after) - len(set(after))
    ok_ckpt, row.checkpoints = check_checkpoints(run_dir)
    ok_saw, row.user_saw = user_saw(faulted_err)
    last = RunLayout(run_dir).checkpoints()
    lost = []
    if after[:len(before)] != before:
        lost.append("metrics lines before the fault changed")
    if sorted(set(after)) != list(range(epochs)):
        lost.append(f"epochs {sorted(set(range(epochs)) - set(after))} missing")
    if not last or last[0][0] != epochs - 1:
        lost.append("final checkpoint missing")
    row.data_lost = "; ".join(lost) or "none"
    row.ok = row.redone <= 1 and ok_ckpt and ok_saw and not lost and row.outcome != "failed"
    return row


def resume(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    cmd = Command([*args, "--resume"], cwd, env)
    return cmd.wait(), cmd.stderr


def pretrain_args(out: str, name: str, *extra: str) -> list[str]:
    return ["pretrain", "--no-progress", *TINY, f"train.epochs={EPOCHS}", f"output_dir={out}", f"name={name}",
            *extra]
