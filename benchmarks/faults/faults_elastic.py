"""Fault rows of an elastic sweep on a real multi-node cluster: a worker's node and a trial's driver.

A 3-node ``ray start`` cluster on 127.0.0.1 (head with 0 CPUs, two 1-CPU nodes) and moto's S3
server; the sweep is submitted with ``ray job submit`` as ``clusters/README.md`` says, with
``'scaling.workers=[1,2]'`` (elastic Ray Train trials), 3 trials one after the other. While it runs:

* ``driver``: the first trial's driver (its Tune trial actor, and with it the trial's Ray Train
  controller) is SIGKILLed once the trial has a checkpoint in the bucket: Tune must retry the
  trial, and the retried trial must resume from that checkpoint;
* ``worker``: the raylet of a node running one of the next trial's Ray Train workers is
  SIGKILLed: the trial must go on with the worker left, and every later trial must get its
  workers (no placement group of a finished trial may keep holding the only CPU left).

Victims are found through this cluster's own State API (its dashboard address), so a process of
another Ray on the machine is never touched. Checked at the end: the job succeeded; every trial
finished all its epochs once (at most the epoch in flight redone, never a restart from scratch);
the Optuna study holds exactly the sweep's trials, all complete; no placement group is left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from benchmarks.faults.fault_kit import Row
from benchmarks.harness import cluster_box, common

BUCKET = "elastic"
SWEEP = "el"
EPOCHS = 4
TRIALS = 3
ARGS = ["--config", "tune/configs/pretrain_digits.yaml", "scaling.gpu=false", "scaling.workers=[1,2]",
        f"storage=s3://{BUCKET}/jigclu", f"name={SWEEP}", f"num_samples={TRIALS}", "max_concurrent=1",
        "scaling.cpus_per_worker=0.9", "scheduler.type=none", "time_budget_s=null", "test_top_k=0",
        "data.batch_size=32", "model.width=8", f"train.epochs={EPOCHS}", "train.steps_per_epoch=12",
        "monitor.train_limit=300", "monitor.test_limit=150", "--no-progress", "--no-report"]
ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1",
       "JIGCLU_ELASTIC_MONITOR_S": "2", "OMP_NUM_THREADS": "1", "JIGCLU_WAIT_LOG_S": "20"}
EXCLUDES = [".venv", ".git", "runs", "sweeps", "*.egg-info", "__pycache__", "benchmarks/RESULTS.md"]


class ElasticSweep:
    """The cluster, the bucket and the submitted sweep; ``close()`` stops every process by pid."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.s3 = cluster_box.S3Endpoint(work)
        self.box = None
        try:
            self.s3.create_bucket(BUCKET)
            self.fs = self.s3.filesystem()
            self.box = cluster_box.RayBox(work / "box", {**self.s3.env, **ENV, "HOME": str(work / "home")},
                                          workers=2, cpus=1)
        except BaseException:
            self.close()
            raise
        self.base = f"{BUCKET}/jigclu/{SWEEP}"

    def close(self) -> None:
        if self.box is not None:
            self.box.stop()
        self.s3.stop()

    # -- the job --------------------------------------------------------------------------------
    def submit(self, submission: str = "sweep") -> None:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.box.dashboard)
        client.submit_job(entrypoint="jigclu tune " + " ".join(f"'{a}'" for a in ARGS), submission_id=submission,
                          runtime_env={"working_dir": str(common.REPO_ROOT), "excludes": EXCLUDES})
        self.submission = submission

    def status(self) -> str:
        from ray.job_submission import JobSubmissionClient

        return str(JobSubmissionClient(self.box.dashboard).get_job_status(self.submission).value)

    def logs(self) -> str:
        from ray.job_submission import JobSubmissionClient

        text = JobSubmissionClient(self.box.dashboard).get_job_logs(self.submission)
        (self.work / "job.log").write_text(text)
        return "\n".join(ln for ln in text.splitlines() if "[state-dump]" not in ln)

    def wait_job(self, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status()
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(2)
        return "TIMEOUT"

    # -- what the bucket holds ------------------------------------------------------------------
    def ls(self, path: str) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.base}/{path}".rstrip("/"), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def read(self, path: str) -> str:
        try:
            with self.fs.open_input_stream(f"{self.base}/{path}") as fh:
                return fh.read().decode()
        except (FileNotFoundError, OSError):
            return ""

    def train_runs(self) -> dict[str, list[int]]:
        """``{nested Train run: [checkpoint epochs]}``."""
        return {run: sorted(int(c.rsplit("_", 1)[1]) for c in self.ls(f"train/{run}") if c.startswith("checkpoint_epoch_"))
                for run in self.ls("train")}

    def run_epochs(self, run: str) -> list[int]:
        """Epochs in a nested run's ``metrics.jsonl``, in the order they were trained."""
        return [json.loads(ln)["epoch"] for ln in self.read(f"train/{run}/metrics.jsonl").splitlines() if ln.strip()]

    def wait_for_checkpoint(self, exclude: set[str], at: int = 1, timeout: float = 400) -> tuple[str, int]:
        """A Train run not in ``exclude`` with a checkpoint of epoch ``at`` (or later) in the bucket."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.status() in ("FAILED", "SUCCEEDED", "STOPPED"):
                raise AssertionError(f"the sweep ended before the fault: {self.logs()[-3000:]}")
            for run, epochs in self.train_runs().items():
                if run not in exclude and epochs and at <= epochs[-1] < EPOCHS - 1:
                    return run, epochs[-1]
            time.sleep(0.3)
        raise TimeoutError(f"no new trial checkpointed epoch 1 in time: {self.logs()[-3000:]}")

    # -- victims, through this cluster's State API ----------------------------------------------
    def actors(self, class_name: str) -> list[Any]:
        return [a for a in self.box.actors() if a.class_name == class_name]

    def kill_driver(self) -> str:
        """SIGKILL the running trial's driver: its Tune trial actor (ImplicitFunc) process."""
        drivers = self.actors("ImplicitFunc")
        assert len(drivers) == 1, f"expected one running trial driver, found {len(drivers)}"
        os.kill(drivers[0].pid, signal.SIGKILL)
        return f"trial driver pid {drivers[0].pid}"

    def kill_worker_node(self, rng: random.Random) -> str:
        """SIGKILL the raylet of a node that runs one of the trial's Ray Train workers."""
        workers = self.actors("RayTrainWorker")
        assert workers, "no Ray Train worker alive"
        victim = rng.choice(workers)
        os.kill(cluster_box.raylet_of(victim.pid), signal.SIGKILL)
        return f"raylet of node {victim.node_id[:8]}"

    def placement_groups(self) -> list[tuple[str, str]]:
        """(state, bundles) of the cluster's placement groups that still hold or wait for resources."""
        from ray.util.state import list_placement_groups

        groups = list_placement_groups(address=self.box.dashboard, limit=1000, raise_on_missing_output=False,
                                       detail=True)
        return [(g.state, str(g.bundles)) for g in groups if g.state not in ("REMOVED",)]


