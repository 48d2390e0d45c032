"""Pretraining methods on the one loop (jigclu/methods/): SimCLR as ``method: simclr`` beside JigClu.

What a user relies on: ``jigclu pretrain method=simclr`` trains the baseline through the same loop
(checkpoints, metrics, epoch lines) and its backbone feeds the downstream trainers; a run does not
resume under another method; a key the configured method never reads is refused; a sweep can search
``method`` and its report puts the methods side by side. (Two workers' SimCLR loss = one process's:
tests/test_global_montage.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jigclu.checkpoint import load_checkpoint
from jigclu.cli import main
from jigclu.config import load_config
from jigclu.errors import ConfigError
from jigclu.methods import METHODS, build_method
from jigclu.runs import RunLayout, read_metrics

TINY = ["data.dataset=digits", "data.image_size=32", "data.batch_size=64", "data.limit=1024", "model.width=8",
        "jigsaw.crop_size=32", "monitor.train_limit=300", "monitor.test_limit=150", "optim.lr=1.0"]


def test_each_method_builds_a_backbone_and_reports_its_stats():
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    for name, cls in METHODS.items():
        method = build_method(load_config(None, [*TINY, f"method={name}"]))
        out = method(images, 7)
        assert set(out) == {"loss", *cls.stats} and torch.isfinite(out["loss"])
        assert method.backbone(torch.zeros(2, 3, 32, 32)).shape == (2, method.backbone.feature_dim)
        assert all(k.startswith("backbone.") for k in method.model.state_dict() if "backbone" in k)


def test_simclr_pretrains_from_the_cli_feeds_linear_and_does_not_resume_as_jigclu(tmp_path, capsys):
    common = [*TINY, f"output_dir={tmp_path}", "name=sim"]
    assert main(["pretrain", "--no-progress", *common, "method=simclr", "loss.temperature=0.2",
                 "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "pair acc" in out and "loc acc" not in out, out
    rows = read_metrics(tmp_path / "sim")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert "pair_acc" in rows[0] and "loss_clu" not in rows[0]
    # NT-Xent learns on digits (4.80 -> 4.45 here); a view finds its partner among 127 others (chance 0.8%)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.15, [r["loss"] for r in rows]
    assert rows[-1]["pair_acc"] > max(rows[0]["pair_acc"], 2.0), [r["pair_acc"] for r in rows]
    assert rows[-1]["loss_temperature"] == pytest.approx(0.2)
    state = load_checkpoint(RunLayout(str(tmp_path / "sim")).latest_checkpoint(), map_location="cpu")
    assert state["config"]["method"] == "simclr"
    assert {k.split(".")[0] for k in state["model"]} == {"backbone", "head"}

    assert main(["linear", "--no-progress", *TINY[:2], "data.limit=1024", f"output_dir={tmp_path}", "name=lin",
                 f"eval.pretrained={tmp_path / 'sim'}", "eval.epochs=1", "eval.image_size=32"]) == 0
    assert read_metrics(tmp_path / "lin")[-1]["val_top1"] > 10.0  # above chance on digits

    capsys.readouterr()
    assert main(["pretrain", "--no-progress", "--resume", *common, "method=jigclu", "train.epochs=4"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume: method differs" in err[0], err
    assert len(read_metrics(tmp_path / "sim")) == 3  # the run is left as it was


def test_a_key_the_method_never_reads_is_one_line(tmp_path, capsys):
    assert main(["pretrain", f"output_dir={tmp_path}", "method=simclr", "loss.w_loc=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jigclu: error: method simclr does not read loss.w_loc (only method jigclu does)"], err
    assert not any(tmp_path.iterdir())


def sweep_yaml(tmp_path: Path, config: dict, space: dict, **extra) -> Path:
    data = {"name": "m", "task": "pretrain", "output_dir": str(tmp_path),
            "config": {"data": {"dataset": "digits", "image_size": 32, "batch_size": 32}, "jigsaw": {"crop_size": 32},
                       "model": {"width": 8}, "train": {"epochs": 2, "steps_per_epoch": 4, "progress": False},
                       "monitor": {"train_limit": 300, "test_limit": 150}, **config},
            "space": space, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_sweep_refuses_keys_no_method_of_its_trials_reads(tmp_path):
    from tune.space import load_sweep

    with pytest.raises(ConfigError, match="space: method simclr does not read loss.w_loc"):
        load_sweep(sweep_yaml(tmp_path, {"method": "simclr"}, {"loss.w_loc": "uniform 0.5 2"}))
    # searched together with method: some trials read it
    load_sweep(sweep_yaml(tmp_path, {}, {"method": "choice [jigclu, simclr]", "loss.w_loc": "uniform 0.5 2"}))


@pytest.mark.ray
def test_a_sweep_searches_the_method_and_the_report_sets_them_side_by_side(ray_local, tmp_path, capsys):
    from tune.report import load_sweep_dir
    from tune.report.summary import build_report
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    sweep = load_sweep(sweep_yaml(tmp_path, {}, {"method": "choice [jigclu, simclr]",
                                                 "loss.temperature": "loguniform 0.1 0.5"},
                                  searcher="random", num_samples=4, max_concurrent=1, seed=3,
                                  scheduler={"type": "none"}))
    summary = run_sweep(sweep, progress=False)
    assert summary["trials"] == 4 and summary["errored"] == 0, summary
    sweep_dir = Path(summary["sweep_dir"])
    ran = {}
    for trial in sweep_dir.glob("trial-*"):
        sampled = json.loads((trial / "sampled.json").read_text())["method"]
        ran[trial.name] = sampled
        assert yaml.safe_load((trial / "config.yaml").read_text())["method"] == sampled
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        assert ("pair_acc" in rows[-1]) == (sampled == "simclr")  # the trial trained the method it was given
    assert set(ran.values()) == {"jigclu", "simclr"}, ran  # seed 3 draws both

    report = build_report(load_sweep_dir(sweep_dir), importances=False)
    groups = {g["method"]: g for g in report["by_method"]}
    assert set(groups) == {"jigclu", "simclr"}
    for name, g in groups.items():
        assert g["trials"] == sum(m == name for m in ran.values())
        assert ran[f"trial-{g['best_trial']}"] == name
    values = [g["best"] for g in report["by_method"]]
    assert values == sorted(values, reverse=True)  # best method first (knn_top1 is maximised)
    capsys.readouterr()
    assert main(["report", str(sweep_dir), "--no-importance"]) == 0
    shown = capsys.readouterr().out
    assert "By method" in shown and all(g["best_trial"] in shown for g in report["by_method"]), shown
