"""Ray Train: workers, fault tolerance, driver restart, clear errors (shared local Ray)."""

from __future__ import annotations

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
from ray_faults import KillOnce
from jigclu.errors import ConfigError, JigcluError

pytestmark = pytest.mark.ray

TINY = ["data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=256",
        "model.width=8", "jigsaw.crop_size=32", "train.progress=false", "monitor.knn=false",
        "optim.lr=0.2", "train.steps_per_epoch=4"]


def cfg_for(tmp_path: Path, *extra: str):
    return load_config(None, TINY + [f"output_dir={tmp_path}", *extra])


# ~30 s on 2 cores: a fault row of `make faults` (the suite's budget); in `make test` a killed worker of
# a streamed run (test_stream_ray.py), of semi (test_downstream_ray.py) and a lost node (test_elastic.py)
@pytest.mark.slow
@pytest.mark.faults
def test_killed_worker_recovers_from_last_checkpoint(ray_local, tmp_path):
    from jigclu.ray_train import launch_ray

    marker = tmp_path / "killed"
    cfg = cfg_for(tmp_path, "name=fault", "train.epochs=4", "scaling.workers=2", "scaling.max_failures=2")
    summary = launch_ray("pretrain", cfg, progress=False, callbacks=[KillOnce(1, 1, str(marker))])
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


STEPS = 4  # train.steps_per_epoch of TINY, on one worker


def loopback_env() -> dict[str, str]:
    """The environment of a second driver process on the shared Ray, which listens on 127.0.0.1
    only: it must connect in the same loopback mode (else Ray swaps 127.0.0.1 for this machine's
    routable IP, where nothing listens)."""
    from jigclu.ray_session import _LOOPBACK_ENV

    return {**os.environ, _LOOPBACK_ENV: "0"}


def newest_checkpoint(run: Path) -> dict | None:
    """The state of the run's newest readable checkpoint (what a resumed run continues after)."""
    for path in sorted(run.glob("checkpoint_epoch_*"), reverse=True):
        try:
            return load_checkpoint(path / STATE_FILE)
        except (JigcluError, OSError):  # being written when the driver died, or torn
            continue
    return None


def train_actors(address: str) -> dict[str, str]:
    """``{actor id: class}`` of the cluster's live Ray Train controllers and workers."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=10000,
                         raise_on_missing_output=False)
    return {a.actor_id: a.class_name for a in actors if a.class_name in ("TrainController", "RayTrainWorker")}


def wait_until_train_actors_end(address: str, before: dict[str, str], limit_s: float = 60.0) -> None:
    """Until Ray has ended the Train controller and workers a killed driver started (all but
    ``before``'s): nothing writes a checkpoint or a metric of that run after this."""
    deadline = time.time() + limit_s
    while alive := {k: v for k, v in train_actors(address).items() if k not in before}:
        assert time.time() < deadline, f"the killed driver's Ray Train actors are still alive: {alive}"
        time.sleep(0.5)


def test_driver_restart_continues_the_run(ray_local, tmp_path):
    """Kill the driver mid-run; the same command with --resume continues right after the newest
    checkpoint, its global step included, and repeats at most one epoch."""
    address = ray_local.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "jigclu.cli", "pretrain", "--no-progress", "--address", address,
            *TINY, f"output_dir={tmp_path}", "name=driver", "train.epochs=30", "scaling.workers=1",
            "train.progress=true"]  # the driver's log: a line at the start and one per epoch
    before = train_actors(address)  # an earlier test's controller may live on with this session
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=loopback_env())
    run = tmp_path / "driver"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and not (read_metrics(run) and newest_checkpoint(run)
                                              and "[1 workers] epoch 1/30" in log.read_text()):
            assert proc.poll() is None, f"driver exited early: {log.read_text()[-2000:]}"
            time.sleep(0.25)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_until_train_actors_end(address, before)  # what the killed run left is final now
    ended = time.time()
    saved = newest_checkpoint(run)
    assert saved is not None, f"no checkpoint before the driver was killed: {log.read_text()[-2000:]}"
    assert "pretrain run driver: starting 1 Ray workers" in log.read_text().splitlines()
    assert "[1 workers] epoch 1/30" in log.read_text(), log.read_text()[-2000:]
    last = saved["epoch"]
    assert saved["global_step"] == STEPS * (last + 1)
    done = [m["epoch"] for m in read_metrics(run)]
    assert done and done == list(range(len(done))), done

    from jigclu.ray_train import launch_ray

    cfg = cfg_for(tmp_path, "name=driver", "train.epochs=4", "scaling.workers=1")
    with pytest.raises(ConfigError, match="--resume"):
        launch_ray("pretrain", cfg, progress=False)
    end = max(done[-1], last) + 3
    cfg = cfg_for(tmp_path, "name=driver", "scaling.workers=1", f"train.epochs={end}")
    launch_ray("pretrain", cfg, resume=True, progress=False)
    records = read_metrics(run)
    epochs = [m["epoch"] for m in records]
    assert epochs[:len(done)] == done
    resumed = [m for m in records[len(done):] if m["time"] > ended]  # not a line restored from a checkpoint
    # the resumed run starts right after the newest checkpoint, not at epoch 0 ...
    assert [m["epoch"] for m in resumed] == list(range(last + 1, end)), (epochs, last)
    # ... so only an epoch that finished without a readable checkpoint is repeated, at most one
    assert len(epochs) - len(set(epochs)) <= 1 and last + 1 >= done[-1], (epochs, last)
    assert set(range(end)) - set(epochs) <= {last}, epochs  # no gap (but a checkpoint whose line was lost)
    # the global step continues from the checkpoint's (the metric "step" counts optimizer steps)
    assert resumed[0]["step"] == saved["global_step"] + STEPS
    assert all(m["step"] == STEPS * (m["epoch"] + 1) for m in records), [(m["epoch"], m["step"]) for m in records]


@pytest.mark.parametrize("overrides,needle", [
    (["scaling.workers=64"], "CPUs"),
    (["scaling.workers=1", "scaling.gpu=true"], "no GPU"),
    (["scaling.workers=1", "storage=/proc/jigclu-cannot-write-here"], "not writable"),
])
def test_impossible_requests_fail_fast(ray_local, tmp_path, overrides, needle):
    import torch

    from jigclu.ray_train import launch_ray

    if needle == "no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: scaling.gpu=true is a possible request here")
    groups = set(ray_local.util.placement_group_table())
    with pytest.raises(ConfigError, match=needle):
        launch_ray("pretrain", cfg_for(tmp_path, "name=bad", *overrides), progress=False)
    # refused before Ray Train asked for a worker group (not after waiting for one that never comes)
    assert set(ray_local.util.placement_group_table()) == groups
    assert not (tmp_path / "bad").exists(), "a refused run left its run directory behind"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # about 20 s on 2 CPU cores
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
