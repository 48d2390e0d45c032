"""The fault matrix's Ray rows (``benchmarks/faults/fault_matrix.py``): a Train worker, a node, a sweep driver.

Each starts the real ``jigclu`` command, finds its victim from outside (by process, as an OOM
killer or a failing machine would) and SIGKILLs it at a random moment.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sqlite3
import time
from pathlib import Path

import psutil

from benchmarks.faults.fault_kit import Command, Row, epochs_of, judge, pretrain_args, user_saw, wait_for_epochs
from benchmarks.harness import cluster_box, common

WORKER_TITLE = "ray::RayTrainWorker"
SWEEP = common.REPO_ROOT / "tune" / "configs" / "pretrain_digits.yaml"
SWEEP_ARGS = ["config.train.epochs=3", "config.train.steps_per_epoch=4", "config.data.batch_size=32",
              "config.model.width=8", "config.monitor.train_limit=300", "config.monitor.test_limit=150",
              "num_samples=4", "max_concurrent=1", "scheduler.type=none", "time_budget_s=null"]


def train_workers(root_pid: int) -> list[psutil.Process]:
    """Live Ray Train worker processes under ``root_pid`` (a command that started its own Ray)."""
    procs = psutil.Process(root_pid).children(recursive=True)
    found = []
    for proc in procs:
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith(WORKER_TITLE):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def cluster_workers(address: str, exclude_job: str | None = None) -> list[int]:
    """Pids of the live Ray Train workers of the cluster at ``address`` (its own State API), but those
    of job ``exclude_job``: the victims of a run under test, never another Ray's processes."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                         limit=1000, raise_on_missing_output=False)
    return [a.pid for a in actors if a.job_id != exclude_job]


def _kill_mid_epoch(run_dir: str, cmd: Command, rng: random.Random, victim) -> str:
    """After two epochs, wait a random part of an epoch and SIGKILL ``victim()`` (a pid)."""
    per_epoch = wait_for_epochs(run_dir, 2, cmd, timeout=400)
    time.sleep(rng.uniform(0.0, 1.0) * per_epoch)
    pid = victim()
    os.kill(pid, signal.SIGKILL)
    return f"pid {pid} killed {len(epochs_of(run_dir))} epochs in"


def row_worker_kill(work: Path, rng: random.Random, address: str | None = None) -> Row:
    """SIGKILL of one of 2 Ray Train workers at a random moment mid-step; Train restarts the group.

    Without ``address`` the command starts its own local Ray (and its workers are found under
    it); with one (a test's Ray) it joins that cluster, where no other Train run may be going on.
    """
    row, t0 = Row("SIGKILL of a Ray Train worker mid-step", "pretrain, 2 Ray Train workers"), time.time()
    args, run_dir = pretrain_args(str(work), "wkill", "scaling.workers=2"), str(work / "wkill")
    # a local Ray listens on 127.0.0.1 only; a process joining it needs the same loopback node IP
    from jigclu.ray_session import _LOOPBACK_ENV

    cmd = Command([*args, "--address", address], work, {_LOOPBACK_ENV: "0"}) if address else Command(args, work)

    def victim() -> int:  # a worker of this run: under the command's own Ray, or on the given cluster
        if address is None:
            return rng.choice(train_workers(cmd.proc.pid)).pid
        import ray

        own = ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
        return rng.choice(cluster_workers(address, exclude_job=own))

    try:
        _kill_mid_epoch(run_dir, cmd, rng, victim)
        code = cmd.wait(600)
    finally:
        cmd.kill()
    row.outcome = "finished (worker group restarted)" if code == 0 else f"failed (exit {code})"
    row = judge(row, run_dir, [], cmd.stderr)
    row.seconds = time.time() - t0
    return row


