"""Pretraining on real images: it learns, it resumes exactly, and bad input fails cleanly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from jigclu.checkpoint import load_checkpoint, save_checkpoint
from jigclu.cli import main
from jigclu.config import load_config
from jigclu.errors import JigcluError
from jigclu.context import LocalContext
from jigclu.runs import RunLayout, read_metrics
from faults import CrashingContext, SimulatedCrash
from jigclu.trainers import run_task

TINY = ["data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=128",
        "model.width=8", "jigsaw.crop_size=32", "train.epochs=3", "train.progress=false",
        "monitor.knn=false", "optim.lr=0.2"]


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, TINY + [f"output_dir={tmp_path}", *extra])


@pytest.mark.slow  # about 2 minutes on 2 CPU cores
def test_pretraining_on_digits_learns(tmp_path):
    """~260 steps on real digits: the loss falls and location accuracy leaves chance (25%) far behind."""
    cfg = load_config(None, ["data.dataset=digits", "data.image_size=32", "data.batch_size=64",
                             "model.width=16", "jigsaw.crop_size=32", "jigsaw.cross_ratio=0.1",
                             "optim.lr=0.5", "train.epochs=12", "train.progress=false",
                             "monitor.knn=false", f"output_dir={tmp_path}"])
    summary = run_task("pretrain", cfg, LocalContext(tmp_path / "run", progress=False))
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == list(range(12))
    assert summary["last"]["epoch"] == 11
    first, last = metrics[0], metrics[-1]
    assert last["loss"] < first["loss"] - 0.3
    assert last["loss_loc"] < first["loss_loc"]
    assert last["loc_acc"] > 37.0, f"location accuracy {last['loc_acc']:.1f}% is near chance (25%)"
    assert last["images_per_s"] > 0


def test_knn_monitor_reports_each_epoch(tmp_path):
    cfg = tiny_cfg(tmp_path, "monitor.knn=true", "monitor.train_limit=200", "monitor.test_limit=100",
                   "train.epochs=2")
    summary = run_task("pretrain", cfg, LocalContext(tmp_path / "run", progress=False))
    metrics = read_metrics(tmp_path / "run")
    assert all(0 <= m["knn_top1"] <= 100 for m in metrics)
    # random-ish features of real digits are still far above chance (10%)
    assert summary["best_knn_top1"] > 30


def test_resume_after_crash_reaches_the_same_state(tmp_path):
    straight = tmp_path / "straight"
    run_task("pretrain", tiny_cfg(tmp_path), LocalContext(straight, progress=False))

    crashed = tmp_path / "crashed"
    with pytest.raises(SimulatedCrash):
        run_task("pretrain", tiny_cfg(tmp_path), CrashingContext(crashed, progress=False, stop_after_epoch=1))
    assert load_checkpoint(RunLayout(str(crashed)).latest_checkpoint())["epoch"] == 1
    summary = run_task("pretrain", tiny_cfg(tmp_path), LocalContext(crashed, resume=True, progress=False))
    assert summary["start_epoch"] == 2 and summary["epochs_run"] == 1

    a = load_checkpoint(RunLayout(str(straight)).latest_checkpoint())
    b = load_checkpoint(RunLayout(str(crashed)).latest_checkpoint())
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    assert [m["epoch"] for m in read_metrics(crashed)] == [0, 1, 2]
    la, lb = read_metrics(straight)[-1]["loss"], read_metrics(crashed)[-1]["loss"]
    assert la == pytest.approx(lb, rel=1e-4)


@pytest.mark.parametrize("m,crop", [(3, 36), (4, 32)])
def test_grid_3_and_4_learn(tmp_path, m, crop):
    """48 steps on fresh digits (~5 s): both losses fall and location accuracy leaves chance (1/m^2)."""
    cfg = tiny_cfg(tmp_path, f"model.grid={m}", f"jigsaw.crop_size={crop}", "data.limit=256", "train.epochs=6",
                   "optim.lr=0.5", "jigsaw.cross_ratio=0.1", f"name=g{m}")
    run_task("pretrain", cfg, LocalContext(tmp_path / f"g{m}", progress=False))
    metrics = read_metrics(tmp_path / f"g{m}")
    first, last = metrics[0], metrics[-1]
    chance = 100.0 / m ** 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics)
    assert last["loss"] < first["loss"] - 0.2, [r["loss"] for r in metrics]
    # cross-entropy of a uniform guess is ln(m^2): the location head must do clearly better
    assert last["loss_loc"] < math.log(m * m) - 0.2, [r["loss_loc"] for r in metrics]
    assert last["loc_acc"] > 1.5 * chance, f"grid {m}: location accuracy {last['loc_acc']:.1f}% (chance {chance:.1f}%)"


def test_bf16_autocast_pretrains_on_cpu(tmp_path):
    """train.amp=bf16 on CPU: the first step's loss is finite, near fp32's, and not fp32's own."""
    first = {}
    for amp in ("none", "bf16"):
        cfg = tiny_cfg(tmp_path, f"train.amp={amp}", "train.epochs=1", "train.steps_per_epoch=1", "device=cpu",
                       f"name={amp}")
        summary = run_task("pretrain", cfg, LocalContext(tmp_path / amp, progress=False))
        first[amp] = summary["last"]["loss"]  # one step: the epoch's loss is the first step's
    assert math.isfinite(first["bf16"])
    assert first["bf16"] == pytest.approx(first["none"], rel=0.05)
    assert first["bf16"] != first["none"], "bf16 gave fp32's loss to the last bit: autocast did not run"


