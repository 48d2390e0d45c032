"""The knobs the recipe search (tune/configs/recipe_fashion.yaml) needs: a fixed wall-clock budget per
epoch (train.epoch_s, the lr schedule on training time) and the monitor's own image side
(monitor.image_size, to score 64 px montages of 32 px patches at 32 px)."""

from __future__ import annotations

import time
import types
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



def test_a_timed_epoch_resumed_mid_way_trains_only_the_rest_of_its_seconds(tmp_path, monkeypatch):
    """Stopped after step 3 of a timed epoch and resumed: the resumed epoch's clock (what ends it, and
    what the lr schedule runs on) goes on from the seconds trained before the stop. The loop's clock is a
    fake one that each step moves by 1/8 s, so a 1 s epoch is exactly 8 steps on any machine. Without
    the mid-epoch checkpoint's ``epoch_seconds``, the resumed epoch would start at 0 s and train 8
    steps more instead of the 5 left."""
    from jigclu import preempt
    from jigclu.trainers import loop, task_class

    now = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: now[0], time=time.time,
                                                                monotonic=time.monotonic))

    def task(stop_at=None):
        class Timed(task_class("pretrain")):  # type: ignore[misc,valid-type]
            seen: list[tuple[int, int, float]] = []

            def step(self, batch, epoch, step):
                self.at = (epoch, step)
                if self.at == stop_at:
                    preempt.request_stop()
                now[0] += 0.125
                return super().step(batch, epoch, step)

            def after_step(self, elapsed):
                self.seen.append((*self.at, elapsed))
                super().after_step(elapsed)

        return Timed()

    cfg = load_config(None, [*TINY, "train.epoch_s=1.0", f"output_dir={tmp_path}"])
    stopped = task((1, 2))
    with preempt.stop_on_sigterm(), pytest.raises(preempt.Preempted):
        loop.run(stopped, cfg, LocalContext(tmp_path / "run", progress=False))
    assert [e for e in stopped.seen if e[0] == 0] == [(0, s, 0.125 * (s + 1)) for s in range(8)]
    assert [e for e in stopped.seen if e[0] == 1] == [(1, 0, 0.125), (1, 1, 0.25), (1, 2, 0.375)]
    resumed = task()
    loop.run(resumed, cfg, LocalContext(tmp_path / "run", resume=True, progress=False))
    assert resumed.seen == [(1, s, 0.125 * (s + 1)) for s in range(3, 8)]  # the rest of the epoch's second
    timed = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in timed] == [0, 1] and timed[1]["resumed_at_step"] == 3
    assert [m["step"] for m in timed] == [8, 16]
    assert timed[1]["lr"] < 1e-6  # the schedule ended at the budget's end, as it would have uninterrupted

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


def test_downstream_evaluates_at_the_side_the_features_were_scored_at(tmp_path):
    from jigclu.checkpoint import save_checkpoint
    from jigclu.models import ResNetBackbone
    from jigclu.pretrained import adopt_pretrained

    pre = load_config(None, [*TINY, "jigsaw.crop_size=64", "monitor.image_size=32"])
    state = {"model": {f"backbone.{k}": v for k, v in ResNetBackbone("resnet18_small", 8).state_dict().items()},
             "config": pre.model_dump(mode="json"), "task": "pretrain"}
    save_checkpoint(state, tmp_path / "pre.pt")
    # configs/linear.yaml sets eval.image_size (224) itself; a sweep's act lines override it (tune/report/act.py)
    linear = load_config(None, [f"eval.pretrained={tmp_path / 'pre.pt'}"])
    adopted, notes = adopt_pretrained(linear)
    assert adopted.jigsaw.crop_size == 64 and adopted.eval.image_size == 32 and "eval.image_size=32" in notes[0]
    mine = load_config(None, [f"eval.pretrained={tmp_path / 'pre.pt'}", "eval.image_size=48"])
    assert adopt_pretrained(mine)[0].eval.image_size == 48  # the user's own side stays
    pre32 = pre.model_copy(update={"monitor": pre.monitor.model_copy(update={"image_size": None})})
    save_checkpoint({**state, "config": pre32.model_dump(mode="json")}, tmp_path / "plain.pt")
    plain = load_config(None, [f"eval.pretrained={tmp_path / 'plain.pt'}"])
    assert adopt_pretrained(plain)[0].eval.image_size is None  # unset: the montage side, as before


# ------------------------------------------------------------------ the recipe sweeps

def _sweeps():
    from tune.space import load_sweep

    return [load_sweep(ROOT / "tune" / "configs" / f"{name}.yaml") for name in ("recipe_fashion", "recipe_simclr_fashion")]


def test_recipe_sweeps_search_the_two_methods_the_same_way():
    jig, sim = _sweeps()
    assert jig.base["train"]["epoch_s"] == sim.base["train"]["epoch_s"] == 60  # a fixed wall-clock per trial
    assert jig.base["monitor"]["image_size"] == sim.base["monitor"]["image_size"] == 32
    assert sim.base["method"] == "simclr" and jig.base.get("method", "jigclu") == "jigclu"
    for key in ("objective", "rung_metric", "val_size", "time_budget_s", "max_concurrent", "scheduler", "repeats",
                "resources", "seed"):
        assert getattr(jig.spec, key) == getattr(sim.spec, key), key
    keys = {p.key for p in jig.params}
    # SimCLR searches every knob it reads that JigClu searches; the rest are JigClu's own
    assert keys - {p.key for p in sim.params} == {"loss.w_loc", "jigsaw.cross_ratio"}
    assert {"jigsaw.crop_size", "model.width", "model.proj_dim", "optim.lr", "loss.temperature"} <= keys


def test_a_recipe_sweep_refuses_a_knob_its_method_does_not_read(tmp_path):
    from tune.space import load_sweep

    text = (ROOT / "tune" / "configs" / "recipe_simclr_fashion.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  jigsaw.crop_scale: uniform 0.2 0.9", "  jigsaw.cross_ratio: uniform 0.0 0.35")
                   .replace("base: ../../configs/", f"base: {ROOT}/configs/"))
    with pytest.raises(ConfigError, match="cross_ratio"):
        load_sweep(bad)


def test_the_reports_downstream_commands_evaluate_at_the_monitors_side():
    from tune.report.act import _data_overrides

    trained = {"data": {"dataset": "fashion_mnist", "image_size": 32}, "jigsaw": {"crop_size": 64},
               "monitor": {"image_size": 32}}
    linear = ROOT / "configs" / "linear.yaml"  # eval.image_size 224: far above the 32 px images
    assert "eval.image_size=32" in _data_overrides(trained, linear, evaluates=True)
    trained["monitor"]["image_size"] = None  # no monitor side: the montage side, as before
    assert "eval.image_size=64" in _data_overrides(trained, linear, evaluates=True)
