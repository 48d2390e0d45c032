"""Elastic training on a fake multi-node cluster: a node leaves, training goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# ~95 s on 2 cores: a fault row (a node leaves), run by `make faults`, left out of `make test` (its budget)
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.faults]


def test_elastic_run_survives_a_node_leaving(tmp_path):
    env = dict(os.environ, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="15",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="1", JIGCLU_ELASTIC_MONITOR_S="2")
    script = Path(__file__).with_name("_elastic_run.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["removed"], "the node was never removed"
    assert result["last_epoch"] == 7 and max(result["epochs"]) == 7
    epochs = result["epochs"]
    assert sorted(set(epochs)) == list(range(8))
    # the group restarted from the checkpoint at the node's removal, not from scratch: in order, at
    # most the epoch in flight trained twice
    assert epochs == sorted(epochs) and len(epochs) - len(set(epochs)) <= 1, epochs
    after = [e for e, t in zip(epochs, result["times"]) if t > result["removed"]["time"]]
    assert after and after[0] >= result["removed"]["at_epoch"], (epochs, result["removed"])
    assert result["world"][0] == 3, "started without the nodes it had"
    assert result["world"][-1] == 2, "did not continue on the remaining nodes"
    print(f"\nelastic: epochs {result['epochs']} on world sizes {result['world']}; "
          f"node removed after epoch {result['removed']['at_epoch']}")
