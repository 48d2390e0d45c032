"""Fault matrix: faults injected from *outside* a jigclu run, and what the user is left with.

Every row starts the real ``jigclu`` command as a child process (as a user would), injects one
fault from outside at a moment drawn at random (seeded) while it works, then checks what a user
relies on:

- **outcome**: did the run finish by itself, or after the same command with ``--resume``;
- **epochs redone**: completed epochs trained a second time (target <= 1; the epoch in flight
  when the fault hit is always redone and not counted);
- **checkpoints**: every retained checkpoint loads, and no temporary file is left beside them;
- **user saw**: what the command printed on stderr (one line, no traceback is the target);
- **data lost**: every epoch's metrics line, before and after the fault, is in the final
  ``metrics.jsonl`` and the final checkpoint is the last epoch.

The cheap rows also run as tests (``tests/test_faults.py``), through the very functions here.

    python -m benchmarks.faults.fault_matrix                 # every row; writes ## Fault matrix
    python -m benchmarks.faults.fault_matrix --only sigint truncated
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.faults import faults_elastic, faults_preempt, faults_ray
from benchmarks.faults.fault_kit import (COLUMNS, EPOCHS, Command, Row, check_checkpoints, epochs_of, judge,
                                         pretrain_args, resume, wait_for_epochs)
from benchmarks.harness import cluster_box, common
from jigclu.runs import RunLayout


def row_sigint(work: Path, rng: random.Random) -> Row:
    """Ctrl-C of a single-process run mid-epoch, then the same command with --resume."""
    row, t0 = Row("SIGINT (Ctrl-C) mid-epoch", "pretrain, 1 process"), time.time()
    args, run_dir = pretrain_args(str(work), "sigint"), str(work / "sigint")
    cmd = Command(args, work)
    per_epoch = wait_for_epochs(run_dir, 2, cmd)
    time.sleep(rng.uniform(0.1, 0.9) * per_epoch)
    cmd.proc.send_signal(signal.SIGINT)
    code, before, err = cmd.wait(60), epochs_of(run_dir), cmd.stderr
    rcode, _ = resume(args, work)
    row.outcome = f"exit {code}; resumed, exit {rcode}" if rcode == 0 else "failed"
    row = judge(row, run_dir, before, err)
    row.ok = row.ok and code == 130
    row.seconds = time.time() - t0
    return row


def row_truncated(work: Path, rng: random.Random) -> Row:
    """The newest checkpoint truncated on disk, then --resume: falls back to the previous one."""
    row, t0 = Row("newest checkpoint truncated before --resume", "pretrain, 1 process"), time.time()
    args, run_dir = pretrain_args(str(work), "trunc"), str(work / "trunc")
    done = Command([*args[:-2], f"train.epochs={EPOCHS - 2}", *args[-2:]], work)
    assert done.wait() == 0, done.stderr
    before = epochs_of(run_dir)
    newest = Path(RunLayout(run_dir).latest_checkpoint())
    size = newest.stat().st_size
    with open(newest, "r+b") as fh:  # as a disk that filled up or a copy cut short would leave it
        fh.truncate(int(size * rng.uniform(0.1, 0.9)))
    code, err = resume(args, work)
    row.outcome = "resumed from the previous checkpoint" if code == 0 and "previous checkpoint" in err else \
        f"exit {code}" if code else "resumed, no warning"
    row = judge(row, run_dir, before, err)
    row.ok = row.ok and code == 0 and "previous checkpoint" in err
    row.seconds = time.time() - t0
    return row


def row_enospc(work: Path, rng: random.Random) -> Row:
    """The run directory's disk fills up mid-run (a small tmpfs), then space is freed and --resume."""
    row, t0 = Row("disk full (ENOSPC) on the run directory", "pretrain, 1 process"), time.time()
    if os.geteuid() != 0:
        row.outcome = "skipped: mounting a tmpfs needs root"
        return row
    mnt = work / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        row.outcome = "skipped: cannot mount a tmpfs here"
        return row
    try:
        args, run_dir = pretrain_args(str(mnt), "full", "train.keep_checkpoints=100"), str(mnt / "full")
        cmd = Command(args, work)
        wait_for_epochs(run_dir, 1, cmd)
        # leave room for about one more checkpoint: the next one or the one after fails to fit
        ckpt = Path(RunLayout(run_dir).latest_checkpoint()).stat().st_size
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler = mnt / "filler"
        with open(filler, "wb") as fh:
            fh.write(b"\0" * max(0, free - int(ckpt * rng.uniform(1.1, 1.9))))
        code, before, err = cmd.wait(300), epochs_of(run_dir), cmd.stderr
        mid = check_checkpoints(run_dir)
        filler.unlink()
        rcode, rerr = resume(args, work)
        row.outcome = (f"exit {code}; resumed, exit {rcode}" if code else "finished (never ran out)") \
            if rcode == 0 else f"failed: resume said {rerr.strip().splitlines()[-1:]}"
        row = judge(row, run_dir, before, err)
        row.ok = row.ok and code == 2 and mid[0]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    row.seconds = time.time() - t0
    return row