def row_node_kill(work: Path, rng: random.Random) -> Row:
    """SIGKILL of the raylet of a node running a Train worker, in a 3-node ``ray start`` cluster."""
    row, t0 = Row("SIGKILL of a node's raylet mid-step", "pretrain, 2 workers on a 3-node cluster"), time.time()
    box = cluster_box.RayBox(work / "box", {}, workers=3, cpus=1)
    try:
        args, run_dir = pretrain_args(str(work / "out"), "nkill", "scaling.workers=2"), str(work / "out" / "nkill")
        cmd = Command([*args, "--address", box.address], work, {"RAY_ADDRESS": box.address})
        try:
            # a worker of this cluster, found through its own State API (its dashboard)
            _kill_mid_epoch(run_dir, cmd, rng, lambda: cluster_box.raylet_of(
                rng.choice([a.pid for a in box.actors() if a.class_name == "RayTrainWorker"])))
            code = cmd.wait(600)
        finally:
            cmd.kill()
        row.outcome = "finished on the other nodes" if code == 0 else f"failed (exit {code})"
        row = judge(row, run_dir, [], cmd.stderr)
    finally:
        box.stop()
    row.seconds = time.time() - t0
    return row


def _trial_epochs(sweep_dir: Path) -> dict[str, list[int]]:
    out = {}
    for trial in sorted(sweep_dir.glob("trial-*")) + sorted(sweep_dir.glob(".orphan-trial-*")):
        path = trial / "result.json"
        lines = path.read_text().splitlines() if path.exists() else []
        out[trial.name] = [json.loads(ln)["epoch"] for ln in lines if ln.strip()]
    return out


def _study_trials(sweep_dir: Path) -> dict[str, int]:
    """Trials of the sweep's Optuna study by state (``{"COMPLETE": 4}``)."""
    db = sweep_dir / "optuna.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as con:
        return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())


def row_sweep_driver_kill(work: Path, rng: random.Random, sig: int = signal.SIGKILL) -> Row:
    """SIGKILL of the sweep driver at a random moment around a trial's end (when Tune saves its
    state), then ``jigclu tune --resume``: finished trials are kept, the study stays consistent.

    With ``sig=SIGTERM`` (a preempted head node, an evicted pod) only the driver process gets the
    signal; it must stop the sweep itself (Tune's state and the study saved), exit 143 within 60 s
    with one line saying how to continue, and ``--resume`` must finish the sweep the same way."""
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGKILL"
    row, t0 = Row(f"{name} of the sweep driver mid-save", "sweep, 4 trials x 3 epochs"), time.time()
    args = ["tune", "--no-progress", "--no-report", "--config", str(SWEEP), *SWEEP_ARGS, f"output_dir={work}",
            "name=sk"]
    sweep_dir = work / "sk"
    cmd = Command(args, work)
    deadline, code = time.time() + 400, None
    try:
        while time.time() < deadline:  # the first trial has finished all its epochs
            if any(len(e) == 3 for e in _trial_epochs(sweep_dir).values()) or cmd.proc.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))  # Tune saves its state about every second
        if sig == signal.SIGTERM:
            cmd.proc.send_signal(signal.SIGTERM)
            try:
                code = cmd.wait(60)
            except subprocess.TimeoutExpired:
                code = "none within 60 s"
    finally:
        cmd.kill()
    before = _trial_epochs(sweep_dir)
    done_before = {k for k, e in before.items() if len(e) == 3}
    again = Command([*args, "--resume"], work)
    rcode = again.wait(900)
    after = _trial_epochs(sweep_dir)
    live = {k: e for k, e in after.items() if not k.startswith(".orphan")}
    finished = [k for k, e in live.items() if len(e) == 3]
    kept = all(after.get(k) == before[k] for k in done_before)
    study = _study_trials(sweep_dir)
    stopped = f"exit {code}; " if code is not None else ""
    row.outcome = f"{stopped}resumed: {len(finished)}/4 trials finished" if rcode == 0 else f"failed (exit {rcode})"
    row.redone = sum(len(e) - len(set(e)) for e in live.values()) + \
        sum(len(e) for k, e in after.items() if k.startswith(".orphan"))
    row.checkpoints = f"{len(done_before)} finished trial(s) kept as they were" if kept else "finished trial changed"
    ok_saw, row.user_saw = user_saw(cmd.stderr if sig == signal.SIGTERM else again.stderr)
    consistent = study == {"COMPLETE": 4}
    row.data_lost = "none" if kept and len(finished) == 4 and consistent else f"study: {study}"
    row.ok = rcode == 0 and kept and len(finished) == 4 and consistent and row.redone <= 1 and ok_saw
    if sig == signal.SIGTERM:  # stopped by itself, saying how to go on
        row.ok = row.ok and code == 143 and "--resume" in cmd.stderr
    row.seconds = time.time() - t0
    return row