def run(work: Path, rng: random.Random, faults: tuple[str, ...] = ("driver", "worker"),
        timeout: float = 600, at: int = 1) -> dict[str, Any]:
    """Run the sweep with ``faults`` injected in order (one per trial, from the first); returns what
    the checks need (see the module docstring)."""
    t0 = time.time()
    sweep = ElasticSweep(work)
    out: dict[str, Any] = {"faults": [], "runs": {}}
    try:
        sweep.submit()
        hit: set[str] = set()
        for fault in faults:
            run_name, ckpt = sweep.wait_for_checkpoint(exclude=hit, at=at)
            time.sleep(rng.uniform(0.0, 1.0))
            what = sweep.kill_driver() if fault == "driver" else sweep.kill_worker_node(rng)
            out["faults"].append({"fault": fault, "run": run_name, "checkpoint": ckpt, "what": what,
                                  "at": time.time(), "offset_s": time.time() - t0})
            common.progress(f"faults: elastic sweep: {what} killed, {run_name} at checkpoint {ckpt}")
            hit.add(run_name)
        out["status"] = sweep.wait_job(timeout - (time.time() - t0))
        out["log"] = sweep.logs()
        out["runs"] = {run: sweep.run_epochs(run) for run in sweep.train_runs()}
        out["trials"] = {t: sweep.read(f"{t}/result.json") for t in sweep.ls("") if t.startswith("trial-")}
        out["orphans"] = [t for t in sweep.ls("") if t.startswith(".orphan")]
        out["placement_groups"] = sweep.placement_groups()
        out["study"] = _study_states(sweep, work)
    finally:
        out["seconds"] = time.time() - t0
        sweep.close()
    return out


