"""Ray Train: workers, fault tolerance, driver restart, clear errors (shared local Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jigclu.checkpoint import load_checkpoint
from jigclu.config import load_config
from jigclu.runs import STATE_FILE, read_metrics
from faults import KillOnce
from jigclu.errors import ConfigError

pytestmark = pytest.mark.ray

TINY = ["data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=256",
        "model.width=8", "jigsaw.crop_size=32", "train.progress=false", "monitor.knn=false",
        "optim.lr=0.2", "train.steps_per_epoch=4"]


def cfg_for(tmp_path: Path, *extra: str):
    return load_config(None, TINY + [f"output_dir={tmp_path}", *extra])


def test_killed_worker_recovers_from_last_checkpoint(ray_local, tmp_path):
    from jigclu.ray_train import launch_ray

    marker = tmp_path / "killed"
    cfg = cfg_for(tmp_path, "name=fault", "train.epochs=4", "scaling.workers=2", "scaling.max_failures=2")
    summary = launch_ray("pretrain", cfg, progress=False, after_report=KillOnce(1, 1, str(marker)))
    assert marker.exists(), "the fault was never injected"
    run = tmp_path / "fault"
    epochs = [m["epoch"] for m in read_metrics(run)]
    # no gap, and no repeat beyond the one epoch redone when its checkpoint was not yet committed
    assert sorted(set(epochs)) == [0, 1, 2, 3], epochs
    assert epochs == sorted(epochs) and len(epochs) - len(set(epochs)) <= 1, epochs
    assert summary["last"]["epoch"] == 3
    assert all(m["world_size"] == 2 for m in read_metrics(run))
    ckpts = sorted(run.glob("checkpoint_epoch_*"))
    assert ckpts, "no checkpoint persisted"
    for ckpt in ckpts:  # every kept checkpoint loads
        state = load_checkpoint(ckpt / STATE_FILE)
        assert state["world_size"] == 2 and state["task"] == "pretrain"
    kill_time = float(marker.read_text())
    resumed = next(m for m in read_metrics(run) if m["time"] > kill_time)
    recovery_s = resumed["time"] - resumed["epoch_time_s"] - kill_time
    print(f"\nkilled worker -> training resumed in {recovery_s:.1f} s")
    assert recovery_s > 0


def test_driver_restart_continues_the_run(ray_local, tmp_path):
    """Kill the driver after an epoch; the same command with --resume continues from there."""
    address = ray_local.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "jigclu.cli", "pretrain", "--no-progress", "--address", address,
            *TINY, f"output_dir={tmp_path}", "name=driver", "train.epochs=30", "scaling.workers=1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = tmp_path / "driver" / "metrics.jsonl"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, "driver exited early"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert done and done[0] == 0
    time.sleep(2)  # let Ray notice the dead driver and release its workers

    from jigclu.ray_train import launch_ray

    cfg = cfg_for(tmp_path, "name=driver", "train.epochs=4", "scaling.workers=1")
    with pytest.raises(ConfigError, match="--resume"):
        launch_ray("pretrain", cfg, progress=False)
    cfg = cfg_for(tmp_path, "name=driver", "train.epochs=30", "scaling.workers=1", "train.epochs=" + str(done[-1] + 3))
    launch_ray("pretrain", cfg, resume=True, progress=False)
    epochs = [m["epoch"] for m in read_metrics(tmp_path / "driver")]
    restart = epochs.index(done[-1]) + 1 if done[-1] in epochs else len(done)
    # after the restart the run picks up where the last persisted checkpoint left off
    assert epochs[-1] == done[-1] + 2
    assert epochs[restart:][0] <= done[-1] + 1
    assert sorted(set(epochs)) == list(range(done[-1] + 3))


@pytest.mark.parametrize("overrides,needle", [
    (["scaling.workers=64"], "CPUs"),
    (["scaling.workers=1", "scaling.gpu=true"], "no GPU"),
    (["scaling.workers=1", "storage=/proc/jigclu-cannot-write-here"], "not writable"),
])
def test_impossible_requests_fail_fast(ray_local, tmp_path, overrides, needle):
    from jigclu.ray_train import launch_ray

    t0 = time.time()
    with pytest.raises(ConfigError, match=needle):
        launch_ray("pretrain", cfg_for(tmp_path, "name=bad", *overrides), progress=False)
    assert time.time() - t0 < 15


def test_cli_runs_two_workers(ray_local, tmp_path, capsys):
    from jigclu.cli import main

    address = ray_local.get_runtime_context().gcs_address
    code = main(["pretrain", "--no-progress", "--address", address, *TINY, f"output_dir={tmp_path}",
                 "name=cli2", "train.epochs=2", "scaling.workers=2", "monitor.knn=true",
                 "monitor.train_limit=100", "monitor.test_limit=50"])
    assert code == 0
    metrics = read_metrics(tmp_path / "cli2")
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert all(m["world_size"] == 2 and "knn_top1" in m for m in metrics)
    assert (tmp_path / "cli2" / "config.yaml").exists()
