"""Ray's autoscaler adds nodes for demand that the cluster cannot hold, on one machine.

A head with 0 CPUs and a worker type of 1-CPU nodes (at most 2), served by Ray's fake
multi-node provider and read by autoscaler v2 (the default for `ray up` since Ray 2.50): an
2-worker jigclu pretraining (1 CPU per worker) can only start once the autoscaler has
launched two nodes, and then runs to its last epoch.

Why not ``ray.cluster_utils.AutoscalingCluster``: in the Ray 2.60 wheel it reads
``fake_multi_node/example.yaml``, which the wheel does not ship, and its start/stop run
``ray stop --force``, which would kill every Ray instance on the machine (a shared test
session's included). Here the head runs as our own ``ray start --block`` in its own process
group, with its own ports and temp dir, and the teardown signals that group only. The driver
runs in a subprocess so this test never calls ``ray.init`` in the pytest process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

pytestmark = pytest.mark.ray

HEAD_ID = "f" * 51 + "00000"  # the fake provider's head node id (FAKE_HEAD_NODE_ID)
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _autoscaling_config(gcs_port: int) -> dict:
    return {
        "cluster_name": "jigclu-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        # "external" + module: the fake_multinode type's defaults file is missing from the wheel.
        "provider": {
            "type": "external",
            "module": FAKE_PROVIDER,
            "gcs_address": f"127.0.0.1:{gcs_port}",
            "launch_multiple": True,
            "head_node_id": HEAD_ID,
        },
        "auth": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_1x": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import ray
    from jigclu.config import load_config
    from jigclu.runs import read_metrics
    from jigclu.ray_train import launch_ray

    address, out = sys.argv[1], Path(sys.argv[2])
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    before = sum(n["Alive"] for n in ray.nodes())
    # 2 training workers of 1 CPU each; the head has none: the autoscaler must add 2 nodes
    cfg = load_config(None, [
        "data.dataset=digits", "data.image_size=32", "data.batch_size=32", "model.width=8",
        "jigsaw.crop_size=32", "train.progress=false", "monitor.knn=false", "train.epochs=2",
        "train.steps_per_epoch=3", "scaling.workers=2", f"output_dir={out}", "name=autoscaled"])
    summary = launch_ray("pretrain", cfg, progress=False, address=address)
    after = sum(n["Alive"] for n in ray.nodes())
    metrics = read_metrics(out / "autoscaled")
    print(json.dumps({"before": before, "after": after, "epochs": [m["epoch"] for m in metrics],
                      "world": [m["world_size"] for m in metrics], "last": summary["last"].get("epoch")}))
    """
)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the head and everything it started (one process group, ours)."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The head has exited; its children may linger a moment in the group.
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def test_autoscaler_adds_nodes_for_two_worker_pretraining():
    gcs_port = _free_port()
    tmp = tempfile.mkdtemp(prefix="jca")  # short: Ray's unix socket paths live under it
    config_path = os.path.join(tmp, "autoscaling.json")
    with open(config_path, "w") as f:
        json.dump(_autoscaling_config(gcs_port), f)
    env = dict(
        os.environ,
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_USAGE_STATS_ENABLED="0",
        # Ray 2.60 turns token auth on when ~/.ray/auth_token exists (any local ray.init
        # writes one); this private cluster, its nodes and its driver all run without.
        RAY_AUTH_MODE="disabled",
        RAY_enable_autoscaler_v2="1",
        RAY_CLOUD_INSTANCE_ID=HEAD_ID,
        RAY_OVERRIDE_NODE_ID_FOR_TESTING=HEAD_ID,
        RAY_NODE_TYPE_NAME="ray.head.default",
    )
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [
        ray_cli, "start", "--head", "--block",
        f"--port={gcs_port}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--include-dashboard=false",
        "--num-cpus=0",
        "--object-store-memory=100000000",
        f"--temp-dir={tmp}",
        f"--autoscaling-config={config_path}",
    ]
    log_path = os.path.join(tmp, "head.log")
    with open(log_path, "w") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        driver_env = {k: v for k, v in env.items() if not k.startswith("RAY_OVERRIDE")}
        driver_env.pop("RAY_CLOUD_INSTANCE_ID")
        # the worker group waits while the autoscaler launches nodes
        driver_env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "120"
        result = subprocess.run(
            [sys.executable, "-c", DRIVER, f"127.0.0.1:{gcs_port}", os.path.join(tmp, "runs")],
            env=driver_env, capture_output=True, text=True, timeout=300,
        )
        head_log = open(log_path).read()[-3000:]
        assert result.returncode == 0, f"{result.stderr[-3000:]}\n--- head ---\n{head_log}"
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["before"] == 1, report  # only the head (0 CPUs) at the start
        assert report["after"] == 3, report  # head + the two nodes the autoscaler launched
        assert report["epochs"] == [0, 1] and report["last"] == 1, report  # the run finished
        assert report["world"] == [2, 2], report
    finally:
        _stop_group(head)
        shutil.rmtree(tmp, ignore_errors=True)