def _study_states(sweep: ElasticSweep, work: Path) -> dict[str, int]:
    import sqlite3

    data = sweep.fs.open_input_stream(f"{sweep.base}/optuna.db").read() if "optuna.db" in sweep.ls("") else b""
    if not data:
        return {}
    copy = work / "study-copy.db"
    copy.write_bytes(data)
    with sqlite3.connect(copy) as con:
        states = dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    return {str(k): v for k, v in states.items()}


def check(out: dict[str, Any]) -> list[str]:
    """What went wrong (empty when every check passed)."""
    problems = []
    if out.get("status") != "SUCCEEDED":
        problems.append(f"job {out.get('status')}")
    trials = out.get("trials", {})
    done = {t for t, text in trials.items()
            if text.strip() and json.loads(text.strip().splitlines()[-1]).get("training_iteration") == EPOCHS}
    if len(trials) != TRIALS or len(done) != TRIALS:
        problems.append(f"{len(done)}/{TRIALS} trials finished ({len(trials)} trial directories)")
    for trial, text in trials.items():  # what Tune heard: every epoch once, in order, as its iteration
        seen = [(r.get("epoch"), r.get("training_iteration")) for r in
                (json.loads(line) for line in text.splitlines() if line.strip())]
        if seen != [(e, e + 1) for e in range(EPOCHS)]:
            problems.append(f"{trial} reported (epoch, iteration) {seen}")
    if out.get("orphans"):
        problems.append(f"trials set aside as orphans: {out['orphans']}")
    if out.get("study") not in ({"COMPLETE": TRIALS}, {"1": TRIALS}):
        problems.append(f"Optuna study {out.get('study')}")
    for run, epochs in out.get("runs", {}).items():
        if sorted(set(epochs)) != list(range(EPOCHS)) or len(epochs) - len(set(epochs)) > 1:
            problems.append(f"{run} trained epochs {epochs}")
    for fault in out.get("faults", []):
        epochs = out["runs"].get(fault["run"], [])
        # resumed from the checkpoint at the kill: epoch `checkpoint` is done, so at most the one in flight again
        first = epochs.index(fault["checkpoint"]) if fault["checkpoint"] in epochs else None
        if first is None or epochs[:first + 1] != list(range(fault["checkpoint"] + 1)):
            problems.append(f"{fault['run']} lost epochs before the {fault['fault']} kill: {epochs}")
        elif len(epochs) - len(set(epochs)) > 1:
            problems.append(f"{fault['run']} redid more than one epoch after the {fault['fault']} kill: {epochs}")
    if out.get("placement_groups"):
        problems.append(f"placement groups left: {out['placement_groups']}")
    return problems


def rows(out: dict[str, Any]) -> list[Row]:
    """One fault-matrix row per injected fault."""
    problems = check(out)
    log = out.get("log", "")
    result = []
    for fault in out.get("faults", []):
        name = {"driver": "SIGKILL of a sweep trial's driver (Tune actor + its Train controller)",
                "worker": "SIGKILL of the raylet of a node running a sweep trial's worker"}[fault["fault"]]
        row = Row(name, f"sweep, {TRIALS} elastic trials (`scaling.workers=[1,2]`), 2 one-CPU nodes, s3://")
        epochs = out["runs"].get(fault["run"], [])
        trial = "trial-" + fault["run"].rsplit("-", 1)[-1]
        row.redone = len(epochs) - len(set(epochs))
        row.outcome = (f"all {TRIALS} trials finished; the hit one went on after epoch {fault['checkpoint']}"
                       if not problems else "failed")
        row.checkpoints = "in the bucket; no placement group left" if not out.get("placement_groups") else \
            f"{len(out['placement_groups'])} placement group(s) left"
        starts = sum(1 for line in log.splitlines() if f"{trial} started" in line)
        waits = sum(1 for line in log.splitlines() if f"{trial} waiting for resources" in line)
        row.user_saw = (f"job {out.get('status', '?').lower()}; log: trial started {starts}x"
                        + (f", {waits} 'waiting for resources' line(s)" if waits else ""))
        row.data_lost = "none" if not problems else "; ".join(problems)[:300]
        row.ok = not problems
        row.seconds = out.get("seconds", 0.0)
        result.append(row)
    return result


def row_elastic_sweep(work: Path, rng: random.Random) -> list[Row]:
    """Both faults in one sweep (the driver of the first trial, a worker's node in the next)."""
    return rows(run(work, rng, faults=("driver", "worker")))
