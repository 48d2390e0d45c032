"""Shared fixtures: one local Ray instance for every integration test (started on demand)."""

from __future__ import annotations

import os

import pytest

# fail fast in tests: Ray Train waits 60 s for a worker group by default
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1")
os.environ.setdefault("JIGCLU_ELASTIC_MONITOR_S", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")

RAY_CPUS = 4  # logical CPUs: more than CI's 2 cores so a trial plus its workers fit


@pytest.fixture(scope="session")
def ray_local():
    """A quiet local Ray (dashboard on 127.0.0.1, small object store), shared by the session."""
    import ray

    from jigclu.ray_train import init_ray

    init_ray(num_cpus=RAY_CPUS)
    yield ray
    ray.shutdown()
