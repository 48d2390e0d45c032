"""Downstream trainers on real data (scikit-learn digits): linear, semi, finetune, kNN, export."""

from __future__ import annotations

import json
import math
from functools import partial
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision

import jigclu.cli as cli
from jigclu.checkpoint import save_checkpoint
from jigclu.config import load_config
from jigclu.context import LocalContext
from jigclu.runs import find_checkpoint, read_metrics
from faults import CrashingContext, SimulatedCrash
from jigclu.data import load_dataset
from jigclu.models import ResNetBackbone
from jigclu.trainers.classify_augment import PadCropFlip
from jigclu.trainers.protocols import resolve_eval
from jigclu.evaluation.knn import knn_predict, topk_accuracy
from jigclu.trainers.loop import run
from jigclu.launch import prepare
from jigclu.trainers import run_task
from jigclu.trainers.semi import SUBSET_FILE, SemiTask, read_label_file

DATA = ["data.dataset=digits", "data.image_size=32", "model.width=8", "jigsaw.crop_size=32",
        "train.progress=false"]
# a short downstream run: 2 epochs of 4 steps, scored on 120 test images
SHORT = DATA + ["eval.epochs=2", "eval.batch_size=32", "train.steps_per_epoch=4", "eval.val_limit=120"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A real (short) JigClu pretraining run on digits: BN statistics far from their init."""
    out = tmp_path_factory.mktemp("pre")
    cfg = load_config(None, DATA + ["data.batch_size=32", "data.limit=128", "train.epochs=1",
                                    "monitor.knn=false", "optim.lr=0.2", f"output_dir={out}"])
    run_task("pretrain", cfg, LocalContext(out / "run", progress=False))
    return out / "run"


def train(task: str, cfg, ctx) -> dict:
    """A downstream run as every product path starts one: its config prepared (resolved) first."""
    return run_task(task, prepare(task, cfg), ctx)


def cfg_for(tmp_path: Path, *extra: str):
    return load_config(None, SHORT + [f"output_dir={tmp_path}", *extra])


def load_checkpoint(path: Path) -> dict:
    """The checkpoint of a run directory (or a file)."""
    return torch.load(find_checkpoint(str(path)), weights_only=True)


def backbone_of(state: dict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}


# ------------------------------------------------------------------------------------------- linear

def test_linear_keeps_backbone_and_batchnorm_frozen(tmp_path, pretrained):
    cfg = cfg_for(tmp_path, f"eval.pretrained={pretrained}", "eval.lr=1.0")
    summary = train("linear", cfg, LocalContext(tmp_path / "lin", progress=False))
    before = backbone_of(load_checkpoint(pretrained))
    after_state = load_checkpoint(tmp_path / "lin")
    after = backbone_of(after_state)
    assert before.keys() == after.keys()
    bn_buffers = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(bn_buffers) > 20 and any(before[k].abs().sum() > 0 for k in bn_buffers if "mean" in k)
    for key in before:
        assert torch.equal(before[key], after[key]), f"{key} changed during linear evaluation"
    assert after_state["model"]["classifier.weight"].std() > 0.011  # the head did train
    metrics = read_metrics(tmp_path / "lin")
    assert [m["epoch"] for m in metrics] == [0, 1]
    for key in ("train_loss", "train_top1", "val_top1", "val_top5", "best_val_top1", "lr", "images_per_s"):
        assert key in metrics[-1]
    assert summary["best_val_top1"] == max(m["val_top1"] for m in metrics)
    # the resolved recipe is what the checkpoint says ran
    assert after_state["config"]["eval"]["milestones"] == [1] and after_state["config"]["eval"]["gamma"] == 0.1


def test_linear_resumes_after_crash(tmp_path, pretrained):
    args = (f"eval.pretrained={pretrained}", "eval.epochs=3", "eval.lr=1.0")
    train("linear", cfg_for(tmp_path, *args), LocalContext(tmp_path / "straight", progress=False))
    with pytest.raises(SimulatedCrash):
        train("linear", cfg_for(tmp_path, *args), CrashingContext(tmp_path / "crashed", progress=False, stop_after_epoch=0))
    summary = train("linear", cfg_for(tmp_path, *args), LocalContext(tmp_path / "crashed", resume=True, progress=False))
    assert summary["start_epoch"] == 1 and summary["epochs_run"] == 2
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "crashed")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    assert [m["epoch"] for m in read_metrics(tmp_path / "crashed")] == [0, 1, 2]
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


# --------------------------------------------------------------------------------------------- semi

class MeasuredSemi(SemiTask):
    """Semi on the real loop, measuring the learning rate each step actually applied to the
    backbone's and the classifier's parameters (picked by module, not by optimizer group)."""

    applied: list[tuple[int, float, float]]

    def step(self, batch, epoch, step):
        self.at = epoch
        self.before = {p: p.detach().clone() for p in self.model.parameters()}
        return super().step(batch, epoch, step)

    def after_step(self, elapsed: float) -> None:
        super().after_step(elapsed)
        # SGD without nesterov moves each parameter by lr * momentum_buffer (weight decay and
        # momentum are inside the buffer): the applied lr is the delta over the buffer
        lrs = [self.applied_lr(module) for module in (self.model.backbone, self.model.classifier)]
        self.applied = getattr(self, "applied", []) + [(self.at, *lrs)]

    def applied_lr(self, module: torch.nn.Module) -> float:
        deltas, bufs = [], []
        for p in module.parameters():
            buf = self.optimizer.state[p]["momentum_buffer"]
            deltas.append((self.before[p] - p.detach()).double().flatten())
            bufs.append(buf.double().flatten())
        delta, buf = torch.cat(deltas), torch.cat(bufs)
        lr = float(delta @ buf / (buf @ buf))
        torch.testing.assert_close(delta, lr * buf, rtol=0, atol=1e-6 * max(lr, 1.0))  # one lr for every parameter
        return lr


def test_semi_keeps_two_learning_rates_every_epoch(tmp_path, pretrained):
    cfg = cfg_for(tmp_path, f"eval.pretrained={pretrained}", "eval.epochs=4", "eval.milestones=[1,3]",
                  "eval.lr=0.01", "eval.classifier_lr=0.2", "eval.labels=20%", "train.steps_per_epoch=2")
    task = MeasuredSemi()
    run(task, prepare("semi", cfg), LocalContext(tmp_path / "semi", progress=False))
    scale = [1.0, 0.1, 0.1, 0.01]
    assert [e for e, _b, _c in task.applied] == [0, 0, 1, 1, 2, 2, 3, 3]
    # the update each parameter really got: backbone at eval.lr, classifier at eval.classifier_lr
    assert [b for _e, b, _c in task.applied] == pytest.approx([0.01 * s for s in scale for _ in "xx"], rel=1e-3)
    assert [c for _e, _b, c in task.applied] == pytest.approx([0.2 * s for s in scale for _ in "xx"], rel=1e-3)
    metrics = read_metrics(tmp_path / "semi")
    assert [m["lr_backbone"] for m in metrics] == pytest.approx([0.01 * s for s in scale])
    assert [m["lr_classifier"] for m in metrics] == pytest.approx([0.2 * s for s in scale])
    state = load_checkpoint(tmp_path / "semi")
    # the whole network trained (BN statistics included)
    before, after = backbone_of(load_checkpoint(pretrained)), backbone_of(state)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])


def test_semi_paper_rates_per_fraction():
    one = resolve_eval(load_config(None, ["eval.labels=1%"]), "semi").eval
    ten = resolve_eval(load_config(None, ["eval.labels=10%"]), "semi").eval
    assert (one.lr, one.classifier_lr, one.milestones, one.gamma) == (0.02, 5.0, [30, 60, 90], 0.1)
    assert (ten.lr, ten.classifier_lr, ten.weight_decay, ten.batch_size) == (0.01, 0.2, 0.0, 256)
    lin = resolve_eval(load_config(None, []), "linear").eval
    assert (lin.lr, lin.milestones, lin.epochs, lin.weight_decay) == (30.0, [60, 80], 100, 0.0)


def _subset(tmp_path: Path, name: str, seed: int) -> list[int]:
    cfg = cfg_for(tmp_path, "eval.labels=10%", f"eval.label_seed={seed}", "eval.epochs=1",
                  "train.steps_per_epoch=1", f"name={name}")
    train("semi", cfg, LocalContext(tmp_path / name, progress=False))
    lines = (tmp_path / name / SUBSET_FILE).read_text().splitlines()
    return [int(x) for x in lines if x and not x.startswith("#")]


def test_semi_label_subset_is_balanced_saved_and_seeded(tmp_path):
    a, again, other = _subset(tmp_path, "a", 0), _subset(tmp_path, "b", 0), _subset(tmp_path, "c", 1)
    assert a == again and a != other
    train = load_dataset("digits", "train", image_size=32)
    per_class = Counter(train.labels[a].tolist())
    sizes = Counter(train.labels.tolist())
    assert set(per_class) == set(range(10))
    for cls, n in per_class.items():
        assert n == round(0.1 * sizes[cls])
    # the saved file is itself a valid labels file
    assert read_label_file(str(tmp_path / "a" / SUBSET_FILE), train).tolist() == a


@pytest.mark.parametrize("task", ["linear", "semi"])
def test_bf16_autocast_downstream_epoch_on_cpu(tmp_path, pretrained, task):
    """train.amp=bf16 on CPU: a finite first-step loss near fp32's (and not fp32's own), finite val scores."""
    runner = partial(train, task)
    first = {}
    for amp in ("none", "bf16"):
        cfg = cfg_for(tmp_path, f"eval.pretrained={pretrained}", "eval.epochs=1", "train.steps_per_epoch=1",
                      "eval.labels=20%", f"train.amp={amp}", "device=cpu", f"name={task}-{amp}")
        runner(cfg, LocalContext(tmp_path / f"{task}-{amp}", progress=False))
        metrics = read_metrics(tmp_path / f"{task}-{amp}")
        assert [m["epoch"] for m in metrics] == [0]
        first[amp] = metrics[0]["train_loss"]  # one step: the epoch's loss is the first step's
        assert all(math.isfinite(metrics[0][k]) for k in ("train_loss", "val_loss", "val_top1"))
    assert first["bf16"] == pytest.approx(first["none"], rel=0.05)
    assert first["bf16"] != first["none"], "bf16 gave fp32's loss to the last bit: autocast did not run"


# ----------------------------------------------------------------------------------------- finetune

def test_pad_crop_flip_cuts_windows_of_the_padded_image():
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    out = PadCropFlip(12, padding=4)(images, torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    padded = torch.nn.functional.pad(images.float() / 255, (4, 4, 4, 4))
    offsets, flips = set(), 0
    for i in range(16):
        pixels = out[i] * std + mean
        windows = []
        for oy in range(9):
            for ox in range(9):
                window = padded[i, :, oy:oy + 12, ox:ox + 12]
                for flipped in (False, True):
                    if torch.allclose(pixels, window.flip(-1) if flipped else window, atol=1e-5):
                        windows.append((oy, ox, flipped))
        assert windows, f"image {i} is no (flipped) window of its padded image"
        offsets.add(windows[0][:2])
        flips += windows[0][2]
    assert len(offsets) > 4 and 0 < flips < 16  # random offsets, some flipped


def test_finetune_protocols(tmp_path):
    train("finetune", cfg_for(tmp_path, "eval.protocol=linear"), LocalContext(tmp_path / "lin", progress=False))
    state = load_checkpoint(tmp_path / "lin")
    ev = state["config"]["eval"]
    assert (ev["lr"], ev["gamma"], ev["weight_decay"], ev["image_size"]) == (10.0, 0.2, 0.0, 32)
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["classifier"]

    train("finetune", cfg_for(tmp_path, "eval.epochs=2", "train.steps_per_epoch=null", "eval.batch_size=64"),
                 LocalContext(tmp_path / "ft", progress=False))
    ev = load_checkpoint(tmp_path / "ft")["config"]["eval"]
    assert (ev["protocol"], ev["lr"], ev["weight_decay"]) == ("finetune", 0.1, 5e-4)
    assert read_metrics(tmp_path / "ft")[-1]["val_top1"] > 25.0  # chance: 10%


# -------------------------------------------------------------------------------------- kNN, export

def test_knn_on_separable_digits_beats_chance():
    digits = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    keep, keep_t = digits.labels < 2, test.labels < 2  # zeros vs ones: trivially separable
    feats = torch.nn.functional.normalize(digits.images[keep].flatten(1).float(), dim=1)
    queries = torch.nn.functional.normalize(test.images[keep_t].flatten(1).float(), dim=1)
    acc = topk_accuracy(knn_predict(feats, digits.labels[keep], queries, 2, k=5), test.labels[keep_t], (1,))
    assert acc[1] > 95.0


def test_knn_command(capsys, pretrained):
    code = cli.main(["knn", "--checkpoint", str(pretrained), "--json", *DATA, "monitor.k=10"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["queries"] == 360
    assert result["knn_top1"] > 50.0 and result["knn_top5"] >= result["knn_top1"]  # chance: 10%


def test_export_round_trip_matches_torchvision(tmp_path, capsys):
    torch.manual_seed(0)
    ours = ResNetBackbone("resnet18", 64)
    for m in ours.modules():  # non-trivial BN statistics, so eval mode really uses them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint({"task": "pretrain", "model": {f"backbone.{k}": v for k, v in ours.state_dict().items()}},
                    tmp_path / "ckpt.pt")
    assert cli.main(["export", str(tmp_path / "ckpt.pt"), str(tmp_path / "tv.pt")]) == 0
    assert "only fc.* missing" in capsys.readouterr().out
    sd = torch.load(tmp_path / "tv.pt", weights_only=True)
    tv = torchvision.models.resnet18()
    result = tv.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), ours.eval()(x), rtol=1e-5, atol=1e-5)


def test_export_of_small_backbone_says_it_differs(tmp_path, capsys, pretrained):
    assert cli.main(["export", str(pretrained), str(tmp_path / "small.pt")]) == 0
    out = capsys.readouterr().out
    assert "3x3 stride-1" in out and "ResNetBackbone('resnet18_small', 8)" in out
    assert torch.load(tmp_path / "small.pt", weights_only=True).keys() == \
        ResNetBackbone("resnet18_small", 8).state_dict().keys()


# ----------------------------------------------------------------------------- bad input, via the CLI

def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err.strip()


def _assert_one_line_and_nothing_written(code: int, err: str, run_dir: Path, needle: str) -> None:
    assert code == 2, err
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize("labels", ["150%", "0", "1.5"])
def test_label_fraction_out_of_range(tmp_path, capsys, labels):
    code, err = run_cli(capsys, "semi", "--no-progress", "--labels", labels, *SHORT, f"output_dir={tmp_path}", "name=bad")
    _assert_one_line_and_nothing_written(code, err, tmp_path / "bad", "(0, 1]")


@pytest.mark.parametrize("content,needle", [("3\n17\n99999\n", "'99999'"), ("3\nnot_an_image.png\n", "not_an_image")])
def test_label_file_naming_unknown_images(tmp_path, capsys, content, needle):
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    code, err = run_cli(capsys, "semi", "--no-progress", "--labels", str(labels), *SHORT,
                        f"output_dir={tmp_path}", "name=bad")
    _assert_one_line_and_nothing_written(code, err, tmp_path / "bad", needle)
    assert "unknown image" in err


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    other = ResNetBackbone("resnet50_small", 8)
    save_checkpoint({"task": "pretrain", "model": {f"backbone.{k}": v for k, v in other.state_dict().items()}},
                    tmp_path / "r50.pt")
    for task in ("linear", "semi", "finetune"):
        short = [a for a in SHORT if task != "finetune" or not a.startswith("jigsaw.")]  # finetune: eval.image_size
        code, err = run_cli(capsys, task, "--no-progress", *short, "model.arch=resnet18_small",
                            f"eval.pretrained={tmp_path / 'r50.pt'}", f"output_dir={tmp_path}", "name=bad")
        _assert_one_line_and_nothing_written(code, err, tmp_path / "bad", "does not fit model.arch=resnet18_small")
        assert "model.arch=resnet50_small model.width=8" in err and "layer1.0.conv1.weight [8, 8, 1, 1]" in err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, "linear", "--no-progress", *SHORT, f"eval.pretrained={tmp_path / 'nope'}",
                        f"output_dir={tmp_path}", "name=bad")
    _assert_one_line_and_nothing_written(code, err, tmp_path / "bad", "checkpoint not found")


def test_cli_adopts_the_checkpoint_model_when_unset(tmp_path, capsys, pretrained):
    args = [a for a in SHORT if not a.startswith("model.width")]  # width left to the checkpoint
    code = cli.main(["linear", "--no-progress", *args, "eval.epochs=1", f"eval.pretrained={pretrained}",
                     f"output_dir={tmp_path}", "name=ok"])
    out = capsys.readouterr().out
    assert code == 0 and "model.width=8" in out
    saved = load_checkpoint(tmp_path / "ok")["config"]
    assert saved["model"]["width"] == 8 and saved["eval"]["lr"] == 30.0


def test_help_of_every_downstream_command(capsys):
    for args in (["--help"], *([c, "--help"] for c in ("linear", "semi", "finetune", "knn", "export"))):
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("linear", "semi", "finetune", "knn", "export", "--labels", "--protocol", "--checkpoint"):
        assert command in out


def test_jigclu_help_lists_every_downstream_command():
    """The real parser (no test patches its command registration) and the real entry point."""
    import argparse
    import re
    import subprocess
    import sys

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"linear", "semi", "finetune", "knn", "export"} <= set(commands)
    out = subprocess.run([sys.executable, "-m", "jigclu.cli", "--help"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    for command in ("pretrain", "linear", "semi", "finetune", "knn", "export", "tune"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), f"{command} missing from jigclu --help:\n{out}"
