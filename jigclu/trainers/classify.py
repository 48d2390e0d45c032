"""The supervised loop every downstream trainer shares (SPEC.md section 2).

One backbone (pretrained or random init) plus a fresh linear classifier, trained with SGD and
a step schedule on labeled images, scored on the test split every epoch. The three tasks differ
only in their :class:`Recipe`:

======================  ==========  =============================  ==========================
task                    backbone    train-time augmentation         defaults (paper)
======================  ==========  =============================  ==========================
linear                  frozen      random-resized crop + flip      lr 30, x0.1 @ 60, 80
semi (1% / 10%)         trained     random-resized crop + flip      lr 0.02/0.01 backbone,
                                                                    5.0/0.2 classifier,
                                                                    x0.1 @ 30, 60, 90
finetune (finetune)     trained     pad-4 random crop + flip        lr 0.1, x0.2 @ 40, 60, 80,
                                                                    wd 5e-4, batch 128
finetune (linear)       frozen      pad-4 random crop + flip        lr 10, x0.2 @ 40, 60, 80
======================  ==========  =============================  ==========================

"Frozen" includes the BatchNorm statistics: the backbone stays in eval mode for the whole run
and runs under ``no_grad``, so linear evaluation scores the pretrained features exactly.

Augmentations run batched on tensors on the training device, from a generator seeded by
(run seed, epoch, step, rank), so a resumed run replays the same crops.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from jigclu import dist
from jigclu.augment import IMAGENET_MEAN, IMAGENET_STD, PatchAugment, to_float_rgb
from jigclu.config import RunConfig, build_config, save_config
from jigclu.context import LocalContext
from jigclu.data import ShardSampler, collate_uint8, load_dataset
from jigclu.data.images import ImageDataset
from jigclu.errors import ConfigError, DataError, TrainingError
from jigclu.export import load_backbone_weights, load_into
from jigclu.jigsaw import step_seed
from jigclu.models import ResNetBackbone, build_backbone
from jigclu.progress import TrainProgress
from jigclu.trainers.common import eval_images, seed_everything, seeded_subset

Task = Literal["linear", "semi", "finetune"]
Augment = Literal["rrc", "padcrop"]
_AUG_SALT = 17
_EVAL_BATCH = 256


# ---------------------------------------------------------------------------------------------
# protocols: the paper's defaults, resolved into the config


@dataclass(frozen=True)
class Protocol:
    """Paper defaults of one downstream protocol (SPEC.md 2.1-2.3); milestones for 100 epochs."""

    frozen: bool
    augment: Augment
    epochs: int
    batch_size: int
    lr: float
    classifier_lr: float | None  # None: the same as ``lr``
    milestones: tuple[int, ...]
    gamma: float
    weight_decay: float


PROTOCOLS: dict[str, Protocol] = {
    "linear": Protocol(True, "rrc", 100, 256, 30.0, None, (60, 80), 0.1, 0.0),
    "semi_10": Protocol(False, "rrc", 100, 256, 0.01, 0.2, (30, 60, 90), 0.1, 0.0),
    "semi_1": Protocol(False, "rrc", 100, 256, 0.02, 5.0, (30, 60, 90), 0.1, 0.0),
    "finetune": Protocol(False, "padcrop", 100, 128, 0.1, None, (40, 60, 80), 0.2, 5e-4),
    "finetune_linear": Protocol(True, "padcrop", 100, 128, 10.0, None, (40, 60, 80), 0.2, 0.0),
}


def protocol_key(task: str, cfg: RunConfig) -> str:
    """Which row of :data:`PROTOCOLS` a task runs (semi: 1% uses its own rates, else the 10% ones)."""
    if task == "linear":
        return "linear"
    if task == "semi":
        from jigclu.config import label_fraction

        fraction = label_fraction(cfg.eval.labels)
        return "semi_1" if fraction is not None and math.isclose(fraction, 0.01) else "semi_10"
    if task == "finetune":
        return "finetune_linear" if cfg.eval.protocol == "linear" else "finetune"
    raise ConfigError(f"unknown downstream task {task!r}")


def resolve_eval(cfg: RunConfig, task: str, native_size: int | None = None) -> RunConfig:
    """A copy of ``cfg`` whose ``eval`` section has every protocol default filled in.

    Milestones left unset are the paper's scaled to ``eval.epochs`` (60/80 of 100 becomes 6/8
    of 10), so a short run keeps the schedule's shape. Input size: ``eval.image_size``, else
    ``jigsaw.crop_size`` (the montage size the backbone saw while pretraining) for linear and
    semi, and the dataset's own size (``native_size``) for the CIFAR-style finetune protocol.
    Idempotent: resolving a resolved config changes nothing.
    """
    proto = PROTOCOLS[protocol_key(task, cfg)]
    ev = cfg.eval
    epochs = ev.epochs or proto.epochs
    lr = ev.lr or proto.lr
    # with a frozen backbone the classifier is all that trains, at eval.lr
    classifier_lr = None if proto.frozen else ev.classifier_lr or proto.classifier_lr or lr
    milestones = ev.milestones
    if milestones is None:
        scaled = sorted({max(1, round(m * epochs / proto.epochs)) for m in proto.milestones})
        milestones = [m for m in scaled if m < epochs]
    image_size = ev.image_size or (native_size if task == "finetune" else cfg.jigsaw.crop_size)
    protocol = ev.protocol
    if task == "finetune":  # say which of the two CIFAR protocols ran
        protocol = "linear" if proto.frozen else "finetune"
    data = cfg.model_dump(mode="json")
    data["eval"].update(
        epochs=epochs, lr=lr, classifier_lr=classifier_lr, milestones=milestones,
        gamma=ev.gamma or proto.gamma,
        weight_decay=proto.weight_decay if ev.weight_decay is None else ev.weight_decay,
        batch_size=ev.batch_size or proto.batch_size, image_size=image_size,
        protocol=protocol,
    )
    return build_config(RunConfig, data)


# ---------------------------------------------------------------------------------------------
# model


class ClassifierModel(nn.Module):
    """Backbone + linear classifier; state dict keys ``backbone.*`` and ``classifier.*``."""

    def __init__(self, arch: str, width: int, num_classes: int) -> None:
        super().__init__()
        self.backbone: ResNetBackbone = build_backbone(arch, width)
        self.classifier = nn.Linear(self.backbone.feature_dim, num_classes)
        # the paper's (and MoCo's) linear-head init: small weights, no bias
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))


def freeze(backbone: nn.Module) -> None:
    """No gradients and eval-mode BatchNorm for good: running stats never move."""
    backbone.requires_grad_(False)
    backbone.eval()


# ---------------------------------------------------------------------------------------------
# batched train-time augmentation (uint8 [B, C, H, W] -> normalised float [B, 3, S, S])


def _normalise(x: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class RandomResizedCropFlip(nn.Module):
    """RandomResizedCrop(size, scale=(min_scale, 1)) + horizontal flip, one batched resampling.

    Reuses :class:`PatchAugment` with the whole image as the box and every colour op off, so the
    crop geometry is exactly pretraining's (continuous crops, torchvision's 10-try sampling).
    """

    def __init__(self, size: int, min_scale: float = 0.08) -> None:
        super().__init__()
        self.aug = PatchAugment(size, scale=(min_scale, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = images.shape
        boxes = torch.tensor([0.0, 0.0, float(w), float(h)], device=images.device).expand(n, 4)
        return self.aug(images, torch.arange(n, device=images.device), boxes, generator)


class PadCropFlip(nn.Module):
    """CIFAR's RandomCrop(size, padding=4) + horizontal flip: zero-pad, cut a random window.

    The window is gathered with one advanced index per batch (no Python loop over images); a
    flip reverses the window's column indices.
    """

    def __init__(self, size: int, padding: int = 4) -> None:
        super().__init__()
        self.size, self.padding = size, padding

    @torch.no_grad()
    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        x = to_float_rgb(images)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        n, s, p = x.shape[0], self.size, self.padding
        x = F.pad(x, (p, p, p, p))  # black border in pixel space, as torchvision's fill=0
        u = torch.rand(n, 3, generator=generator, device=generator.device).to(x.device)
        ox = (u[:, 0] * (2 * p + 1)).long().clamp_(max=2 * p)
        oy = (u[:, 1] * (2 * p + 1)).long().clamp_(max=2 * p)
        flip = u[:, 2] < 0.5
        ar = torch.arange(s, device=x.device)
        cols = torch.where(flip[:, None], s - 1 - ar, ar) + ox[:, None]  # [n, s]
        rows = ar[None, :] + oy[:, None]  # [n, s]
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [n, s, s, 3]
        return _normalise(out.permute(0, 3, 1, 2).contiguous())


def build_augment(kind: Augment, size: int, min_scale: float) -> nn.Module:
    return RandomResizedCropFlip(size, min_scale) if kind == "rrc" else PadCropFlip(size)


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model: ClassifierModel, dataset: ImageDataset, size: int, device: torch.device,
             amp: str = "none", num_workers: int = 0) -> dict[str, float]:
    """Top-1/top-5 (%) and mean loss on ``dataset``; each worker scores its share, then they sum.

    Images are resized whole to ``size`` (no centre crop: small images have no border to spare).
    The model's train/eval mode is restored afterwards.
    """
    modes = {m: m.training for m in model.modules()}  # a frozen backbone must stay in eval mode
    model.eval()
    world, rank = dist.world_size(), dist.rank()
    mine = torch.arange(rank, len(dataset), world)
    loader = DataLoader(dataset.subset(mine), batch_size=_EVAL_BATCH, shuffle=False,
                        collate_fn=collate_uint8, num_workers=num_workers)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1, top-5, count
    k = min(5, model.classifier.out_features)
    for images, labels in loader:
        labels = labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(eval_images(images, size, device)).float()
        top = logits.topk(k, dim=1).indices
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                             (top[:, 0] == labels).sum().double(),
                             (top == labels[:, None]).any(1).sum().double(),
                             torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)])
    for module, mode in modes.items():
        module.training = mode
    sums = dist.all_reduce_mean(sums) * world
    count = max(sums[3].item(), 1.0)
    return {"val_loss": sums[0].item() / count, "val_top1": 100.0 * sums[1].item() / count,
            "val_top5": 100.0 * sums[2].item() / count}


# ---------------------------------------------------------------------------------------------
# the loop

TrainSelector = Callable[[RunConfig, ImageDataset, dict[str, Any] | None], tuple[Tensor | None, str]]
"""``(cfg, train split, resume state) -> (indices to train on or None for all, description)``."""


@dataclass
class Datasets:
    train: ImageDataset
    val: ImageDataset
    subset: Tensor | None  # training indices into the (limited) train split; None = all
    note: str


def load_splits(cfg: RunConfig, select: TrainSelector | None, state: dict[str, Any] | None) -> Datasets:
    """Train split (``data.limit``, then the task's label subset) and the scored test split."""
    train = load_dataset(cfg.data.dataset, "train", image_size=cfg.data.image_size,
                         on_corrupt=cfg.data.on_corrupt)
    if cfg.data.limit is not None and cfg.data.limit < len(train):
        train = train.subset(torch.arange(cfg.data.limit))
    test = load_dataset(cfg.data.dataset, "test", image_size=cfg.data.image_size, on_corrupt=cfg.data.on_corrupt)
    if cfg.eval.val_limit is not None and cfg.eval.val_limit < len(test):
        test = test.subset(seeded_subset(len(test), cfg.eval.val_limit, cfg.seed + 1))
    subset, note = select(cfg, train, state) if select else (None, f"{len(train)} labeled images")
    return Datasets(train.subset(subset) if subset is not None else train, test, subset, note)


def native_side(dataset: ImageDataset) -> int:
    """The (larger) side of the dataset's images."""
    return int(max(dataset.image_size))


def local_run_dir(ctx: LocalContext) -> Path | None:
    """The run directory when it is on this machine's disk (not an ``s3://`` / ``gs://`` URI)."""
    text = str(ctx.run_dir)
    if text.startswith("file:"):
        return Path(re.sub(r"^file:/*", "/", text))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text):  # a URI (Path turns "s3://b" into "s3:/b")
        return None
    return Path(text)


