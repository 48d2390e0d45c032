"""Shared fixtures: one local Ray instance for every integration test (started on demand), and
scikit-learn's digits as arrays for the data tests (tests/test_data.py, tests/test_data_idx_cifar.py)."""

from __future__ import annotations

import os
import sys

import numpy as np
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


@pytest.fixture(autouse=True)
def _no_child_left_behind():
    """A fault row's ``jigclu`` child runs in its own session: kill any a test left running (a failed
    assertion or a timeout before its own cleanup)."""
    yield
    kit = sys.modules.get("benchmarks.faults.fault_kit")
    if kit is not None:
        kit.Command.kill_all()


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A quiet local Ray (dashboard on 127.0.0.1, small object store), shared by the session.

    Its session directory and HOME are temporary: Ray keeps state under HOME (``~/.ray/auth_token``
    turns token auth on for every later local Ray) and jigclu its study cache (``~/.cache/jigclu``).
    """
    import shutil
    import tempfile

    import ray

    from jigclu.ray_session import init_ray

    saved_home = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    temp = tempfile.mkdtemp(prefix="jr-", dir="/tmp")  # Ray's unix socket paths must stay under 108 bytes
    try:
        init_ray(num_cpus=RAY_CPUS, temp_dir=temp)
        yield ray
    finally:
        ray.shutdown()
        if saved_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved_home
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as uint8 [N, 8, 8] (0..255) and int64 labels, computed independently."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.rint(bunch.images * 255 / 16).astype(np.uint8), bunch.target.astype(np.int64)
