"""``make gpu-check`` (``python -m benchmarks.gpu_check``): its code paths run on CPU at tiny sizes, and it
passes with one line where there is no CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    from benchmarks import gpu_check

    return gpu_check


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **env})


def test_smoke_on_cpu_runs_every_check(gpu_check):
    proc = run("--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for check in gpu_check.CHECKS:
        row = [line for line in lines if check in line]
        assert row, f"no row {check!r} in\n{proc.stdout}"
        assert "pass" in row[0] and "FAIL" not in row[0], row[0]
    assert f"all {len(gpu_check.CHECKS)} checks that ran passed" in proc.stdout


def test_without_cuda_one_line_and_success(gpu_check):
    proc = run(CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == gpu_check.NO_CUDA


def test_spent_budget_skips_the_rows_with_a_clear_line(gpu_check):
    proc = run("--device", "cpu", "--budget", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for check in gpu_check.CHECKS:
        assert f"time budget of 0 s spent (0 s); skipping {check!r}" in proc.stdout
        assert "skipped" in next(line for line in lines if line.startswith("│" + check))
    assert "all 0 checks that ran passed" in proc.stdout
