"""The knobs the recipe search (tune/configs/recipe_fashion.yaml) needs: a fixed wall-clock budget per
epoch (train.epoch_s, the lr schedule on training time) and the monitor's own image side
(monitor.image_size, to score 64 px montages of 32 px patches at 32 px)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jigclu.cli import main
from jigclu.config import load_config
from jigclu.context import LocalContext
from jigclu.errors import ConfigError
from jigclu.runs import read_metrics
from jigclu.trainers import run_task
from jigclu.trainers.common import TimeCosine, cosine_at

ROOT = Path(__file__).resolve().parents[1]
# 1,024 digits at batch 32: one pass is 32 steps, far more than 0.05 s of training on any machine
TINY = ["data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=1024", "model.width=8",
        "jigsaw.crop_size=32", "train.progress=false", "monitor.knn=false", "optim.lr=0.2", "train.epochs=2"]


def test_time_cosine_warms_up_then_reaches_zero_at_the_budget():
    assert cosine_at(0.0) == pytest.approx(1.0) and cosine_at(0.5) == pytest.approx(0.5)
    assert cosine_at(1.0) == pytest.approx(0.0, abs=1e-12) and cosine_at(1.5) == pytest.approx(0.0, abs=1e-12)
    assert cosine_at(0.0, 0.1) == pytest.approx(0.01) and cosine_at(0.05, 0.1) == pytest.approx(0.5)
    assert cosine_at(0.55, 0.1) == pytest.approx(0.5)
    clock = TimeCosine(0.0)
    clock.progress = 0.5
    assert clock(12345) == pytest.approx(0.5)  # the step count plays no part


def test_epoch_s_ends_each_epoch_on_its_time_and_decays_the_lr_on_time(tmp_path):
    cfg = load_config(None, [*TINY, "train.epoch_s=0.05", f"output_dir={tmp_path}"])
    run_task("pretrain", cfg, LocalContext(tmp_path / "timed", progress=False))
    timed = read_metrics(tmp_path / "timed")
    assert [m["epoch"] for m in timed] == [0, 1]
    base = 0.2 * 32 / 256
    steps = [timed[0]["step"], timed[1]["step"] - timed[0]["step"]]
    assert all(1 <= s < 32 for s in steps), steps  # the epoch ended on its time, not at the end of its pass
    assert [m["epoch_images"] for m in timed] == [32 * s for s in steps]
    # the schedule runs on time: half-way through the budget after epoch 1, at 0 after epoch 2 (on steps,
    # a few of the 64 planned ones would leave it near the base lr)
    assert 0.3 * base < timed[0]["lr"] < 0.7 * base
    assert timed[1]["lr"] < 0.05 * base

    plain = load_config(None, [*TINY, "train.epochs=1", f"output_dir={tmp_path}"])
    run_task("pretrain", plain, LocalContext(tmp_path / "plain", progress=False))
    assert read_metrics(tmp_path / "plain")[0]["step"] == 32  # without it: one whole pass


def test_epoch_s_is_refused_where_it_would_do_nothing(tmp_path, capsys):
    with pytest.raises(ConfigError, match="epoch_s"):
        load_config(None, ["train.epoch_s=0"])
    code = main(["linear", "--no-progress", "--config", str(ROOT / "configs" / "linear.yaml"), "train.epoch_s=60",
                 f"output_dir={tmp_path}", "name=bad"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "train.epoch_s" in err and "\n" not in err and not (tmp_path / "bad").exists()


def test_monitor_scores_at_its_own_side(tmp_path):
    from jigclu.data.splits import training_splits
    from jigclu.evaluation.knn import held_out_monitor

    cfg = load_config(None, [*TINY, "jigsaw.crop_size=64", "monitor.image_size=32", "data.val_size=0.1",
                             "monitor.train_limit=100", "monitor.test_limit=50"])
    assert cfg.patch_size == 32 and cfg.monitor_size == 32
    assert held_out_monitor(cfg, *training_splits(cfg)).size == 32
    assert load_config(None, ["jigsaw.crop_size=64"]).monitor_size == 64  # unset: the montage side
    with pytest.raises(ConfigError, match="image_size"):
        load_config(None, ["monitor.image_size=4"])
