"""The cheap rows of the fault matrix (``benchmarks/faults/fault_matrix.py``), run as tests.

Each starts the real ``jigclu`` command in a child process, injects its fault from outside at a
seeded random moment, and checks what the matrix checks: the run finishes (by itself or with
``--resume``), at most one completed epoch is trained again, every retained checkpoint loads with
no temporary file beside it, the user saw one line and no traceback, no epoch is missing.
"""

from __future__ import annotations

import random

import pytest

from benchmarks.faults import fault_matrix as faults  # not tests/faults.py, another module
from benchmarks.faults import faults_preempt, faults_ray


def _check(row: faults.Row) -> None:
    assert row.ok, row
    assert row.redone is not None and row.redone <= 1, row
    assert row.data_lost == "none", row


@pytest.mark.slow
def test_ctrl_c_mid_epoch_then_resume(tmp_path):
    row = faults.row_sigint(tmp_path, random.Random(1))
    _check(row)
    assert row.user_saw == "`jigclu: interrupted`" and row.redone == 0


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_the_step_then_resume(tmp_path):
    row = faults_preempt.row_sigterm(tmp_path, random.Random(6))
    _check(row)
    assert row.user_saw.startswith("`jigclu: terminated (SIGTERM): checkpoint in epoch") and row.redone == 0


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    row = faults.row_truncated(tmp_path, random.Random(2))
    _check(row)
    assert row.user_saw.startswith("`jigclu: warning: checkpoint") and row.redone == 1


@pytest.mark.slow
def test_disk_full_fails_in_one_line_and_resumes_once_there_is_room(tmp_path):
    row = faults.row_enospc(tmp_path, random.Random(3))
    if row.outcome.startswith("skipped"):
        pytest.skip(row.outcome)
    _check(row)
    assert row.outcome.startswith("exit 2; resumed") and "No space left" in row.user_saw


@pytest.mark.slow
def test_s3_endpoint_outage_is_ridden_out(tmp_path):
    # 20 s: longer than the AWS client's own retries, so jigclu's (storage.RETRY_ENV) are needed
    row = faults.row_s3_outage(tmp_path, random.Random(4), outage_s=20.0)
    _check(row)
    assert row.outcome == "finished through the outage" and "storage unreachable" in row.user_saw


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults  # ~45-60 s: in `make faults` (and its fault-matrix row), left out of `make test` (its budget)
def test_sigkilled_train_worker_mid_step_is_replaced(ray_local, tmp_path):
    # on the session's Ray: a second local Ray on the machine confuses Ray's own State API lookups
    address = ray_local.get_runtime_context().gcs_address
    _check(faults_ray.row_worker_kill(tmp_path, random.Random(5), address=address))


def test_a_metrics_line_that_does_not_fit_leaves_the_file_as_it_was(tmp_path):
    """The append of a metrics line on a full disk: one StorageError line, no half line left."""
    import os
    import subprocess

    from jigclu import storage

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        metrics = mnt / "metrics.jsonl"
        storage.append_line(metrics, '{"epoch": 0}')
        (mnt / "filler").write_bytes(b"\0" * (os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize))
        with pytest.raises(storage.StorageError, match="No space left"):
            storage.append_line(metrics, '{"epoch": 1, "pad": "' + "x" * 20000 + '"}')
        assert metrics.read_text() == '{"epoch": 0}\n'
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_the_filesystem_ray_train_gets_rides_out_an_outage(tmp_path, monkeypatch):
    """What Ray Train writes through (``ray_storage``'s filesystem for an ``s3://`` root) survives an
    endpoint that refuses connections for longer than the AWS client's own retries: fails if
    ``ray_storage`` hands Ray Train the bare object-store filesystem."""
    import threading

    from benchmarks.harness import cluster_box
    from jigclu.ray_train import ray_storage

    s3 = cluster_box.S3Endpoint(tmp_path)
    proxy = cluster_box.TcpProxy(s3.port)
    back = threading.Timer(12.0, proxy.start)  # back after 12 s, while the calls below wait
    try:
        s3.create_bucket("runs")
        for key, value in s3.env.items():  # restored by monkeypatch after the test
            monkeypatch.setenv(key, value)
        fs = ray_storage(f"s3://runs/out?endpoint_override=127.0.0.1:{proxy.port}&scheme=http")["storage_filesystem"]
        proxy.stop()
        back.start()
        with fs.open_output_stream("runs/trial/checkpoint_manager_snapshot.json") as out:
            out.write(b'{"epoch": 3}')
        assert fs.get_file_info("runs/trial/checkpoint_manager_snapshot.json").size == 12
        with fs.open_input_stream("runs/trial/checkpoint_manager_snapshot.json") as fh:
            assert fh.read() == b'{"epoch": 3}'
    finally:
        back.cancel()
        if back.is_alive():
            back.join()
        proxy.stop()
        s3.stop()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults  # ~100 s: in `make faults` (and its fault-matrix row sweep-sigterm)
def test_sigterm_of_the_sweep_driver_saves_its_state_and_resume_finishes(tmp_path):
    """A preempted head node: SIGTERM to ``jigclu tune`` stops the sweep (Tune's state and the study
    saved), exit 143 with one line naming --resume; the resumed sweep keeps the finished trials.
    Fails if SIGTERM kills the driver where it stands (exit -15, nothing said)."""
    import signal

    row = faults_ray.row_sweep_driver_kill(tmp_path, random.Random(6), sig=signal.SIGTERM)
    assert row.outcome.startswith("exit 143; resumed: 4/4"), row
    assert "terminated (SIGTERM)" in row.user_saw and "traceback" not in row.user_saw, row
    _check(row)
