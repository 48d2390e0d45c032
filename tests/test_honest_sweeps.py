"""Honest sweeps: a validation split that no test image enters, the linear-probe objective scored
once on test, PBT whose mutated values take effect, the collapse stop rule, bad input up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jigclu.config import RunConfig, build_config
from jigclu.errors import ConfigError, DataError
from tune.space import load_sweep

DIGITS = {"dataset": "digits", "image_size": 32, "batch_size": 32}
TINY = {"data": DIGITS, "jigsaw": {"crop_size": 32}, "model": {"width": 8},
        "train": {"epochs": 3, "steps_per_epoch": 4, "progress": False},
        "monitor": {"train_limit": 300, "test_limit": 150}}


def sweep_file(tmp_path: Path, space: dict, config: dict | None = None, **extra) -> Path:
    data = {"name": "h", "task": "pretrain", "config": config or TINY, "space": space,
            "output_dir": str(tmp_path / "sweeps"), **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ------------------------------------------------------------------ the validation split (no Ray)

def test_validation_split_is_balanced_seeded_and_disjoint_from_training():
    from jigclu.data.splits import training_splits

    cfg = build_config(RunConfig, {"data": {**DIGITS, "val_size": 200, "limit": 500}})
    train, val = training_splits(cfg)
    again_train, again_val = training_splits(cfg)
    assert len(val) == 200 and len(train) == 500
    counts = torch.bincount(val.labels, minlength=10)
    assert counts.max() - counts.min() <= 1, counts  # class-balanced
    assert torch.equal(val.images, again_val.images)  # seeded: every trial holds out the same images
    seen = {bytes(im.numpy()) for im in train.images}
    assert not any(bytes(im.numpy()) in seen for im in val.images)
    other, other_val = training_splits(build_config(RunConfig, {"data": {**DIGITS, "val_size": 0.1}, "seed": 1}))
    n = len(other) + len(other_val)  # a fraction is of the whole training split, carved out of it
    assert len(other_val) == round(0.1 * n) and n > len(train) + len(val), (len(other), len(other_val))


def test_no_test_image_reaches_the_monitor_when_a_validation_split_is_set(tmp_path):
    """The queries of every selection come from the training images: none is a test image."""
    from jigclu.context import LocalContext
    from jigclu.data import load_dataset
    from jigclu.trainers.pretrain import PretrainTask

    cfg = build_config(RunConfig, {**TINY, "data": {**DIGITS, "val_size": 150}, "name": "v",
                                   "output_dir": str(tmp_path)})
    task = PretrainTask()
    task.setup(cfg, LocalContext(str(tmp_path / "v"), torch.device("cpu")), None)
    test = load_dataset("digits", "test", image_size=32)
    train = load_dataset("digits", "train", image_size=32)
    test_bytes = {bytes(im.numpy()) for im in test.images}
    train_bytes = {bytes(im.numpy()) for im in train.images}
    queries = [bytes(im.numpy()) for im in task.monitor.query_images]
    assert task.monitor.split == "val" and len(queries) == 150
    assert not any(q in test_bytes for q in queries)
    assert all(q in train_bytes for q in queries)
    bank = {bytes(im.numpy()) for im in task.monitor.bank_images}
    assert not bank & set(queries)  # the kNN bank holds no validation image either
    trained = {bytes(task.loader.dataset[i][0].numpy()) for i in range(len(task.loader.dataset))}
    assert not trained & set(queries)  # and no pretraining batch does


def test_val_size_larger_than_the_training_split_is_one_line(tmp_path, capsys):
    from jigclu.cli import main

    code = main(["pretrain", "--no-progress", "--config", "configs/demo.yaml", "data.dataset=digits",
                 "data.val_size=5000", f"output_dir={tmp_path}", "name=big"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "val_size=5000" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "big").exists()


# ------------------------------------------------------------------ the optimiser after a restore

def test_restored_optimizer_takes_the_new_config_values_not_the_checkpoints():
    """ray-project/ray#36660: a PBT exploit (or a resume with a changed lr) must train with the new
    lr, momentum and weight decay, at the same position in the schedule."""
    from jigclu.trainers.common import cosine_lambda
    from jigclu.trainers.loop import apply_configured, configured_hyperparameters

    def build(lr: float, momentum: float):
        params = [torch.nn.Parameter(torch.ones(3))]
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=1e-4)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(20))

    opt, sched = build(0.1, 0.9)
    for _ in range(5):
        opt.param_groups[0]["params"][0].grad = torch.ones(3)
        opt.step()
        sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    new_opt, new_sched = build(0.4, 0.5)
    configured = configured_hyperparameters(new_opt, new_sched)
    new_opt.load_state_dict(state["optimizer"])
    new_sched.load_state_dict(state["scheduler"])
    assert new_opt.param_groups[0]["lr"] == pytest.approx(0.1 * cosine_lambda(20)(5))  # the bug, unfixed
    apply_configured(new_opt, new_sched, configured)
    group = new_opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.4 * cosine_lambda(20)(5)) and group["momentum"] == 0.5
    assert new_opt.state[group["params"][0]]["momentum_buffer"] is not None  # the state is kept
    new_sched.step()
    assert group["lr"] == pytest.approx(0.4 * cosine_lambda(20)(6))  # and the schedule goes on from there


def test_collapse_rule():
    from jigclu.evaluation.knn import CollapseRule, embedding_spread

    same = torch.nn.functional.normalize(torch.ones(50, 16), dim=1)
    assert embedding_spread(same) == pytest.approx(0.0, abs=1e-6)
    spread = embedding_spread(torch.nn.functional.normalize(torch.randn(2000, 16), dim=1))
    assert 0.9 < spread < 1.1
    rule = CollapseRule(0.02, 2, 10)
    assert rule.check({"knn_top1": 80.0, "embed_std": 0.3}) == {"collapsed": 0.0}
    out = rule.check({"knn_top1": 80.0, "embed_std": 0.001})
    assert out["collapsed"] == 1.0 and "0.0010 < 0.02" in out["collapse_reason"]
    assert rule.check({"knn_top1": 11.0, "embed_std": 0.3})["collapsed"] == 0.0  # one epoch at chance
    assert "at chance" in rule.check({"knn_top1": 10.0, "embed_std": 0.3})["collapse_reason"]  # two in a row


# ------------------------------------------------------------------ bad input, before any trial

def test_pbt_refuses_a_key_it_cannot_mutate(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep_file(tmp_path, {"model.grid": "choice [2, 4]", "optim.lr": "loguniform 0.01 1"},
                              scheduler={"type": "pbt"}))
    assert "pbt cannot mutate model.grid" in str(err.value) and "\n" not in str(err.value)


def one_class_folder(root: Path) -> str:
    from PIL import Image

    for split in ("train", "test"):
        folder = root / "one" / split / "only"
        folder.mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (32, 32), (i * 5, 0, 0)).save(folder / f"{i}.png")
    return f"folder:{root / 'one'}"


def test_a_source_without_labels_sweeps_on_the_losses(tmp_path):
    """One class = no labels: no kNN or probe, the sweep may select on the losses."""
    from jigclu.context import LocalContext
    from jigclu.trainers.pretrain import PretrainTask
    from tune.selection import check_data

    cfg = {**TINY, "data": {"dataset": one_class_folder(tmp_path), "batch_size": 16}}
    check_data(load_sweep(sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1"}, config=cfg, metric="loss",
                                     mode="min")))
    with pytest.raises(ConfigError, match="no labels .* select on loss"):
        check_data(load_sweep(sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1"}, config=cfg)))
    task = PretrainTask()
    run_cfg = build_config(RunConfig, {**cfg, "name": "u", "output_dir": str(tmp_path)})
    task.setup(run_cfg, LocalContext(str(tmp_path / "u"), torch.device("cpu")), None)
    assert task.monitor is None
    assert "knn_top1" not in task.end_epoch(0, {"loss": 4.0}, 1.0)


def test_probe_objective_without_labels_and_a_too_large_val_split_fail_before_ray(tmp_path, capsys):
    from jigclu.cli import main

    cfg = {**TINY, "data": {"dataset": one_class_folder(tmp_path), "batch_size": 16}}
    path = sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1"}, config=cfg, objective="linear_probe")
    assert main(["tune", "--no-progress", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "objective linear_probe needs labels" in err and "\n" not in err
    path = sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1"}, val_size=5000)
    assert main(["tune", "--no-progress", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "val_size=5000" in err and "\n" not in err
    assert not (tmp_path / "sweeps" / "h").exists()


def test_schedulers_get_their_own_metrics(tmp_path):
    from tune.schedulers import build_scheduler

    sweep = load_sweep(sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1"}, objective="linear_probe"))
    assert sweep.metric == "probe_top1" and sweep.rung_metric == "knn_top1"
    asha = build_scheduler(sweep)
    assert asha.metric == "knn_top1"  # ASHA's rungs: the cheap per-epoch kNN
    cfg = sweep.trial_config({"optim.lr": 0.1})
    assert cfg.monitor.probe and cfg.data.val_size == 0.1


# ------------------------------------------------------------------ real sweeps (shared Ray)

@pytest.mark.ray
@pytest.mark.slow  # about 40 s on 2 CPU cores
def test_probe_objective_selects_on_val_and_scores_the_best_once_on_test(ray_local, tmp_path):
    import optuna

    from tune.sweep import run_sweep

    sweep = load_sweep(sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1"}, objective="linear_probe",
                                  searcher="random", num_samples=3, max_concurrent=2, val_size=150,
                                  scheduler={"type": "none"}))
    summary = run_sweep(sweep, progress=False)
    assert summary["trials"] == 3 and summary["errored"] == 0, summary
    sweep_dir = Path(summary["sweep_dir"])
    trials = sorted(sweep_dir.glob("trial-*"))
    every = [r for t in trials for r in rows(t)]
    assert every and all(r["knn_split"] == "val" and "probe_top1" in r and "init_knn_top1" in r for r in every)
    # the searcher's objective is each trial's final probe value on val
    study = optuna.load_study(study_name="h", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(rows(t)[-1]["probe_top1"] for t in trials))
    scores = json.loads((sweep_dir / "test_scores.json").read_text())
    best = max(trials, key=lambda t: max(r["probe_top1"] for r in rows(t)))
    [entry] = scores["trials"]
    assert best.name == f"trial-{entry['trial_id']}" and entry["rank"] == 1 and scores["selected_on"] == "val"
    assert entry["queries"] == 360 and 0 < entry["metrics"]["probe_top1"] <= 100  # the whole digits test split


@pytest.mark.ray
@pytest.mark.slow  # about 60 s on 2 CPU cores
def test_pbt_exploit_trains_with_the_mutated_values(ray_local, tmp_path):
    from jigclu.trainers.common import cosine_lambda
    from tune.sweep import run_sweep

    sweep = load_sweep(sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1", "loss.temperature": "uniform 0.1 0.7"},
                                  num_samples=4, max_concurrent=4, resources={"cpu": 0.5},
                                  # synch: all 4 trials perturbed together each epoch, so the bottom two always
                                  # exploit (without it, whether any trial exploits depends on arrival order)
                                  scheduler={"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                                             "synch": True}))
    summary = run_sweep(sweep, progress=False)
    assert summary["trials"] == 4 and summary["errored"] == 0, summary
    cfg = sweep.trial_config({})
    steps, epochs = cfg.train.steps_per_epoch, cfg.train.epochs
    schedule = cosine_lambda(steps * epochs, int(cfg.optim.warmup_epochs * steps))
    exploits = 0
    for trial in Path(summary["sweep_dir"]).glob("trial-*"):
        history = rows(trial)
        for before, after in zip(history, history[1:]):
            if after["config"] == before["config"]:
                continue
            exploits += 1
            lr = after["config"]["optim.lr"] * cfg.data.batch_size / 256  # scale_lr
            assert after["lr"] == pytest.approx(lr * schedule(after["step"]), rel=1e-6)
            # the loss the step used (its criterion's temperature), not the donor checkpoint's saved config
            assert after["loss_temperature"] == pytest.approx(after["config"]["loss.temperature"])
    assert exploits >= 1, "PBT exploited no trial: the mutated values were never checked"


@pytest.mark.ray
@pytest.mark.slow  # about 20 s on 2 CPU cores
def test_collapsed_trials_are_stopped_with_the_reason(ray_local, tmp_path):
    from tune.report import build_report, load_sweep_dir
    from tune.sweep import run_sweep

    config = {**TINY, "monitor": {**TINY["monitor"], "collapse_std": 10.0}}  # every embedding "collapsed"
    sweep = load_sweep(sweep_file(tmp_path, {"optim.lr": "loguniform 0.01 1"}, config=config, num_samples=2,
                                  scheduler={"type": "none"}, test_top_k=0))
    summary = run_sweep(sweep, progress=False)
    assert summary["trials"] == 2 and summary["errored"] == 0
    for trial in Path(summary["sweep_dir"]).glob("trial-*"):
        assert len(rows(trial)) == 1 and rows(trial)[0]["collapsed"] == 1.0  # stopped after its first epoch
    report = build_report(load_sweep_dir(summary["sweep_dir"]), importances=False)
    reasons = [p["reason"] for p in report["problems"]]
    assert len(reasons) == 2 and all(r.startswith("collapsed") for r in reasons), reasons