def test_atomic_checkpoint_keeps_previous_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, file):
        Path(file).write_bytes(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(JigcluError, match="No space left"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------------------- bad input, via the CLI

def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["pretrain", "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("args,needle", [
    (["optim.lrr=1"], "unknown key 'optim.lrr'"),
    (["model.grid=1"], "model.grid"),
    (["model.grid=3", "jigsaw.crop_size=32"], "cannot be split"),
    (["data.dataset=fashion_mnist:/nonexistent/fmnist"], "/nonexistent/fmnist"),
    (["data.dataset=nosuchkind:/x"], "nosuchkind"),
    (["--config", "/nonexistent/cfg.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, args, needle):
    code, err = run_cli(capsys, *TINY, f"output_dir={tmp_path}", "name=bad", *args)
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_corrupt_image_fails_or_is_skipped(tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "imgs"
    for i in range(80):
        d = root / "train" / str(digits.target[i])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 15).astype("uint8")).save(d / f"{i}.png")
    (root / "train" / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    base = TINY + [f"output_dir={tmp_path}", f"data.dataset=folder:{root}", "data.limit=null",
                   "train.epochs=1"]
    code, err = run_cli(capsys, *base, "name=strict", "data.on_corrupt=fail")
    assert code == 2 and "broken.png" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "strict").exists()
    code, err = run_cli(capsys, *base, "name=lenient", "data.on_corrupt=skip")
    assert code == 0
    assert RunLayout(str(tmp_path / "lenient")).has_checkpoint()


def test_nan_loss_stops_without_a_checkpoint(tmp_path, capsys):
    # a temperature this small overflows the similarity logits: the loss is NaN at once
    code, err = run_cli(capsys, *TINY, f"output_dir={tmp_path}", "name=nan", "loss.temperature=1e-40")
    assert code == 2 and "loss became nan" in err.lower() and len(err.splitlines()) == 1
    assert not (tmp_path / "nan").exists()


def test_nan_after_checkpointed_epochs_keeps_them_and_resumes(tmp_path, capsys, monkeypatch):
    """The loss turns NaN at epoch 2 of a run that checkpointed epochs 0 and 1: one error line,
    both checkpoints kept and loadable, and --resume continues from epoch 2."""
    from jigclu.trainers.pretrain import PretrainTask

    healthy = PretrainTask.step

    def nan_from_epoch_2(self, batch, epoch, step):
        loss, stats, images = healthy(self, batch, epoch, step)
        return (loss * float("nan") if epoch >= 2 else loss), stats, images

    args = [*TINY, f"output_dir={tmp_path}", "name=late", "train.epochs=4", "train.steps_per_epoch=2"]
    with monkeypatch.context() as patch:
        patch.setattr(PretrainTask, "step", nan_from_epoch_2)
        code, err = run_cli(capsys, *args)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "loss became nan at epoch 2 step 0" in err.lower()
    run = tmp_path / "late"
    assert [m["epoch"] for m in read_metrics(run)] == [0, 1]
    layout = RunLayout(str(run))
    assert [e for e, _f in layout.checkpoints()] == [1, 0]
    for epoch, file in layout.checkpoints():
        state = load_checkpoint(file)
        assert state["epoch"] == epoch and state["global_step"] == 2 * (epoch + 1)

    code, err = run_cli(capsys, *args, "--resume")
    assert code == 0, err
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]  # picked up at the last good checkpoint + 1
    assert [m["step"] for m in metrics] == [2, 4, 6, 8]
    assert load_checkpoint(layout.latest_checkpoint())["epoch"] == 3


def test_existing_run_needs_resume(tmp_path, capsys):
    code, _ = run_cli(capsys, *TINY, f"output_dir={tmp_path}", "name=r", "train.epochs=1")
    assert code == 0
    code, err = run_cli(capsys, *TINY, f"output_dir={tmp_path}", "name=r", "train.epochs=1")
    assert code == 2 and "--resume" in err
    code, err = run_cli(capsys, *TINY, f"output_dir={tmp_path}", "name=r", "train.epochs=2", "--resume")
    assert code == 0
    assert [m["epoch"] for m in read_metrics(tmp_path / "r")] == [0, 1]
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "epochs: 2" in saved
