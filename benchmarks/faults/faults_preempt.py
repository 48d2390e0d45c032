"""The fault matrix's preemption rows (``benchmarks/faults/fault_matrix.py``): SIGTERM mid-epoch, as a spot
reclaim or a pod eviction sends it, to a single-process run and to one Ray Train worker.

What a user relies on after a SIGTERM: the run stops within one step and one checkpoint write
(the grace period, measured here from the signal to the process's exit), exits 143 with one line
saying where its checkpoint is, and ``--resume`` continues from that step, so no completed epoch
and no step of the stopped one is trained again. Ray Train workers stop together and Ray Train's
own restart continues from the step. :func:`sigterm_once` and :func:`sigterm_twice` also serve
``tests/test_preemption.py``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.faults.fault_kit import Command, Row, judge, pretrain_args, resume, wait_for_epochs
from benchmarks.harness import common
from jigclu import storage
from jigclu.runs import RunLayout

EPOCHS, STEPS = 4, 24  # a longer epoch than the other rows': a SIGTERM lands mid-epoch, not at its end
TWICE_EPOCHS = 3
ARGS = [f"train.epochs={EPOCHS}", f"train.steps_per_epoch={STEPS}", f"data.limit={STEPS * 32}"]


@dataclass
class Stopped:
    """What a SIGTERMed run left: its exit, stderr, newest state, stray temporary files, the resume."""

    run_dir: str
    code: int = -1
    stderr: str = ""
    grace_s: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)
    temp_files: list[str] = field(default_factory=list)
    resumed_code: int | None = None
    straight_dir: str | None = None
    tries: int = 0
    before: list[int] = field(default_factory=list)  # the epochs in metrics.jsonl when it stopped


def temp_files(run_dir: str) -> list[str]:
    """Half-written checkpoints (the atomic writer's ``.NAME.*.tmp.pt``) left in the run directory."""
    folder = storage.join(run_dir, "checkpoints")
    names = storage.list_dir(folder) if storage.is_dir(folder) else []
    return [n for n in names if n.startswith(".") or ".tmp" in n]


def _sigterm(cmd: Command, run_dir: str, done: int, fraction: float, per_epoch: float | None,
             twice_after: float | None = None, group: bool = False) -> tuple[int, float, float]:
    """Once ``done`` epochs are reported, wait ``fraction`` of an epoch and SIGTERM ``cmd`` (its whole
    process group with ``group``; again ``twice_after`` s later); returns (exit code, seconds per
    epoch, seconds from SIGTERM to exit)."""
    measured = wait_for_epochs(run_dir, done, cmd)
    per_epoch = per_epoch or measured
    time.sleep(fraction * per_epoch)
    t0 = time.time()
    if group:  # as some container inits and `kill -TERM -PGID` do: DataLoader workers get it too
        os.killpg(cmd.proc.pid, signal.SIGTERM)
    else:
        cmd.proc.send_signal(signal.SIGTERM)
    if twice_after is not None:
        time.sleep(twice_after)
        cmd.proc.send_signal(signal.SIGTERM)
    code = cmd.wait(120)
    return code, per_epoch, time.time() - t0


def sigterm_once(work: Path, fraction: float = 0.4, straight: bool = False, name: str = "term",
                 extra: tuple[str, ...] = (), group: bool = False) -> Stopped:
    """SIGTERM a pretraining run ``fraction`` into its third epoch, then ``--resume`` it. A stop that
    still lands at an epoch's end (a loaded machine) is resumed and SIGTERMed again (3 tries).
    ``straight``: an uninterrupted twin runs alongside, to compare the final weights with; ``extra``:
    more overrides; ``group``: signal the whole process group."""
    args, run_dir = pretrain_args(str(work), name, *ARGS, *extra), str(work / name)
    out = Stopped(run_dir)
    twin = None
    if straight:
        twin = Command(pretrain_args(str(work), f"{name}-straight", *ARGS), work)
        out.straight_dir = str(work / f"{name}-straight")
    cmd, per_epoch = Command(args, work), None
    for out.tries in range(1, 4):
        done = len(RunLayout(run_dir).read_metrics()) + (2 if out.tries == 1 else 1)
        out.code, per_epoch, out.grace_s = _sigterm(cmd, run_dir, done, fraction, per_epoch, group=group)
        out.stderr = cmd.stderr
        out.state = RunLayout(run_dir).load_latest() or {}
        if out.code != 143 or "position" in out.state or out.tries == 3:
            break
        cmd = Command([*args, "--resume"], work)
    out.temp_files, out.before = temp_files(run_dir), [m["epoch"] for m in RunLayout(run_dir).read_metrics()]
    out.resumed_code, _ = resume(args, work)
    if twin is not None:
        assert twin.wait(300) == 0, twin.stderr
    return out


def sigterm_twice(work: Path) -> Stopped:
    """SIGTERM twice, 0.25 s apart, inside one long step (a wider model, a bigger batch): the second
    one stops at once, without the checkpoint; then ``--resume``."""
    # a step of ~1 s on AVX-512 (3 s on AVX2): batch 96 at width 16 took 0.26 s, and a second SIGTERM
    # 0.25 s after the first then came after the stop (the process exited on it: -15, not 143)
    big = ["data.batch_size=192", "model.width=24", "train.steps_per_epoch=2", "data.limit=384",
           f"train.epochs={TWICE_EPOCHS}"]
    args, run_dir = pretrain_args(str(work), "twice", *big), str(work / "twice")
    out = Stopped(run_dir)
    cmd = Command(args, work)
    # right as epoch 2 of 3 starts; 0.25 s apart: longer than any one torch op here (two signals
    # before the Python handler runs count as one), shorter than a step of this size (about 1 s)
    out.code, _, out.grace_s = _sigterm(cmd, run_dir, 1, 0.0, 1.0, twice_after=0.25)
    out.stderr, out.temp_files = cmd.stderr, temp_files(run_dir)
    out.state = RunLayout(run_dir).load_latest() or {}
    out.resumed_code, _ = resume(args, work)
    return out


def sigterm_at_start(work: Path) -> Stopped:
    """SIGTERM once the run directory exists (its config written) but before the first step: the
    kNN monitor's random-init baseline on a wide model keeps start-up busy for a few seconds."""
    slow_start = ["monitor.knn=true", "monitor.train_limit=1500", "monitor.test_limit=200", "model.width=32"]
    args, run_dir = pretrain_args(str(work), "early", *slow_start), str(work / "early")
    out = Stopped(run_dir)
    cmd = Command(args, work)
    deadline = time.time() + 120
    while not storage.is_file(storage.join(run_dir, "config.yaml")) and time.time() < deadline \
            and cmd.proc.poll() is None:
        time.sleep(0.02)
    t0 = time.time()
    cmd.proc.send_signal(signal.SIGTERM)
    out.code, out.grace_s, out.stderr = cmd.wait(120), time.time() - t0, cmd.stderr
    return out


def row_sigterm(work: Path, rng: random.Random) -> Row:
    """SIGTERM of a single-process run mid-epoch, then the same command with --resume."""
    row, t0 = Row("SIGTERM mid-epoch", "pretrain, 1 process"), time.time()
    out = sigterm_once(work, fraction=rng.uniform(0.2, 0.7))
    position = out.state.get("position") or {}
    row.outcome = (f"exit {out.code} {out.grace_s:.1f} s after SIGTERM, at epoch {position.get('epoch', -1) + 1} "
                   f"step {position.get('step')}; resumed, exit {out.resumed_code}")
    row = judge(row, out.run_dir, out.before, out.stderr, epochs=EPOCHS)
    metrics = RunLayout(out.run_dir).read_metrics()
    at_step = [m.get("resumed_at_step") for m in metrics if m["epoch"] == position.get("epoch")]
    row.ok = (row.ok and out.code == 143 and out.resumed_code == 0 and row.redone == 0 and not out.temp_files
              and bool(position) and at_step == [position.get("step")])
    row.seconds = time.time() - t0
    return row


def resumed_epochs(run_dir: str) -> list[tuple[int, int]]:
    """``(epoch, step)`` of every epoch a mid-epoch checkpoint resumed (its metrics line says so)."""
    return [(m["epoch"], m["resumed_at_step"]) for m in RunLayout(run_dir).read_metrics() if m.get("resumed_at_step")]


def row_sigterm_ray_worker(work: Path, rng: random.Random, address: str | None = None) -> Row:
    """SIGTERM of one of 2 Ray Train workers in the last epoch: the group stops at one step, rank 0
    reports a mid-epoch checkpoint, Ray Train restarts the group, which continues from that step. With
    ``train.keep_checkpoints=2`` Ray keeps the last two epoch checkpoints, not the mid-epoch one in
    their place. ``address``: join that cluster (a test's Ray) instead of starting one."""
    from benchmarks.faults import faults_ray

    row, t0 = Row("SIGTERM of a Ray Train worker mid-epoch", "pretrain, 2 Ray Train workers"), time.time()
    name = "rterm"
    args = pretrain_args(str(work), name, *ARGS, "scaling.workers=2", "train.keep_checkpoints=2")
    run_dir = str(work / name)
    if address:
        from jigclu.ray_session import _LOOPBACK_ENV

        cmd = Command([*args, "--address", address], work, {_LOOPBACK_ENV: "0"})
    else:
        cmd = Command(args, work)

    def victim() -> int:
        if address is None:
            return rng.choice(faults_ray.train_workers(cmd.proc.pid)).pid
        import ray

        own = ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
        return rng.choice(faults_ray.cluster_workers(address, exclude_job=own))

    try:
        per_epoch = wait_for_epochs(run_dir, EPOCHS - 1, cmd, timeout=400)
        time.sleep(rng.uniform(0.1, 0.4) * per_epoch)
        os.kill(victim(), signal.SIGTERM)
        code = cmd.wait(600)
    finally:
        cmd.kill()
    kept = sorted(n for n in storage.list_dir(run_dir) if n.startswith(("checkpoint_epoch_", "checkpoint_mid_epoch_")))
    last_two = [f"checkpoint_epoch_{e:05d}" for e in (EPOCHS - 2, EPOCHS - 1)]
    resumed = resumed_epochs(run_dir)
    row.outcome = (f"finished; stopped at epoch {resumed[0][0] + 1} step {resumed[0][1]}, restarted there"
                   if code == 0 and resumed else f"exit {code}; resumed {resumed}")
    row = judge(row, run_dir, [], cmd.stderr, epochs=EPOCHS)
    if kept != last_two:
        row.checkpoints += f"; Ray kept {kept}"
    row.ok = (row.ok and code == 0 and [e for e, _step in resumed] == [EPOCHS - 1] and row.redone == 0
              and kept == last_two)
    row.seconds = time.time() - t0
    return row


def row_sigterm_ray_driver(work: Path, rng: random.Random, address: str | None = None) -> Row:
    """SIGTERM of the driver of a 2-worker Ray Train run (its pod evicted): the workers are told,
    stop at one step with a mid-epoch checkpoint, the driver exits 143; ``--resume`` continues there."""
    row, t0 = Row("SIGTERM of the Ray Train driver mid-epoch", "pretrain, 2 Ray Train workers"), time.time()
    name = "dterm"
    args = pretrain_args(str(work), name, *ARGS, "scaling.workers=2", "train.keep_checkpoints=100")
    run_dir, env = str(work / name), None
    if address:
        from jigclu.ray_session import _LOOPBACK_ENV

        args, env = [*args, "--address", address], {_LOOPBACK_ENV: "0"}
    cmd = Command(args, work, env)
    try:
        code, _per_epoch, grace = _sigterm(cmd, run_dir, 2, rng.uniform(0.2, 0.6), None)
    finally:
        cmd.kill()
    before, err = [m["epoch"] for m in RunLayout(run_dir).read_metrics()], cmd.stderr
    state = RunLayout(run_dir).load_latest() or {}
    rcode, _ = resume(args, work, env)
    position = state.get("position") or {}
    resumed = resumed_epochs(run_dir)
    # the workers stop at the next step, or at the end of the epoch when the signal reaches them there
    # (a loaded machine): then the checkpoint is the epoch's own and the resume starts the next one
    where = (f"epoch {position['epoch'] + 1} step {position.get('step')}" if position else
             f"the end of epoch {int(state.get('epoch', -1)) + 1}")
    row.outcome = f"exit {code} {grace:.0f} s after SIGTERM, at {where}; resumed, exit {rcode}"
    row = judge(row, run_dir, before, err, epochs=EPOCHS)
    row.ok = (row.ok and code == 143 and rcode == 0 and row.redone == 0 and "terminated (SIGTERM)" in err
              and resumed == ([(position.get("epoch"), position.get("step"))] if position else []))
    row.seconds = time.time() - t0
    return row


def grace_period(work: Path, config: str = "configs/demo.yaml", fraction: float = 0.5) -> dict[str, Any]:
    """The grace period a SIGTERM needs at ``config``: seconds from the signal to the process's exit
    (the step in flight, the checkpoint write, the interpreter's exit), SIGTERMed ``fraction`` into
    its second epoch with the machine's default threads; with the epoch's step time for scale."""
    import torch

    args = ["pretrain", "--no-progress", "--config", str(common.REPO_ROOT / config),
            f"output_dir={work}", "name=grace"]
    cmd = Command(args, work, {"OMP_NUM_THREADS": str(torch.get_num_threads())})
    run_dir = str(work / "grace")
    wait_for_epochs(run_dir, 1, cmd, timeout=900)
    metrics = RunLayout(run_dir).read_metrics()[0]
    code, _per_epoch, grace = _sigterm(cmd, run_dir, 1, fraction, metrics["epoch_time_s"])
    signalled = time.time() - grace
    (_position, file), *_ = RunLayout(run_dir).resume_points()
    state = RunLayout(run_dir).load_latest() or {}
    steps = state.get("global_step", 0) - metrics["step"]
    return {"exit": code, "grace_s": round(grace, 2), "checkpoint_written_after_s": round(
                os.path.getmtime(file) - signalled, 2), "position": state.get("position"),
            "step_s": round(metrics["epoch_time_s"] / metrics["step"], 3), "steps_after_epoch_1": steps,
            "stderr": cmd.stderr.strip(), "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


if __name__ == "__main__":  # python -m benchmarks.faults.faults_preempt: the grace period at configs/demo.yaml
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description="the grace period a SIGTERM needs (printed as JSON)")
    parser.add_argument("config", nargs="?", default="configs/demo.yaml", help="relative to the repository root")
    with tempfile.TemporaryDirectory(prefix="jf-grace-") as tmp:
        print(json.dumps(grace_period(Path(tmp), parser.parse_args().config), indent=1))
