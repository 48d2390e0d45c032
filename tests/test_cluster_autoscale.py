"""Ray's autoscaler adds nodes for demand that the cluster cannot hold, on one machine.

A head with 0 CPUs and a worker type of 1-CPU nodes (at most 2), served by Ray's fake
multi-node provider and read by autoscaler v2 (the default for `ray up` since Ray 2.50): an
actor group that needs 2 CPUs can only run once the autoscaler has launched two nodes.

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
    import json, sys, time
    import ray

    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    before = sum(n["Alive"] for n in ray.nodes())

    @ray.remote(num_cpus=1)
    class Worker:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    workers = [Worker.remote() for _ in range(2)]  # 2 CPUs; the head has none
    nodes = ray.get([w.node.remote() for w in workers], timeout=120)
    after = sum(n["Alive"] for n in ray.nodes())
    print(json.dumps({"before": before, "after": after, "nodes": nodes}))
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


def test_autoscaler_adds_nodes_for_a_two_cpu_actor_group():
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
        result = subprocess.run(
            [sys.executable, "-c", DRIVER, f"127.0.0.1:{gcs_port}"],
            env=driver_env, capture_output=True, text=True, timeout=180,
        )
        head_log = open(log_path).read()[-3000:]
        assert result.returncode == 0, f"{result.stderr[-3000:]}\n--- head ---\n{head_log}"
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["before"] >= 1
        assert len(set(report["nodes"])) == 2, report  # one actor per 1-CPU node
        assert HEAD_ID not in report["nodes"]
        assert report["after"] == 3  # head + the two nodes the autoscaler launched
    finally:
        _stop_group(head)
        shutil.rmtree(tmp, ignore_errors=True)
