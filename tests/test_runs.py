"""The run layout over any storage: atomic writes, the newest N checkpoints, corrupt-newest fallback,
and --dry-run for every command that starts work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jigclu import storage
from jigclu.cli import main
from jigclu.errors import JigcluError
from jigclu.runs import RunLayout, find_checkpoint

TINY = ["data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=128", "model.width=8",
        "jigsaw.crop_size=32", "train.progress=false", "monitor.knn=false", "train.steps_per_epoch=2"]


@pytest.mark.parametrize("as_uri", [False, True])
def test_layout_keeps_the_newest_checkpoints(tmp_path, as_uri):
    root = f"file://{tmp_path}/run" if as_uri else str(tmp_path / "run")
    layout = RunLayout(root)
    for epoch in range(4):
        layout.save_checkpoint({"epoch": epoch, "w": torch.full((2,), float(epoch))}, keep=2)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["epoch_00002.pt", "epoch_00003.pt"]  # no temp files, only the newest two
    assert layout.load_latest()["epoch"] == 3
    assert find_checkpoint(root).endswith("epoch_00003.pt")


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    layout = RunLayout(str(tmp_path / "run"))
    for epoch in range(3):
        layout.save_checkpoint({"epoch": epoch}, keep=3)
    newest = tmp_path / "run" / "checkpoints" / "epoch_00002.pt"
    newest.write_bytes(newest.read_bytes()[:20])  # truncated, as a full disk leaves it
    assert layout.load_latest()["epoch"] == 1
    err = capsys.readouterr().err
    assert "warning" in err and "epoch_00002.pt" in err and "epoch_00001.pt" in err
    for name in ("epoch_00000.pt", "epoch_00001.pt"):
        (tmp_path / "run" / "checkpoints" / name).write_bytes(b"garbage")
    with pytest.raises(JigcluError, match="every checkpoint"):
        layout.load_latest()


def test_resume_uses_the_previous_checkpoint_when_the_newest_is_corrupt(tmp_path, capsys):
    args = ["pretrain", "--no-progress", *TINY, f"output_dir={tmp_path}", "name=r"]
    assert main([*args, "train.epochs=2"]) == 0
    newest = tmp_path / "r" / "checkpoints" / "epoch_00001.pt"
    newest.write_bytes(b"")
    assert main([*args, "train.epochs=3", "--resume"]) == 0
    epochs = [m["epoch"] for m in RunLayout(str(tmp_path / "r")).read_metrics()]
    assert epochs == [0, 1, 1, 2]  # epoch 1 redone from epoch 0's checkpoint, nothing else lost
    assert "resuming from the previous checkpoint" in capsys.readouterr().err


def test_atomic_write_and_append_through_file_uris(tmp_path):
    uri = f"file://{tmp_path}/a/b.txt"
    storage.write_atomic(uri, "one\n")
    storage.append_line(uri, "two")
    assert storage.read_text(uri) == "one\ntwo\n"
    assert storage.list_dir(f"file://{tmp_path}/a") == ["b.txt"]
    with pytest.raises(JigcluError, match="unknown|Unrecognized"):
        storage.resolve("nosuch://bucket/x")


# ------------------------------------------------------------------------------------------ --dry-run


def test_dry_run_prints_the_resolved_config_and_starts_nothing(tmp_path, capsys):
    code = main(["pretrain", "--config", "configs/demo.yaml", "--dry-run", f"output_dir={tmp_path}",
                 "name=dry", "model.grid=4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "grid: 4" in out and "name: dry" in out and "dry run" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["pretrain", "linear", "semi", "finetune"])
@pytest.mark.parametrize("bad,needle", [
    ("optim.lrr=1", "unknown key 'optim.lrr'"),
    ("storage=nosuch://bucket/x", "unknown scheme"),
    ("data.dataset=nosuch:/x", "unknown dataset kind"),
])
def test_dry_run_rejects_bad_input_in_one_line(tmp_path, capsys, command, bad, needle):
    code = main([command, "--dry-run", f"output_dir={tmp_path}", bad])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_tune_dry_run_validates_the_sweep(tmp_path, capsys):
    config = Path(__file__).parents[1] / "tune" / "configs" / "pretrain_digits.yaml"
    assert main(["tune", "--config", str(config), "--dry-run", f"output_dir={tmp_path}"]) == 0
    assert "space:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert main(["tune", "--config", str(config), "--dry-run", "space.nosuch=uniform 0 1"]) == 2
    assert "space: unknown key 'nosuch'" in capsys.readouterr().err
