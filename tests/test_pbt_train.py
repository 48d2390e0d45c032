"""PBT for Ray Train trials: an exploited multi-worker trial loads its donor's Train checkpoint and
trains on with the mutated values (tune/train_trial.py), and the report's PBT schedule shows it."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from tune.space import load_sweep

TINY = {"data": {"dataset": "digits", "image_size": 32, "batch_size": 32}, "jigsaw": {"crop_size": 32},
        "model": {"width": 8}, "train": {"epochs": 2, "steps_per_epoch": 4, "progress": False},
        "monitor": {"train_limit": 300, "test_limit": 150},
        "scaling": {"workers": 2, "cpus_per_worker": 0.5}}


def rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def pbt_sweep(tmp_path: Path):
    data = {"name": "pbtx", "task": "pretrain", "config": TINY, "trial_mode": "ray_train",
            "space": {"optim.lr": "loguniform 0.01 1", "loss.temperature": "uniform 0.1 0.7"},
            "output_dir": str(tmp_path / "sweeps"), "num_samples": 2, "max_concurrent": 2, "test_top_k": 0,
            # synch: both trials perturbed together after every epoch, so the worse one always exploits
            "scheduler": {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5, "synch": True}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_sweep(path)


def test_a_retry_resumes_its_run_and_an_exploit_starts_a_new_one():
    """plan_runs, no Ray: which pointer restarts which Train run."""
    from jigclu.config import RunConfig, build_config
    from tune.train_trial import plan_runs

    cfg = build_config(RunConfig, {**TINY, "name": "s-a"})
    mutated = build_config(RunConfig, {**TINY, "name": "s-a", "optim": {"lr": 0.5}})
    runs, exploit = plan_runs(cfg, None, None)
    assert [r["run"] for r in runs] == ["s-a"] and not exploit
    own = {"run": "s-a", "checkpoint": "checkpoint_epoch_00001", "epoch": 1}
    assert plan_runs(cfg, own, runs) == (runs, False)  # a retry (its reports may have run ahead)
    donor = {"run": "s-b", "checkpoint": "checkpoint_epoch_00001", "epoch": 1}
    after, exploit = plan_runs(mutated, donor, runs)
    assert exploit and after[-1]["run"] == "s-a-x1" and after[-1]["from"] == donor
    assert plan_runs(mutated, donor, after) == (after, False)  # died before its first report: same run
    assert plan_runs(mutated, {**donor, "run": "s-a-x1", "epoch": 3}, after) == (after, False)
    # its own past, with a mutated config (PBT cloned a trial that had cloned this one): a new run
    again, exploit = plan_runs(cfg, {**own, "run": "s-a-x1"}, after)
    assert exploit and again[-1]["run"] == "s-a-x2"


@pytest.mark.ray
@pytest.mark.slow  # 83-88 s on 2 CPU cores (AVX512; 170 s under load): 2 Train run starts per trial
def test_exploited_ray_train_trial_loads_its_donors_weights_and_the_new_values(ray_local, tmp_path):
    from jigclu.checkpoint import load_checkpoint
    from jigclu.runs import ray_checkpoint_name
    from jigclu.trainers.common import cosine_lambda
    from jigclu.trainers.loop import weights_l1
    from tune.report.data import load_sweep_dir
    from tune.report.science import schedules
    from tune.sweep import run_sweep
    from tune.layout import TRAIN_RUNS
    from tune.train_trial import pointed_file

    sweep = pbt_sweep(tmp_path)
    summary = run_sweep(sweep, progress=False)
    assert summary["trials"] == 2 and summary["errored"] == 0, summary
    sweep_dir = Path(summary["sweep_dir"])
    train_root = str(sweep_dir / "train")
    cfg = sweep.trial_config({})
    steps, epochs = cfg.train.steps_per_epoch, cfg.train.epochs
    schedule = cosine_lambda(steps * epochs, int(cfg.optim.warmup_epochs * steps))
    plan = schedules(load_sweep_dir(sweep_dir))
    exploits = 0
    for trial in sorted(sweep_dir.glob("trial-*")):
        history = rows(trial)
        # Tune hears of every epoch once, in order, exploit or not
        assert [r["epoch"] for r in history] == list(range(epochs)), [r["epoch"] for r in history]
        runs = json.loads((trial / TRAIN_RUNS).read_text())
        for before, run in pairwise(runs):
            exploits += 1
            donor = run["from"]
            assert donor["run"] != before["run"]  # another trial's run: 2 trials, synch
            first = next(r for r in history if r["epoch"] == donor["epoch"] + 1)  # the run's first epoch
            # the donor's epoch and weights, not its own
            assert first["resumed_from_epoch"] == donor["epoch"]
            donor_weights = weights_l1(load_checkpoint(pointed_file(donor, train_root))["model"])
            own = {"run": before["run"], "checkpoint": ray_checkpoint_name(donor["epoch"])}
            own_weights = weights_l1(load_checkpoint(pointed_file(own, train_root))["model"])
            assert first["resumed_weights_l1"] == pytest.approx(donor_weights, rel=1e-12)
            assert abs(first["resumed_weights_l1"] - own_weights) > 1e-6 * own_weights
            # the new config's values, as the loop used them
            previous = next(r for r in history if r["epoch"] == donor["epoch"])
            assert first["config"] != previous["config"]
            lr = first["config"]["optim.lr"] * cfg.data.batch_size / 256  # scale_lr
            assert first["lr"] == pytest.approx(lr * schedule(first["step"]), rel=1e-6)
            assert first["loss_temperature"] == pytest.approx(first["config"]["loss.temperature"])
            # the report's PBT schedule shows the exploit at that epoch
            changes = plan[trial.name.removeprefix("trial-")]
            assert any(c["epoch"] == first["training_iteration"] and "optim.lr" in c["changes"] for c in changes), \
                changes
    assert exploits >= 1, "PBT exploited no trial: the donor's weights were never checked"
