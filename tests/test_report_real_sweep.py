"""The sweep report on one tiny real sweep (3 trials of tune/configs/pretrain_digits.yaml on the
shared local Ray): its best trial agrees with Ray's own analysis (JSON and table), its Parquet
export holds every trial-epoch and its plots are written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_report import run_report
from tune import report as rep

ROOT = Path(__file__).resolve().parents[1]


# --- one tiny real sweep --------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_sweep(ray_local, tmp_path_factory):
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    out = tmp_path_factory.mktemp("report-sweeps")
    sweep = load_sweep(ROOT / "tune" / "configs" / "pretrain_digits.yaml",
                       ["num_samples=3", "config.train.epochs=2", "max_concurrent=1", f"output_dir={out}", "name=rep"])
    summary = run_sweep(sweep, progress=False)
    return Path(summary["sweep_dir"])


@pytest.mark.ray
def test_real_sweep_best_matches_ray(real_sweep):
    from ray.tune import ExperimentAnalysis

    # the demo sweeps' objective: the linear probe on the validation split
    best_trial = ExperimentAnalysis(str(real_sweep)).get_best_trial("probe_top1", "max", scope="all")
    ray_best = best_trial.metric_analysis["probe_top1"]["max"]

    code, out = run_report([str(real_sweep), "--format", "json"])
    data = json.loads(out)
    assert code == 0 and data["status"] == "ok"
    assert data["best"]["trial_id"] == best_trial.trial_id
    assert data["best"]["value"] == pytest.approx(ray_best)
    assert data["top"][0]["trial_id"] == best_trial.trial_id
    assert data["best"]["test"] is not None  # scored once on the test split, after the sweep
    assert data["counts"]["total"] == 3 and data["counts"]["errored"] == 0
    assert data["counts"]["finished"] >= 1  # the first trial always runs to max_t
    config_path = real_sweep / f"trial-{best_trial.trial_id}" / "config.yaml"
    assert data["best"]["command"] == f"jigclu pretrain --config {config_path}"
    assert data["best"]["config"]["name"] == f"rep-{best_trial.trial_id}"
    assert data["sweep"]["scheduler"] == {"type": "asha", "grace_period": 1, "reduction_factor": 3.0, "max_t": 2}

    # the table names the same best trial, first in its ranking, in a narrow terminal too
    code, table = run_report([str(real_sweep)], width=60)
    assert code == 0
    assert f"Best trial {best_trial.trial_id}: probe_top1 {rep.fmt_num(ray_best)}" in table
    first_row = next(line for line in table.splitlines() if re.match(r"\s*1\s+\w{8}\s", line))
    assert best_trial.trial_id in first_row
    assert "Parameter importances (fANOVA" in table


@pytest.mark.ray
def test_real_sweep_parquet_and_plots(real_sweep, tmp_path):
    pd = pytest.importorskip("pandas")
    out = tmp_path / "trials.parquet"
    plots = tmp_path / "plots"
    code, _ = run_report([str(real_sweep), "--export", str(out), "--plots", str(plots)])
    assert code == 0
    expected = 0
    for trial_dir in real_sweep.glob("trial-*"):
        lines = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
        expected += len({r["training_iteration"] for r in lines})
    frame = pd.read_parquet(out)
    assert len(frame) == expected > 0
    for column in ("sweep", "trial_id", "status", "epoch", "knn_top1", "loss", "time_total_s",
                   "param.model.grid", "param.optim.lr", "param.loss.w_loc", "param.loss.temperature",
                   "param.jigsaw.cross_ratio"):
        assert column in frame.columns, column
    assert set(frame["sweep"]) == {"rep"} and frame["epoch"].min() == 1
    assert set(frame["status"]) <= {"finished", "stopped"}
    for name in ("learning_curves.png", "importances.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
