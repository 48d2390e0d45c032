"""The small-image recipe and what the quality benchmark relies on: the recipe pretrains, its patch
augmentation knobs reach the augmentation, the demo sweep starts from it, the SimCLR baseline's
loss is NT-Xent, and ``jigclu export`` of its checkpoint loads into a plain torchvision ResNet that
gives the very same features and probe."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jigclu.config import load_config
from jigclu.errors import ConfigError
from jigclu.losses import nt_xent

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "fashion_mnist.yaml")


# ------------------------------------------------------------------ the recipe's knobs

def test_recipe_crop_scale_and_blur_reach_the_patch_augmentation():
    from jigclu.methods import build_augment

    cfg = load_config(RECIPE, [])
    aug = build_augment(cfg)
    assert aug.out_size == 16 and aug.recipe.scale == (0.565, 1.0) and aug.recipe.blur_p == 0.0
    paper = build_augment(load_config(None, []))
    assert paper.recipe.scale == (0.2, 1.0) and paper.recipe.blur_p == 0.5  # the paper's defaults stay
    assert build_augment(cfg, 32).out_size == 32  # SimCLR's whole-image views


@pytest.mark.parametrize("override", ["jigsaw.crop_scale=0", "jigsaw.crop_scale=1.5", "jigsaw.blur_p=-0.1"])
def test_bad_augmentation_knobs_are_one_line(override, tmp_path, capsys):
    from jigclu.cli import main

    code = main(["pretrain", "--no-progress", "--config", RECIPE, "data.dataset=digits", override,
                 f"output_dir={tmp_path}", "name=bad"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and override.split("=")[0] in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError):
        load_config(RECIPE, [override])


def test_demo_sweep_starts_from_the_recipe():
    from tune.space import load_sweep

    from jigclu.config import RunConfig, build_config

    recipe = load_config(RECIPE, []).model_dump(mode="json")
    base = build_config(RunConfig, load_sweep(ROOT / "tune" / "configs" / "pretrain_fashion.yaml").base).model_dump(mode="json")
    for section in ("model", "jigsaw", "loss"):
        assert base[section] == recipe[section], section
    assert base["data"]["limit"] == 3840 and base["data"]["image_size"] == recipe["data"]["image_size"]


# ------------------------------------------------------------------ the SimCLR baseline's loss

def test_nt_xent_rewards_matching_views_and_refuses_odd_batches():
    gen = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(16, 32, generator=gen), dim=1)
    matched = torch.cat([z, z])  # each view's partner is itself: the easiest case
    shuffled = torch.cat([z, z[torch.randperm(16, generator=gen)]])
    assert nt_xent(matched, 0.1) < 0.05
    assert nt_xent(shuffled, 0.1) > 1.0
    # uniform similarities: the loss is log(2N - 1)
    assert nt_xent(torch.zeros(8, 4) + 0.5, 0.5) == pytest.approx(math.log(7), rel=1e-5)
    # symmetric in the two halves
    assert nt_xent(shuffled, 0.2) == pytest.approx(float(nt_xent(torch.cat([shuffled[16:], shuffled[:16]]), 0.2)))
    with pytest.raises(ValueError, match=r"\[2N, D\]"):
        nt_xent(torch.zeros(5, 4))


# ------------------------------------------------------------------ export -> torchvision -> the same probe

@pytest.mark.slow
def test_recipe_checkpoint_exports_into_torchvision_with_the_same_probe(tmp_path, capsys):
    from torchvision.models import ResNet

    from jigclu.cli import main
    from jigclu.data import load_dataset
    from jigclu.pretrained import load_backbone_weights
    from jigclu.models import ResNetBackbone, torchvision_resnet
    from jigclu.evaluation.knn import KnnMonitor

    code = main(["pretrain", "--no-progress", "--config", RECIPE, "data.dataset=digits", "data.limit=512",
                 "data.batch_size=64", "train.epochs=1", "monitor.train_limit=400", "monitor.test_limit=200",
                 f"output_dir={tmp_path}", "name=recipe"])
    assert code == 0, capsys.readouterr().err
    exported = tmp_path / "backbone.pt"
    assert main(["export", str(tmp_path / "recipe"), str(exported)]) == 0

    net = torchvision_resnet("resnet18_small", 16)
    assert type(net) is ResNet  # torchvision's own class, not a jigclu subclass
    keys = net.load_state_dict(torch.load(exported, weights_only=True), strict=False)
    assert sorted(keys.missing_keys) == ["fc.bias", "fc.weight"] and not keys.unexpected_keys
    net.fc = torch.nn.Identity()
    ours = ResNetBackbone("resnet18_small", 16)
    ours.load_state_dict(load_backbone_weights(tmp_path / "recipe").state)
    # trained weights, not the initialisation: the export carries what pretraining changed
    assert not torch.equal(ours.conv1.weight, ResNetBackbone("resnet18_small", 16).conv1.weight)

    train = load_dataset("digits", "train", image_size=32)
    test = load_dataset("digits", "test", image_size=32)
    scores = []
    for backbone in (net, ours):
        monitor = KnnMonitor(train.images, train.labels, test.images, test.labels, train.num_classes, 32, probe=True)
        scores.append(monitor.evaluate(backbone, torch.device("cpu")))
    assert abs(scores[0]["probe_top1"] - scores[1]["probe_top1"]) <= 0.5
    assert scores[0]["knn_top1"] == pytest.approx(scores[1]["knn_top1"])
    assert scores[0]["probe_top1"] > 50.0  # digits: 10 classes, far above chance


@pytest.fixture()
def equal_time():
    from benchmarks.quality import equal_time

    return equal_time


@pytest.mark.parametrize("method", ["JigClu", "SimCLR", "supervised"])
def test_budgeted_training_keeps_a_trained_snapshot_at_each_point(equal_time, method):
    cfg = load_config(RECIPE, ["model.width=8"])
    from jigclu.methods import JigClu, SimCLR

    build = {"JigClu": lambda: JigClu(cfg), "SimCLR": lambda: SimCLR(cfg),
             "supervised": lambda: equal_time.SupervisedMethod(cfg, 10)}[method]
    torch.manual_seed(0)
    m = build()
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    images = torch.randint(0, 256, (96, 1, 32, 32), dtype=torch.uint8)
    labels = torch.arange(96) % 10
    run = equal_time.train_for_budget(m, images, [0.02, 0.04], batch_size=32, lr=0.1, weight_decay=1e-4, seed=0,
                                      labels=labels if method == "supervised" else None)
    assert sorted(run.snapshots) == [0.02, 0.04] and run.seconds >= 0.04 * 60
    assert run.steps >= 2 and run.images == 32 * run.steps
    early, late = run.snapshots[0.02], run.snapshots[0.04]
    assert not torch.equal(early["conv1.weight"], before["conv1.weight"])  # trained
    assert not torch.equal(early["conv1.weight"], late["conv1.weight"])  # a copy, not a live reference
    assert torch.equal(late["conv1.weight"], m.backbone.state_dict()["conv1.weight"])


def test_time_schedule_warms_up_then_decays_to_zero_at_the_budget(equal_time):
    lr = equal_time.time_lr
    assert lr(0.0, 100.0, 10.0) == pytest.approx(0.01) and lr(5.0, 100.0, 10.0) == pytest.approx(0.5)
    assert lr(10.0, 100.0, 10.0) == pytest.approx(1.0) and lr(55.0, 100.0, 10.0) == pytest.approx(0.5)
    assert lr(100.0, 100.0, 10.0) == pytest.approx(0.0, abs=1e-12) and lr(150.0, 100.0, 10.0) == pytest.approx(0.0, abs=1e-12)


def test_knn_command_fits_the_linear_probe_with_probe(capsys):
    import json

    from jigclu.cli import main

    common = ["data.dataset=digits", "model.arch=resnet18_small", "model.width=8", "jigsaw.crop_size=32",
              "monitor.train_limit=600", "monitor.test_limit=300"]
    assert main(["knn", "--json", *common]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "probe_top1" not in plain
    assert main(["knn", "--probe", "--json", *common]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert probed["knn_top1"] == pytest.approx(plain["knn_top1"])  # same bank, same queries
    assert 30.0 < probed["probe_top1"] <= 100.0  # digits from random init: well above chance (10%)
