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
RAY_TIMEOUT_S = 600  # pytest-timeout for a Ray test; every other test gets pyproject's default


@pytest.hookimpl(tryfirst=True)  # before -m deselects: a test on the shared Ray is always a `ray` test
def pytest_collection_modifyitems(config, items):
    """A test that uses the shared Ray carries the ``ray`` marker (so ``-m "not ray"`` never starts
    Ray), and a ``ray`` test gets :data:`RAY_TIMEOUT_S` unless it sets its own ``timeout``."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None:
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("ray") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(RAY_TIMEOUT_S))


@pytest.fixture(scope="session")
def ray_local():
    """A quiet local Ray (dashboard on 127.0.0.1, small object store), shared by the session."""
    import ray

    from jigclu.ray_session import init_ray

    init_ray(num_cpus=RAY_CPUS)
    yield ray
    ray.shutdown()