def row_s3_outage(work: Path, rng: random.Random, outage_s: float = 20.0, workers: int = 0) -> Row:
    """The S3 endpoint stops answering for ``outage_s`` mid-run (connections refused), then returns."""
    run = f"pretrain, {workers} Ray Train workers, s3://" if workers else "pretrain, 1 process, s3://"
    row, t0 = Row(f"S3 endpoint down {outage_s:.0f} s mid-run", run), time.time()
    s3 = cluster_box.S3Endpoint(work)
    proxy, saved_env = None, {}
    try:
        s3.create_bucket("runs")
        proxy = cluster_box.TcpProxy(s3.port)
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.url}
        args, run_dir = pretrain_args("s3://runs/out", "outage", f"scaling.workers={workers}"), "s3://runs/out/outage"
        saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # this process reads the run back through the same endpoint (restored below)
        cmd = Command(args, work, env)
        per_epoch = wait_for_epochs(run_dir, 2, cmd)
        time.sleep(rng.uniform(0.0, 1.0) * per_epoch)
        proxy.stop()
        time.sleep(outage_s)
        proxy.start()
        code, err = cmd.wait(300), cmd.stderr
        before = epochs_of(run_dir)
        if code == 0:
            row.outcome = "finished through the outage"
        else:
            rcode, _ = resume(args, work, env)
            row.outcome = f"exit {code}; resumed, exit {rcode}" if rcode == 0 else "failed"
        row = judge(row, run_dir, before if code else [], err)
    finally:
        for key, value in saved_env.items():  # no fake credentials or dead endpoint left for later tests
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if proxy:
            proxy.stop()
        s3.stop()
    row.seconds = time.time() - t0
    return row


ROWS: dict[str, Callable[[Path, random.Random], Row | list[Row]]] = {
    "sigint": row_sigint, "sigterm": faults_preempt.row_sigterm,
    "truncated": row_truncated, "enospc": row_enospc, "s3": row_s3_outage,
    "s3-ray": lambda work, rng: row_s3_outage(work, rng, workers=2),
    "worker": faults_ray.row_worker_kill, "sigterm-ray": faults_preempt.row_sigterm_ray_worker,
    "sigterm-driver": faults_preempt.row_sigterm_ray_driver,
    "node": faults_ray.row_node_kill, "sweep": faults_ray.row_sweep_driver_kill,
    "sweep-sigterm": lambda work, rng: faults_ray.row_sweep_driver_kill(work, rng, sig=signal.SIGTERM),
    "elastic-sweep": faults_elastic.row_elastic_sweep,
}


def merged(new: list[list[str]]) -> list[list[str]]:
    """RESULTS.md's fault-matrix rows with ``new`` in place of the rows of the same fault and run."""
    _pre, sections = common.split_sections(common.RESULTS.read_text() if common.RESULTS.exists() else "")
    body = dict(sections).get("Fault matrix", "")
    old = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in body.splitlines()
           if line.startswith("| ") and not line.startswith("| fault ")]
    rows = {(r[0], r[1]): r for r in old if len(r) == len(COLUMNS)}
    for row in new:
        rows[(row[0], row[1])] = row
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the jigclu fault matrix (faults injected from outside)")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    parser.add_argument("--merge", action="store_true", help="with --only: put these rows into RESULTS.md's table, "
                        "replacing the rows of the same fault and run, keeping the others")
    args = parser.parse_args(argv)
    info = common.machine_info()
    rows = []
    for name, fn in ROWS.items():
        if args.only and name not in args.only:
            continue
        common.progress(f"faults: {name}")
        with tempfile.TemporaryDirectory(prefix="jf-") as tmp:
            got = fn(Path(tmp), random.Random(f"{args.seed}-{name}"))
        for row in got if isinstance(got, list) else [got]:
            rows.append(row)
            common.progress(f"faults: {name}: {row.outcome}; target {'met' if row.ok else 'MISSED'}")
    common.print_table("Fault matrix", COLUMNS, [r.cells() for r in rows])
    if not args.no_write and (not args.only or args.merge):
        import torch

        cells = [r.cells() for r in rows]
        intro = "\n\n".join(__doc__.split("\n\n")[1:3])
        note = ""
        if args.only:  # a partial run: the other rows as the last run that had them left them
            cells = merged(cells)
            note = f" Rows {', '.join(args.only)} last run on {time.strftime('%Y-%m-%d')} (`--only ... --merge`)."
        body = (f"{intro}\n\nCPU capability: `{torch.backends.cpu.get_cpu_capability()}`; seed {args.seed}.{note}\n\n"
                + common.markdown_table(COLUMNS, cells) + "\n\n"
                + common.info_block(common.finish_info(info)))
        common.write_section("Fault matrix", body)
    return 0 if all(r.ok or r.outcome.startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
