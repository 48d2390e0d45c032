"""Downstream trainers (linear, semi) on Ray Train: 2 workers equal 1 process, and survive a kill.

What has to match for 2 gloo workers to reproduce one process step for step:

* the global batch: each worker takes ``eval.batch_size / 2`` of it and ``ShardSampler`` deals
  one world-size-independent permutation round-robin, so global batch ``k`` holds the same
  images on 1 or 2 workers (rank ``r`` holds ``batch[r::2]``);
* the gradient: DDP averages the two half-batch mean gradients, which is the full-batch mean;
* the inputs: the train-time augmentation draws from a generator seeded per *rank*
  (``_AUG_SALT + rank`` in ``jigclu/trainers/classify.py``), so one image gets other crops and
  flips on 1 and on 2 workers. The tests take the randomness out of the data, not the code:
  mirror-symmetric 32x32 digits (a flip changes nothing) and ``eval.crop_scale=1`` (the crop is
  the whole image, read back pixel-exactly). ``test_augmentation_is_the_identity_here`` checks
  that premise, so a failure below is never "just other crops";
* BatchNorm: linear evaluation keeps the backbone in eval mode, so nothing else differs and the
  classifier matches to float rounding. Semi trains the whole network with train-mode BatchNorm,
  whose batch statistics are per worker under DDP (no SyncBN: 16 images each, not 32), and
  DDP's ``broadcast_buffers`` makes rank 0's running statistics the model's. A plain one-process
  run therefore differs by far more than rounding (the semi test measures it); the exact
  reference is a one-process run whose BatchNorm layers normalise each worker's share of the
  batch on its own (:func:`per_worker_batchnorm`).

Float rounding (1 process vs 2, 16 vs 32 images per convolution, the all-reduce) is amplified by
training: with semi's paper rates (0.01 / 0.2) on this tiny random network, rounding alone (1 vs 2
CPU threads in one process) moves the backbone by ~2% of its update within 8 steps. The semi
runs use lower rates (``SEMI``), where that is ~2e-5, and 8 steps.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_faults import KillOnce
from jigclu.checkpoint import load_checkpoint, save_checkpoint
from jigclu.config import load_config
from jigclu.launch import launch, prepare
from jigclu.models import ResNetBackbone
from jigclu.runs import RunLayout, read_metrics
from jigclu.evaluation.inputs import eval_images

pytestmark = pytest.mark.ray

WORLD, N_TRAIN, N_TEST, BATCH, STEPS = 2, 256, 100, 32, 4
SEMI_LR = 0.002  # backbone; the classifier's is 0.005
SEMI = ("eval.labels=60%", f"eval.lr={SEMI_LR}", "eval.classifier_lr=0.005")  # 156 labeled images
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# Parameters and buffers: float32 rounding only, observed below 2e-6. Workers without gradient
# averaging, summing instead, training on the full data or on full batches: 4e-4 (semi, after
# epoch 0) to 0.7 (linear) off.
RTOL, ATOL = 1e-4, 1e-5
# Metrics (losses, accuracies): observed below 2e-7 relative. Rank 1 scoring with its own
# BatchNorm statistics instead of rank 0's (the bug fixed in ``evaluate``) was off by 4e-6..5e-5.
METRIC_RTOL = 2e-6


# -------------------------------------------------------------------------------- data and backbone

def symmetric_digits(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scikit-learn digits, 32x32 uint8 and exactly mirror-symmetric.

    The 8x8 digit is folded onto its mirror image, enlarged 4x (nearest) and given a symmetric
    noise texture, so that few pixels are alike (flat regions make ReLU networks jumpy).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images[offset:offset + n] * (191.0 / 16.0)).astype(np.uint8)
    x = np.repeat(np.repeat(np.maximum(x, x[:, :, ::-1]), 4, axis=1), 4, axis=2)
    noise = np.random.default_rng(offset).integers(0, 65, size=(n, 32, 16), dtype=np.uint8)
    x = x + np.concatenate([noise, noise[:, :, ::-1]], axis=2)  # at most 255: nothing clipped
    assert np.array_equal(x, x[:, :, ::-1])
    return x, bunch.target[offset:offset + n]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """An ImageFolder tree (``train/``, ``test/``) of symmetric digits, read as ``folder:DIR``."""
    from PIL import Image

    root = tmp_path_factory.mktemp("symdigits")
    for split, n, offset in (("train", N_TRAIN, 0), ("test", N_TEST, N_TRAIN)):
        images, labels = symmetric_digits(n, offset)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A random backbone whose BatchNorm statistics are those of the data (well-scaled features)."""
    torch.manual_seed(1)
    net = ResNetBackbone("resnet18_small", 8)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
    net.train()
    with torch.no_grad():
        for chunk in eval_images(torch.from_numpy(symmetric_digits(128)[0])[:, None], 32, "cpu").split(32):
            net(chunk)
    path = tmp_path_factory.mktemp("backbone") / "backbone.pt"
    save_checkpoint({"task": "pretrain", "model": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


# ------------------------------------------------------------------------------------------ helpers

def overrides(data: Path, backbone: Path, out: Path, *extra: str, steps: int = STEPS) -> list[str]:
    """The runs' config: the workers run on CPUs, so the process does too (no TF32 convolutions)."""
    return ["device=cpu", f"data.dataset=folder:{data}", "data.image_size=32", "model.arch=resnet18_small",
            "model.width=8", "jigsaw.crop_size=32", "train.progress=false", "eval.crop_scale=1.0",
            f"eval.batch_size={BATCH}", f"train.steps_per_epoch={steps}", f"eval.pretrained={backbone}",
            f"output_dir={out}", *extra]


def run(task: str, args: list[str], name: str, workers: int = 0, callbacks=None) -> Path:
    """``jigclu <task>`` in this process (``workers=0``) or on Ray Train; returns the run directory."""
    cfg = load_config(None, [*args, f"name={name}", f"scaling.workers={workers}"])
    quiet = lambda _note: None  # noqa: E731
    if callbacks is None:
        summary = launch(task, cfg, progress=False, notify=quiet)
    else:  # launch() takes no Ray Train callbacks: prepare the config as it does, then hand it to Ray Train
        from jigclu.ray_train import launch_ray

        summary = launch_ray(task, prepare(task, cfg, notify=quiet), progress=False, callbacks=callbacks)
    return Path(summary["run_dir"])


def states(run_dir: Path) -> dict[int, dict]:
    """Every kept checkpoint of a run (either layout), by epoch."""
    return {epoch: load_checkpoint(file) for epoch, file in RunLayout(str(run_dir)).checkpoints()}


def assert_same_model(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=RTOL, atol=ATOL, msg=lambda m: f"{what} {key}: {m}")


def assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [m["epoch"] for m in a] == [m["epoch"] for m in b]
    for ma, mb in zip(a, b):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr_classifier"):
            assert mb[key] == pytest.approx(ma[key], rel=METRIC_RTOL, abs=1e-9), (ma["epoch"], key)


def update_distance(a: dict, b: dict, start: dict, keys: list[str]) -> float:
    """``|a - b| / |a - start|`` over ``keys``: how far apart two runs end, relative to how far they trained."""
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    den = sum(float((a[k].double() - start[k].double()).pow(2).sum()) for k in keys)
    return math.sqrt(num / den)


_BATCHNORM_FORWARD = torch.nn.BatchNorm2d.forward


def per_worker_batchnorm(self: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm as DDP on ``WORLD`` workers computes it, in one process.

    Rank ``r`` holds ``batch[r::WORLD]`` of the global batch and normalises it with its own batch
    statistics; rank 0's running statistics are the model's (DDP broadcasts rank 0's buffers
    before every forward). The loss is the mean over the whole batch, so the gradient is the mean
    of the shares' gradients, as DDP's average is.
    """
    if not self.training:
        return _BATCHNORM_FORWARD(self, x)
    assert x.shape[0] % WORLD == 0, "every worker's share must be the same size"
    self.num_batches_tracked.add_(1)
    shares = [F.batch_norm(x[r::WORLD], self.running_mean if r == 0 else None, self.running_var if r == 0 else None,
                           self.weight, self.bias, True, self.momentum, self.eps) for r in range(WORLD)]
    return torch.stack(shares, dim=1).flatten(0, 1)  # interleave back: row i came from share i % WORLD


class RegisteredCheckpoints:
    """Follows which checkpoint Ray Train has registered: Ray rewrites the run's
    ``checkpoint_manager_snapshot.json`` on every registration. ``seen``: ``[(first seen, epoch)]``."""

    def __init__(self, run_dir: Path) -> None:
        self.file = run_dir / "checkpoint_manager_snapshot.json"
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RegisteredCheckpoints":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                latest = json.loads(self.file.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
            except (OSError, ValueError, KeyError, TypeError):  # not there yet, or being rewritten
                continue
            epoch = int(re.fullmatch(r"checkpoint_epoch_(\d+)", latest).group(1))
            if not self.seen or self.seen[-1][1] != epoch:
                self.seen.append((time.time(), epoch))

    def latest_before(self, moment: float) -> int:
        before = [epoch for t, epoch in self.seen if t < moment]
        assert before, f"no checkpoint registered before {moment} ({self.seen}; did Ray move {self.file.name}?)"
        return before[-1]


# ------------------------------------------------------------------------------------------- tests

def test_augmentation_is_the_identity_here():
    """The premise: on these images the train-time augmentation ignores its (per-rank) generator."""
    from jigclu.trainers.classify_augment import build_augment

    images = torch.from_numpy(symmetric_digits(64)[0])[:, None]
    rank0, rank1 = torch.Generator().manual_seed(17), torch.Generator().manual_seed(18)
    aug = build_augment("rrc", 32, 1.0)
    out = aug(images, rank0)
    assert torch.equal(out, aug(images, rank1))
    assert torch.allclose(out, eval_images(images, 32, "cpu"), atol=1e-6)  # the image itself
    # ... because of the data and crop_scale=1: the augmentation itself is random
    aug = build_augment("rrc", 32, 0.08)
    assert not torch.equal(aug(images, rank0), aug(images, rank1))


def test_linear_two_workers_match_one_process(ray_local, tmp_path, data, backbone):
    """Same classifier and momentum after every epoch, same metrics; the backbone stays frozen."""
    args = overrides(data, backbone, tmp_path, "eval.epochs=2", "eval.lr=0.5")
    one_dir, two_dir = run("linear", args, "one"), run("linear", args, "two", workers=WORLD)
    one, two = states(one_dir), states(two_dir)
    assert sorted(one) == sorted(two) == [0, 1]
    frozen = load_checkpoint(backbone)["model"]
    for epoch in (0, 1):
        assert (one[epoch]["world_size"], two[epoch]["world_size"]) == (1, WORLD)
        assert_same_model(one[epoch]["model"], two[epoch]["model"], f"epoch {epoch}")
        momentum = [{k: s["momentum_buffer"] for k, s in st[epoch]["optimizer"]["state"].items()} for st in (one, two)]
        assert_same_model(*momentum, f"epoch {epoch} momentum")
        for key, value in frozen.items():
            assert torch.equal(two[epoch]["model"][key], value), f"{key} moved on the workers"
    # the classifier really trained, by far more than the tolerance
    assert (one[1]["model"]["classifier.weight"] - one[0]["model"]["classifier.weight"]).abs().max() > 100 * ATOL
    assert_same_metrics(read_metrics(one_dir), read_metrics(two_dir))
    assert [m["world_size"] for m in read_metrics(two_dir)] == [WORLD, WORLD]


def test_semi_two_workers_match_one_process(ray_local, tmp_path, data, backbone, monkeypatch):
    """Equal to one process whose BatchNorm uses per-worker statistics; close to a plain one."""
    args = overrides(data, backbone, tmp_path, "eval.epochs=2", *SEMI)
    two_dir = run("semi", args, "two", workers=WORLD)
    plain_dir = run("semi", args, "plain")
    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.BatchNorm2d, "forward", per_worker_batchnorm)
        ghost_dir = run("semi", args, "ghost")
    two, ghost, plain = states(two_dir), states(ghost_dir), states(plain_dir)
    assert sorted(two) == sorted(ghost) == [0, 1]
    for epoch in (0, 1):
        assert_same_model(ghost[epoch]["model"], two[epoch]["model"], f"epoch {epoch}")  # BN buffers included
        assert torch.equal(two[epoch]["labels_subset"], ghost[epoch]["labels_subset"])
    assert_same_metrics(read_metrics(ghost_dir), read_metrics(two_dir))

    # Per-worker statistics are not a detail: a plain process (BatchNorm over all 32 images) ends
    # far away in parameters, though its training loss stays within 2%.
    start = load_checkpoint(backbone)["model"]  # backbone.* of the pretrained checkpoint
    params = [k for k in start if not k.endswith(BUFFERS)]
    exact = update_distance(ghost[1]["model"], two[1]["model"], start, params)
    plain_distance = update_distance(plain[1]["model"], two[1]["model"], start, params)
    print(f"\nsemi, backbone after 8 steps, 2 workers vs 1 process: {exact:.1e} of its update with "
          f"per-worker BatchNorm, {plain_distance:.2f} with plain BatchNorm")
    assert exact < 1e-2 < 0.1 < plain_distance
    for mp, m2 in zip(read_metrics(plain_dir), read_metrics(two_dir)):
        assert m2["train_loss"] == pytest.approx(mp["train_loss"], rel=0.02), mp["epoch"]


def test_killed_worker_resumes_semi(ray_local, tmp_path, data, backbone, monkeypatch):
    """SIGKILL rank 1 after epoch 1: every epoch completes (one may repeat), the run resumes right
    after the checkpoint Ray holds, and ends where an uninterrupted run ends."""
    args = overrides(data, backbone, tmp_path, "eval.epochs=4", "eval.milestones=[2]", *SEMI,
                     "train.keep_checkpoints=10", "scaling.max_failures=2", steps=2)
    marker = tmp_path / "killed"
    with RegisteredCheckpoints(tmp_path / "fault") as registered:
        run_dir = run("semi", args, "fault", workers=WORLD,
                      callbacks=[KillOnce(1, 1, str(marker), run_dir=str(tmp_path / "fault"))])
    assert marker.exists(), "the fault was never injected"
    kill_time = float(marker.read_text())
    metrics = read_metrics(run_dir)
    epochs = [m["epoch"] for m in metrics]
    assert sorted(set(epochs)) == [0, 1, 2, 3], epochs  # every epoch, none missing
    assert epochs == sorted(epochs) and len(epochs) - len(set(epochs)) <= 1, epochs  # at most one repeated
    assert all(m["world_size"] == WORLD for m in metrics)
    assert [m["epoch"] for m in metrics if m["time"] < kill_time] == [0, 1], epochs
    resumed = next(m for m in metrics if m["time"] > kill_time)
    last = registered.latest_before(resumed["time"])  # the checkpoint Ray restarted the workers from
    recovery_s = resumed["time"] - resumed["epoch_time_s"] - kill_time
    print(f"\nepochs {epochs}, checkpoints registered {[e for _t, e in registered.seen]}; killed after epoch 1, "
          f"resumed at epoch {resumed['epoch']} {recovery_s:.1f} s later")
    assert resumed["epoch"] == last + 1, (registered.seen, epochs)
    assert resumed["step"] == (last + 2) * 2  # the step count came back with it
    # the schedule went on where it was (x0.1 from epoch 2) and the run ends as an uninterrupted one
    assert [m["lr_backbone"] for m in metrics] == pytest.approx([SEMI_LR if e < 2 else SEMI_LR / 10 for e in epochs])
    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.BatchNorm2d, "forward", per_worker_batchnorm)
        straight_dir = run("semi", args, "straight")
    assert_same_model(states(straight_dir)[3]["model"], states(run_dir)[3]["model"], "epoch 3")
    final = {m["epoch"]: m for m in metrics}[3]
    assert final["val_loss"] == pytest.approx(read_metrics(straight_dir)[-1]["val_loss"], rel=METRIC_RTOL)