def _check_resume(state: dict[str, Any], cfg: RunConfig, task: str) -> None:
    saved = state.get("config") or {}
    if state.get("task") not in (None, task):
        raise ConfigError(f"cannot resume: the run directory holds a {state.get('task')} run, not {task}")
    before, now = saved.get("model") or {}, cfg.model_dump(mode="json")["model"]
    for key in ("arch", "width"):
        if key in before and before[key] != now[key]:
            raise ConfigError(f"cannot resume: model.{key} differs from the checkpoint "
                              f"({before[key]!r} there, {now[key]!r} now)")


def _param_groups(model: ClassifierModel, frozen: bool, lr: float, classifier_lr: float) -> list[dict[str, Any]]:
    """One group per learning rate; the names let metrics and tests read them back."""
    groups = [{"params": list(model.classifier.parameters()), "lr": classifier_lr, "name": "classifier"}]
    if not frozen:
        groups.insert(0, {"params": list(model.backbone.parameters()), "lr": lr, "name": "backbone"})
    return groups


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"lr_backbone": ..., "lr_classifier": ...}`` as the optimizer holds them now."""
    return {f"lr_{g['name']}": float(g["lr"]) for g in optimizer.param_groups}


def run_classification(cfg: RunConfig, ctx: LocalContext, task: Task,
                       select: TrainSelector | None = None,
                       on_start: Callable[[RunConfig, Datasets, Path | None], None] | None = None) -> dict[str, Any]:
    """Train and score a classifier on ``cfg``'s data with the ``task``'s protocol.

    ``select`` picks the labeled training subset (semi); ``on_start`` runs on the main worker
    once everything is validated, just before the first step (semi saves its subset there).
    Returns ``{epochs_run, start_epoch, last, best_val_top1, resolved}``.
    """
    seed_everything(cfg.seed)
    device = ctx.device
    world, rank = dist.world_size(), dist.rank()
    state = ctx.load_state()
    if state is not None:
        _check_resume(state, cfg, task)

    data = load_splits(cfg, select, state)
    cfg = resolve_eval(cfg, task, native_side(data.train))
    ev, proto = cfg.eval, PROTOCOLS[protocol_key(task, cfg)]
    frozen, augment_kind = proto.frozen, proto.augment
    assert ev.batch_size and ev.epochs and ev.lr and ev.image_size and ev.gamma  # resolved above
    if ev.batch_size % world:
        raise ConfigError(f"eval.batch_size={ev.batch_size} is not divisible by {world} workers")
    local_batch = ev.batch_size // world
    if len(data.train) == 0:
        raise DataError(f"{cfg.data.dataset}: no training images to train on")
    steps_per_epoch = math.ceil(len(data.train) / ev.batch_size)
    if cfg.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)

    model = ClassifierModel(cfg.model.arch, cfg.model.width, data.train.num_classes).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
    elif ev.pretrained:
        load_into(model.backbone, load_backbone_weights(ev.pretrained))
        model.to(device)
    if frozen:
        freeze(model.backbone)
    optimizer = torch.optim.SGD(_param_groups(model, frozen, ev.lr, ev.classifier_lr or ev.lr), lr=ev.lr,
                                momentum=ev.momentum, weight_decay=ev.weight_decay or 0.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=ev.milestones or [], gamma=ev.gamma)
    start_epoch, best = 0, {"val_top1": None, "val_top5": None}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
        best = {"val_top1": state.get("best_val_top1"), "val_top5": state.get("best_val_top5")}

    # DDP wraps only what trains: the head alone when the backbone is frozen
    trained: nn.Module = model.classifier if frozen else model
    if dist.is_distributed():
        trained = DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None)
    augment = build_augment(augment_kind, ev.image_size, ev.crop_scale).to(device)
    sampler = ShardSampler(len(data.train), num_replicas=world, rank=rank, seed=cfg.seed, drop_last=False)
    loader = DataLoader(data.train, batch_size=local_batch, sampler=sampler, collate_fn=collate_uint8,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.data.num_workers > 0)

    run_dir = local_run_dir(ctx)
    if ctx.is_main and run_dir is not None:
        save_config(cfg, run_dir / "config.yaml")  # the resolved recipe, ready to re-run
    if ctx.is_main and on_start is not None:
        on_start(cfg, data, run_dir)

    summary: dict[str, Any] = {"epochs_run": 0, "start_epoch": start_epoch, "last": {},
                               "resolved": cfg.eval.model_dump(mode="json")}
    step_fn = _frozen_step if frozen else _full_step
    with TrainProgress(steps_per_epoch * ev.epochs, task, enabled=ctx.progress and ctx.is_main,
                       completed=start_epoch * steps_per_epoch) as bar:
        for epoch in range(start_epoch, ev.epochs):
            sampler.set_epoch(epoch)
            if not frozen:
                model.train()
            lrs = group_lrs(optimizer)  # the rates this epoch trains with
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, count
            t0 = time.perf_counter()
            for step, (images, labels) in zip(range(steps_per_epoch), loader):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if not frozen and images.shape[0] < 2:
                    continue  # BatchNorm cannot train on one image; every rank skips alike (padded shards)
                gen = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, epoch, step, _AUG_SALT + rank))
                x = augment(images, gen)
                logits = step_fn(model, trained, x, cfg.train.amp)
                loss = F.cross_entropy(logits, labels)
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at epoch {epoch} step {step}; try a lower "
                                        f"eval.lr / eval.classifier_lr (no checkpoint written for this epoch)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums += torch.stack([loss.detach().double() * labels.numel(),
                                     (logits.argmax(1) == labels).sum().double(),
                                     torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)])
                bar.advance(images=labels.numel() * world, description=f"{task} {epoch + 1}/{ev.epochs}",
                            loss=loss.item())
            train_time = time.perf_counter() - t0
            scheduler.step()
            sums = dist.all_reduce_mean(sums) * world
            metrics = _epoch_metrics(epoch, sums, train_time, frozen, lrs, world)
            metrics["train_images"] = len(data.train)
            metrics.update(evaluate(model, data.val, ev.image_size, device, cfg.train.amp, cfg.data.num_workers))
            for key in best:
                best[key] = max(best[key] if best[key] is not None else -1.0, metrics[key])
            metrics.update(best_val_top1=best["val_top1"], best_val_top5=best["val_top5"],
                           epoch_time_s=time.perf_counter() - t0)
            bar.log(epoch_line(task, metrics, ev.epochs))
            ckpt = {
                "task": task, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "config": cfg.model_dump(mode="json"),
                "best_val_top1": best["val_top1"], "best_val_top5": best["val_top5"], "world_size": world,
                "labels_subset": data.subset, "num_classes": data.train.num_classes,
            }
            ctx.report(metrics, ckpt)
            summary["epochs_run"] += 1
            summary["last"] = metrics
    summary["best_val_top1"] = best["val_top1"]
    return summary


def _frozen_step(model: ClassifierModel, trained: nn.Module, x: Tensor, amp: str) -> Tensor:
    """Features from the frozen backbone (no graph, eval-mode BN), logits from the head."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        with torch.no_grad():
            feats = model.backbone(x)
        return trained(feats.float()).float()


