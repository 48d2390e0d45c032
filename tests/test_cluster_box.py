"""A sweep on a real multi-node Ray cluster with a real S3 endpoint, submitted as the docs say.

The head has 0 CPUs and three 1-CPU worker nodes, each in its own working and temp directory:
anything written to a node-local path would be on one node only, so the checks on the bucket
fail if the sweep (Tune's state, trials, nested Ray Train runs, the Optuna study) does not live
in ``storage=s3://...``. Mid-sweep one worker node's raylet is SIGKILLed (the hit trial must
resume from its checkpoint in the bucket), then the job is stopped and submitted again with an
empty study cache, as on a fresh head node (finished trials must not re-run, the Optuna study
must continue). Finally ``jigclu report s3://...`` from another directory must name the best
trial Ray's own ``ExperimentAnalysis`` names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.harness.cluster_box import RayBox, S3Endpoint, raylet_of

# ~4-8 min on 2 cores: in `make faults` (tests/test_elastic_sweep.py runs the same kind of cluster in make test)
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "jigclu-box"
SWEEP = "box"
EPOCHS = 5
SAMPLES = 4
# the clusters/README.md command (scaling.gpu=true 'scaling.workers=[1,4]' storage=s3://$BUCKET/jigclu),
# with a CPU-sized trial: 2 Ray Train workers (on two different 1-CPU nodes) and tiny data
README_ARGS = ["--config", "tune/configs/pretrain_fashion.yaml", "scaling.gpu=false", "scaling.workers=2",
               f"storage=s3://{BUCKET}/jigclu"]
TINY = [f"name={SWEEP}", f"num_samples={SAMPLES}", "max_concurrent=1", "time_budget_s=1200", "scaling.cpus_per_worker=0.9",
        "data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=null", "model.width=8",
        f"train.epochs={EPOCHS}", "train.steps_per_epoch=25", "monitor.train_limit=300", "monitor.test_limit=150",
        "--no-progress"]
EXCLUDES = json.dumps({"excludes": [".venv", ".git", "runs", "sweeps", "*.egg-info", "__pycache__"]})


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    root = tmp_path_factory.mktemp("box")
    s3 = S3Endpoint(root)
    cluster = None
    try:
        s3.create_bucket(BUCKET)
        cluster = RayBox(root, {**s3.env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20",
                                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1", "OMP_NUM_THREADS": "1",
                                "HOME": str(root / "home")})
        yield cluster, s3, root
    finally:
        if cluster is not None:
            cluster.stop()
        s3.stop()


def _ls(fs, path: str) -> list[str]:
    import pyarrow.fs as pafs

    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def _read(fs, path: str) -> str:
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def _submit(cluster: RayBox, submission: str, env: dict[str, str] | None = None) -> None:
    runtime = json.loads(EXCLUDES)
    if env:
        runtime["env_vars"] = env
    args = ["job", "submit", f"--address={cluster.dashboard}", f"--submission-id={submission}", "--no-wait",
            "--working-dir", ".", "--runtime-env-json", json.dumps(runtime), "--", "jigclu", "tune", *README_ARGS, *TINY]
    for _attempt in range(30):  # the head's job agent takes a few seconds longer than the node itself
        out = cluster.ray(*args, cwd=ROOT, check=False)
        if out.returncode == 0 or "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(2)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _client(cluster: RayBox):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard)


def _job_status(cluster: RayBox, submission: str) -> str:
    return str(_client(cluster).get_job_status(submission).value)


def _wait_job(cluster: RayBox, submission: str, want: set[str], timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = _job_status(cluster, submission)
        if status in want or status == "FAILED":
            return status
        time.sleep(2)
    raise TimeoutError(f"job {submission} not {want} after {timeout:.0f} s")


def _logs(cluster: RayBox, submission: str) -> str:
    """The job's driver log, without Ray's periodic state dumps."""
    text = _client(cluster).get_job_logs(submission)
    (cluster.root / f"{submission}.log").write_text(text)
    return "\n".join(line for line in text.splitlines() if "[state-dump]" not in line)


def _train_runs(fs) -> dict[str, list[int]]:
    """``{run name: [checkpoint epochs]}`` of the nested Ray Train runs in the bucket."""
    base = f"{BUCKET}/jigclu/{SWEEP}/train"
    return {name: sorted(int(c.rsplit("_", 1)[1]) for c in _ls(fs, f"{base}/{name}") if c.startswith("checkpoint_epoch_"))
            for name in _ls(fs, base)}


def _metrics(fs, run: str) -> list[dict]:
    text = _read(fs, f"{BUCKET}/jigclu/{SWEEP}/train/{run}/metrics.jsonl")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _results(fs, trial: str) -> str:
    return _read(fs, f"{BUCKET}/jigclu/{SWEEP}/{trial}/result.json")


def test_sweep_on_a_multi_node_cluster_with_s3(box):
    cluster, s3, root = box
    fs = s3.filesystem()
    t0 = time.time()
    _submit(cluster, "sweep-1")

    # 1. SIGKILL the raylet of a node that runs a Ray Train worker (not the trial's own actor)
    deadline = time.time() + 400
    hit = None
    while time.time() < deadline and hit is None:
        assert _job_status(cluster, "sweep-1") not in ("FAILED", "SUCCEEDED"), _logs(cluster, "sweep-1")[-4000:]
        runs = {name: epochs for name, epochs in _train_runs(fs).items() if epochs and 1 <= epochs[-1] < EPOCHS - 2}
        if runs:
            hit = next(iter(runs))
        else:
            time.sleep(0.3)
    assert hit is not None, "no trial checkpointed epoch 1 in the bucket in time:\n" + _logs(cluster, "sweep-1")[-4000:]
    actors = cluster.actors()
    busy = {a.node_id for a in actors if a.class_name in ("ImplicitFunc", "TrainController")}
    victims = [a for a in actors if a.class_name == "RayTrainWorker" and a.node_id not in busy]
    assert victims, f"every Ray Train worker shares a node with its trial: {[(a.class_name, a.node_id) for a in actors]}"
    checkpoint_before = _train_runs(fs)[hit][-1]
    os.kill(raylet_of(victims[0].pid), signal.SIGKILL)
    killed_at = time.time()
    # a checkpoint may have landed between reading and killing: the one at the kill lies in between
    checkpoint_after = _train_runs(fs)[hit][-1]

    # 2. once a trial has finished after the kill, stop the job mid-sweep
    def finished_trials() -> dict[str, str]:
        done = {}
        for trial in _ls(fs, f"{BUCKET}/jigclu/{SWEEP}"):
            if trial.startswith("trial-") and "result.json" in _ls(fs, f"{BUCKET}/jigclu/{SWEEP}/{trial}"):
                text = _results(fs, trial)
                if text.strip() and json.loads(text.strip().splitlines()[-1]).get("done"):
                    done[trial] = text
        return done

    deadline = time.time() + 400
    while time.time() < deadline and len(finished_trials()) < 2:
        assert _job_status(cluster, "sweep-1") != "FAILED", _logs(cluster, "sweep-1")[-4000:]
        time.sleep(1)
    before = finished_trials()
    assert len(before) >= 2, _logs(cluster, "sweep-1")[-4000:]
    if _job_status(cluster, "sweep-1") != "SUCCEEDED":
        cluster.ray("job", "stop", f"--address={cluster.dashboard}", "sweep-1")
        assert _wait_job(cluster, "sweep-1", {"STOPPED", "SUCCEEDED"}, 120) in ("STOPPED", "SUCCEEDED")
    log_1 = _logs(cluster, "sweep-1")
    assert "started:" in log_1 and " epoch " in log_1  # one plain line per event in job logs

    # 3. submit again with an empty study cache (a fresh head node): the sweep continues
    import shutil

    cache = root / "home" / ".cache" / "jigclu"
    assert list(cache.rglob("optuna.db")), "the driver kept no study cache"
    shutil.rmtree(cache)
    _submit(cluster, "sweep-2")
    status = _wait_job(cluster, "sweep-2", {"SUCCEEDED"}, 600)
    log_2 = _logs(cluster, "sweep-2")
    assert status == "SUCCEEDED", log_2[-4000:]
    wall = time.time() - t0

    # the hit trial resumed from its checkpoint in the bucket, on the nodes that were left
    epochs = [m["epoch"] for m in _metrics(fs, hit)]
    assert sorted(set(epochs)) == list(range(EPOCHS)), epochs
    assert epochs == sorted(epochs) and len(epochs) - len(set(epochs)) <= 1, epochs
    after = [m for m in _metrics(fs, hit) if m["time"] > killed_at]
    # resumed from the checkpoint at the kill (at most the epoch in flight redone), not from scratch
    assert after and checkpoint_before <= after[0]["epoch"] <= checkpoint_after + 1, \
        (checkpoint_before, checkpoint_after, epochs)

    # finished trials were not re-run; the Optuna study holds exactly the sweep's trials
    trials = [t for t in _ls(fs, f"{BUCKET}/jigclu/{SWEEP}") if t.startswith("trial-")]
    assert len(trials) == SAMPLES, trials
    for trial, text in before.items():
        assert _results(fs, trial) == text, f"{trial} was run again"
    import optuna

    study_file = root / "study-copy.db"
    study_file.write_bytes(fs.open_input_stream(f"{BUCKET}/jigclu/{SWEEP}/optuna.db").read())
    study = optuna.load_study(study_name=SWEEP, storage=f"sqlite:///{study_file}")
    assert len(study.trials) == SAMPLES, [t.state for t in study.trials]

    # everything is in the bucket: sweep state, every trial's results and checkpoints
    top = _ls(fs, f"{BUCKET}/jigclu/{SWEEP}")
    assert {"sweep.yaml", "optuna.db"} <= set(top) and any(n.startswith("experiment_state-") for n in top), top
    for trial in trials:
        assert _results(fs, trial).strip(), trial
        assert "config.yaml" in _ls(fs, f"{BUCKET}/jigclu/{SWEEP}/{trial}")
    assert all(_train_runs(fs).values()), _train_runs(fs)

    # the report, from another working directory, names the best trial Ray names, both ranking by the
    # sweep's own objective (pretrain_fashion.yaml: objective linear_probe, so probe_top1, not knn_top1)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([str(Path(sys.executable).parent / "jigclu"), "report", f"s3://{BUCKET}/jigclu/{SWEEP}",
                          "--format", "json"], cwd=elsewhere, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(f"{BUCKET}/jigclu/{SWEEP}", storage_filesystem=fs)
    assert report["ranked_by"]["metric"] == "probe_top1", report["ranked_by"]
    best = analysis.get_best_trial(metric="probe_top1", mode="max", scope="all")
    assert report["best"]["trial_id"] == best.trial_id, (report["best"], best.trial_id)
    print(f"\ncluster in a box: {wall:.0f} s; killed the raylet of node {victims[0].node_id[:8]} "
          f"{killed_at - t0:.0f} s in, while {hit} had checkpointed epoch {checkpoint_after}; it resumed at epoch "
          f"{after[0]['epoch']}; job stopped after {len(before)} finished trials and resubmitted")
