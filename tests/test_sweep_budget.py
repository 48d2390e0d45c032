"""A sweep's time budget on a real sweep: the trials it cut are recorded for the report as cut by the
budget, not by the scheduler (``budget_stopped.json``, written by ``tune.sweep.BudgetStops``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


@pytest.mark.ray
@pytest.mark.slow  # about 40 s on 2 CPU cores
def test_trials_running_when_the_budget_ends_are_recorded_as_cut_by_it(ray_local, tmp_path):
    from tune.report import load_sweep_dir
    from tune.report.summary import build_report
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    data = {"name": "budget", "task": "pretrain", "output_dir": str(tmp_path),
            "config": {"data": {"dataset": "digits", "image_size": 32, "batch_size": 32}, "jigsaw": {"crop_size": 32},
                       "model": {"width": 8}, "train": {"epochs": 200, "steps_per_epoch": 2, "progress": False},
                       "monitor": {"train_limit": 100, "test_limit": 50}},
            "space": {"optim.lr": "loguniform 0.05 0.5"}, "num_samples": 2, "max_concurrent": 2,
            "time_budget_s": 20, "scheduler": {"type": "none"}, "searcher": "random"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    summary = run_sweep(load_sweep(path), progress=False)
    sweep_dir = Path(summary["sweep_dir"])
    cut = json.loads((sweep_dir / "budget_stopped.json").read_text())
    trials = sorted(p.name.removeprefix("trial-") for p in sweep_dir.glob("trial-*"))
    assert sorted(cut) == trials, (cut, trials)  # 200 epochs do not fit 20 s: the budget ended both
    problems = {p["trial_id"]: p["reason"] for p in build_report(load_sweep_dir(sweep_dir), importances=False)["problems"]}
    assert set(problems) == set(trials)
    assert all(reason.startswith("stopped by the sweep's time budget (20 s)") for reason in problems.values()), problems