def _full_step(model: ClassifierModel, trained: nn.Module, x: Tensor, amp: str) -> Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        return trained(x).float()


def _epoch_metrics(epoch: int, sums: Tensor, train_time: float, frozen: bool, lrs: dict[str, float],
                   world: int) -> dict[str, Any]:
    count = max(sums[2].item(), 1.0)
    metrics: dict[str, Any] = {
        "epoch": epoch, "train_loss": sums[0].item() / count, "train_top1": 100.0 * sums[1].item() / count,
        "lr": lrs["lr_classifier"] if frozen else lrs["lr_backbone"], **lrs,
        "images_per_s": sums[2].item() / max(train_time, 1e-9), "world_size": world,
    }
    return metrics


def epoch_line(task: str, m: dict[str, Any], epochs: int) -> str:
    """One readable line per epoch (also used by the Ray driver's progress display)."""
    return (f"{task} epoch {m['epoch'] + 1}/{epochs}  loss {m['train_loss']:.3f}  train top-1 "
            f"{m['train_top1']:.1f}%  val top-1 [bold]{m['val_top1']:.2f}%[/] top-5 {m['val_top5']:.1f}%  "
            f"(best {m['best_val_top1']:.2f}%)  lr {m['lr']:.3g}  {m['images_per_s']:,.0f} img/s")


__all__ = ["PROTOCOLS", "ClassifierModel", "PadCropFlip", "RandomResizedCropFlip", "evaluate",
           "resolve_eval", "run_classification", "group_lrs"]
