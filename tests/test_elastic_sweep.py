"""An elastic sweep through a node loss and a trial driver's death, on a real multi-node cluster.

The clusters/README.md submit command (``ray job submit ... jigclu tune ... 'scaling.workers=[1,2]'
storage=s3://...``), sized for CPU, on a head with 0 CPUs and two 1-CPU nodes with moto's S3
server: the first trial's driver is SIGKILLed once the trial has a checkpoint in the bucket, then
the raylet of a node running one of the next trial's workers (``benchmarks/faults/faults_elastic.py``,
also the fault matrix's ``elastic-sweep`` rows). Before the fixes the sweep hung forever (the
autoscaling coordinator left on the dead node, a placement group of a finished trial holding the
only CPU) or lost the killed driver's trial (not retried).
"""

from __future__ import annotations

import random

import pytest

from benchmarks.faults import faults_elastic

# ~4 min on 2 cores: run by make faults (with the fault matrix), not make test (its 25-minute budget)
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(900)]


def test_elastic_sweep_survives_a_killed_driver_and_a_lost_node(tmp_path):
    out = faults_elastic.run(tmp_path, random.Random(7), faults=("driver", "worker"))
    problems = faults_elastic.check(out)
    assert [f["fault"] for f in out["faults"]] == ["driver", "worker"], out["faults"]
    assert not problems, "\n".join(problems) + "\n" + out.get("log", "")[-4000:]
    # the killed driver's trial was started again by Tune, and went on from its checkpoint
    hit = "trial-" + out["faults"][0]["run"].rsplit("-", 1)[-1]
    assert sum(f"{hit} started" in line for line in out["log"].splitlines()) == 2, out["log"][-4000:]
    for row in faults_elastic.rows(out):
        assert row.ok and row.redone <= 1, row
