"""Elastic training on a fake multi-node cluster: a node leaves, training goes on.

Streamed (Parquet through Ray Data), in ``make test``: about 60 s on 2 cores (AVX512). The same run with
the data in memory is a fault row of ``make faults`` (the suite's budget)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream_data import write_source

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EPOCH_IMAGES = 6 * 48  # train.steps_per_epoch x data.batch_size in _elastic_run.py, at every world size


def elastic_run(tmp_path: Path, *source: str) -> dict:
    # a placement group of the old size waits this long before the run goes on at the new size
    env = dict(os.environ, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="5",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="1", JIGCLU_ELASTIC_MONITOR_S="2")
    script = Path(__file__).with_name("_elastic_run.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), *source], env=env,
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_elastic(result: dict) -> None:
    """Fails if the run ended at the node's loss, restarted from scratch, redid more than the epoch
    in flight, did not shrink to the nodes left, or changed the images of an epoch with the world size."""
    assert result["removed"], "the node was never removed"
    epochs = result["epochs"]
    assert result["last_epoch"] == 7 and sorted(set(epochs)) == list(range(8)), epochs
    # the group restarted from the checkpoint at the node's removal, not from scratch: in order, at
    # most the epoch in flight trained twice
    assert epochs == sorted(epochs) and len(epochs) - len(set(epochs)) <= 1, epochs
    after = [e for e, t in zip(epochs, result["times"]) if t > result["removed"]["time"]]
    assert after and after[0] >= result["removed"]["at_epoch"], (epochs, result["removed"])
    assert result["world"][0] == 3, "started without the nodes it had"
    assert result["world"][-1] == 2, "did not continue on the remaining nodes"
    # the global batch is fixed: every epoch, on 3 workers or 2, trains on as many images
    assert result["seen"] == [EPOCH_IMAGES] * len(epochs), result["seen"]
    print(f"\nelastic: epochs {epochs} on world sizes {result['world']}; "
          f"node removed after epoch {result['removed']['at_epoch']}")


def test_streamed_elastic_run_survives_a_node_leaving(tmp_path):
    """Each worker streams its share of a Parquet source (Ray Data re-splits it at the new size)."""
    source = write_source(tmp_path / "pq", train=576, test=64, files=3, row_group=48)
    check_elastic(elastic_run(tmp_path, str(source)))


@pytest.mark.faults  # ~95 s on 2 cores: the same fault with the data in memory, run by `make faults`
def test_elastic_run_survives_a_node_leaving(tmp_path):
    check_elastic(elastic_run(tmp_path))
