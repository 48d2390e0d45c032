"""The downstream classifier every downstream trainer shares: a task on the one loop.

One backbone (pretrained or random init) plus a fresh linear classifier, trained with SGD and
a step schedule on labeled images, scored on the test split every epoch. Linear, semi and
finetune differ only in their protocol (:mod:`jigclu.trainers.protocols`, the paper's defaults) and,
for semi (:mod:`jigclu.trainers.semi`), in which training images carry labels.

"Frozen" includes the BatchNorm statistics: the backbone stays in eval mode for the whole run
and runs under ``no_grad``, so linear evaluation scores the pretrained features exactly.

The data comes from memory (every worker reads the split) or, with ``data.loader=ray_data``, from
the run's stream plan (``jigclu.data.stream_runs``): each worker trains on its shard of the Ray
Data stream and scores its share of the scored split's row groups, one decoded chunk at a time,
so no worker ever holds a split's images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.distributed
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from jigclu import dist
from jigclu.config import RunConfig
from jigclu.context import RunContext
from jigclu.data import collate_uint8, load_dataset, make_loader
from jigclu.data.images import ImageDataset
from jigclu.data.stream import STREAM_NAME
from jigclu.data.stream_loader import StreamLoader, device_decoder, sample_chunks
from jigclu.data.stream_runs import scored_units
from jigclu.errors import ConfigError, DataError
from jigclu.pretrained import load_backbone_weights, load_into
from jigclu.jigsaw import step_seed
from jigclu.models import ResNetBackbone, build_backbone
from jigclu.preempt import ignore_in_loader_worker
from jigclu.trainers.classify_augment import build_augment
from jigclu.data.splits import seeded_subset, training_splits
from jigclu.evaluation.inputs import eval_images
from jigclu.trainers.loop import StepResult, Task, wrap_ddp
from jigclu.trainers.protocols import PROTOCOLS, protocol_key

_AUG_SALT = 17
_EVAL_BATCH = 256


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
# evaluation


Batches = Iterable[tuple[Tensor, Tensor]]  # uint8 images and labels: this worker's share of a split


def dataset_share(dataset: ImageDataset, num_workers: int = 0) -> Batches:
    """This worker's share of an in-memory split (every ``world``-th image), in batches."""
    mine = torch.arange(dist.rank(), len(dataset), dist.world_size())
    return DataLoader(dataset.subset(mine), batch_size=_EVAL_BATCH, shuffle=False, collate_fn=collate_uint8,
                      num_workers=num_workers, worker_init_fn=ignore_in_loader_worker if num_workers else None)


@torch.no_grad()
def evaluate(model: ClassifierModel, batches: Batches, size: int, device: torch.device,
             amp: str = "none") -> dict[str, float]:
    """Top-1/top-5 (%) and mean loss of a split; each worker scores its share (``batches``), then they sum.

    Images are resized whole to ``size`` (no centre crop: small images have no border to spare).
    The model's train/eval mode is restored afterwards. Every worker scores with rank 0's
    BatchNorm statistics (the checkpointed ones): after a DDP step each worker's own running
    statistics have moved with its own share of the batch.
    """
    modes = {m: m.training for m in model.modules()}  # a frozen backbone must stay in eval mode
    model.eval()
    world = dist.world_size()
    if world > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1, top-5, count
    k = min(5, model.classifier.out_features)
    for images, labels in batches:
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
            "val_top5": 100.0 * sums[2].item() / count, "val_images": int(sums[3].item())}


# ---------------------------------------------------------------------------------------------
# the task


@dataclass
class Datasets:
    """A run's data: its training images (a loader of per-worker batches) and its scored split."""
    num_train: int  # labeled training images, all workers together
    num_classes: int
    subset: Tensor | None  # training indices into the (limited) train split; None = all
    note: str
    loader: Any  # per-worker training batches, ``set_epoch``-able (the loop's ``sampler``)
    sampler: Any
    scored: Any  # () -> this worker's share of the scored split (:data:`Batches`)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"lr_backbone": ..., "lr_classifier": ...}`` as the optimizer holds them now."""
    return {f"lr_{g['name']}": float(g["lr"]) for g in optimizer.param_groups}


class ClassifyTask(Task):
    """Train and score a classifier with the protocol of :attr:`name` (linear, semi, finetune)."""

    nan_hint = "try a lower eval.lr / eval.classifier_lr"

    def select(self, cfg: RunConfig, train: ImageDataset, state: dict[str, Any] | None) -> tuple[Tensor | None, str]:
        """The labeled training subset (indices into the train split, or None for all of it)."""
        return None, f"{len(train)} labeled images"

    def load_splits(self, cfg: RunConfig, state: dict[str, Any] | None) -> Datasets:
        """In memory: the train split (``data.limit``, then :meth:`select`) and the scored split."""
        train, test = training_splits(cfg)  # scored: the validation split (data.val_size), else the test split
        if test is None:
            test = load_dataset(cfg.data.dataset, "test", image_size=cfg.data.image_size,
                                on_corrupt=cfg.data.on_corrupt)
        if cfg.eval.val_limit is not None and cfg.eval.val_limit < len(test):
            test = test.subset(seeded_subset(len(test), cfg.eval.val_limit, cfg.seed + 1))
        subset, note = self.select(cfg, train, state)
        train = train.subset(subset) if subset is not None else train
        world = dist.world_size()
        loader, sampler = make_loader(train, cfg.eval.batch_size // world, num_replicas=world, rank=dist.rank(),
                                      seed=cfg.seed, drop_last=False, num_workers=cfg.data.num_workers,
                                      pin_memory=self.device.type == "cuda")
        return Datasets(len(train), train.num_classes, subset, note, loader, sampler,
                        lambda: dataset_share(test, cfg.data.num_workers))

    def stream_splits(self, cfg: RunConfig, ctx: RunContext) -> Datasets:
        """Streamed (``data.loader=ray_data``): this worker's shard of the run's plan (a semi run's
        labeled rows only) and its share of the scored split's row groups."""
        shard, plan = ctx.dataset_shard(STREAM_NAME), ctx.stream_plan
        if shard is None:
            raise ConfigError("data.loader=ray_data needs a Ray Train run (scaling.workers >= 1)")
        world, rank = dist.world_size(), dist.rank()
        stream = StreamLoader(shard, cfg.eval.batch_size // world, seed=cfg.seed, rank=rank,
                              on_corrupt=cfg.data.on_corrupt, shuffle_buffer=cfg.data.shuffle_buffer,
                              agree=dist.all_agree, drop_last=False, decoder=device_decoder(cfg, plan, ctx.device))
        scored = scored_units(plan, self.name)  # the validation split (data.val_size), else the test split
        subset = None if plan.labeled is None else torch.tensor(plan.labeled, dtype=torch.long)
        rows = (plan.num_rows // world) * world  # Ray's equal split leaves the rest out
        note = (f"{rows} labeled images" if subset is None else f"{cfg.eval.labels} labels, class-balanced from the "
                f"rows' labels (label_seed {cfg.eval.label_seed}): {len(subset)} images")
        return Datasets(rows, plan.num_classes, subset, note, stream, stream,
                        lambda: _chunks(sample_chunks(plan, scored, cfg.eval.val_limit, cfg.seed + 1, (rank, world))))

    def setup(self, cfg: RunConfig, ctx: RunContext, state: dict[str, Any] | None) -> None:
        self.device = device = ctx.device
        world = dist.world_size()
        ev = cfg.eval
        if not (ev.batch_size and ev.epochs and ev.lr and ev.image_size and ev.gamma and ev.milestones is not None):
            raise ConfigError(f"{self.name}: eval.* is not resolved; start the run from jigclu.launch.prepare")
        self.cfg, proto = cfg, PROTOCOLS[protocol_key(self.name, cfg)]
        if ev.batch_size % world:
            raise ConfigError(f"eval.batch_size={ev.batch_size} is not divisible by {world} workers")
        self.data = data = self.stream_splits(cfg, ctx) if cfg.data.loader == "ray_data" else self.load_splits(cfg, state)
        self.loader, self.sampler = data.loader, data.sampler
        self.frozen = proto.frozen
        if data.num_train == 0:
            raise DataError(f"{cfg.data.dataset}: no training images to train on")
        self.epochs = ev.epochs
        self.steps_per_epoch = math.ceil(data.num_train / ev.batch_size)
        if cfg.train.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)

        self.model = ClassifierModel(cfg.model.arch, cfg.model.width, data.num_classes).to(device)
        if state is not None:
            self.model.load_state_dict(state["model"])
        elif ev.pretrained:
            load_into(self.model.backbone, load_backbone_weights(ev.pretrained))
            self.model.to(device)
        if self.frozen:
            freeze(self.model.backbone)
        groups = [{"params": list(self.model.classifier.parameters()), "lr": ev.classifier_lr or ev.lr,
                   "name": "classifier"}]
        if not self.frozen:
            groups.insert(0, {"params": list(self.model.backbone.parameters()), "lr": ev.lr, "name": "backbone"})
        self.optimizer = torch.optim.SGD(groups, lr=ev.lr, momentum=ev.momentum, weight_decay=ev.weight_decay or 0.0)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=ev.milestones or [],
                                                              gamma=ev.gamma)
        self.best = {"val_top1": None, "val_top5": None}
        if state is not None:
            self.best = {"val_top1": state.get("best_val_top1"), "val_top5": state.get("best_val_top5")}
        # DDP wraps only what trains: the head alone when the backbone is frozen
        self.trained = wrap_ddp(self.model.classifier if self.frozen else self.model, device)
        self.augment = build_augment(proto.augment, ev.image_size, ev.crop_scale).to(device)

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        super().start_epoch(epoch, skip)
        if not self.frozen:
            self.model.train()
        self.lrs = group_lrs(self.optimizer)  # the rates this epoch trains with

    def step(self, batch: Any, epoch: int, step: int) -> StepResult | None:
        images, labels = (t.to(self.device, non_blocking=True) for t in batch[:2])  # a stream's batch has keys too
        if not self.frozen and images.shape[0] < 2:
            return None  # BatchNorm cannot train on one image; every rank skips alike (padded shards)
        seed = step_seed(self.cfg.seed, epoch, step, _AUG_SALT + dist.rank())
        x = self.augment(images, torch.Generator(device=self.device).manual_seed(seed))
        amp = self.cfg.train.amp == "bf16"
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            if self.frozen:  # features from the frozen backbone: no graph, eval-mode BN
                with torch.no_grad():
                    x = self.model.backbone(x).float()
            logits = self.trained(x).float()
        loss = F.cross_entropy(logits, labels)
        stats = {"loss": loss.detach().double() * labels.numel(), "hits": (logits.argmax(1) == labels).sum().double(),
                 "count": torch.tensor(float(labels.numel()), dtype=torch.float64, device=self.device)}
        return loss, stats, labels.numel() * dist.world_size()

    def end_epoch(self, epoch: int, sums: dict[str, Any], seconds: float) -> dict[str, Any]:
        self.scheduler.step()
        world = dist.world_size()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        totals = dist.all_reduce_mean(torch.stack([torch.as_tensor(sums.get(k, zero), device=self.device)
                                                   for k in ("loss", "hits", "count")])) * world
        count = max(totals[2].item(), 1.0)
        lrs = self.lrs
        metrics: dict[str, Any] = {
            "train_loss": totals[0].item() / count, "train_top1": 100.0 * totals[1].item() / count,
            "lr": lrs["lr_classifier"] if self.frozen else lrs["lr_backbone"], **lrs,
            "images_per_s": totals[2].item() / max(seconds, 1e-9), "train_images": self.data.num_train,
        }
        metrics.update(evaluate(self.model, self.data.scored(), self.cfg.eval.image_size, self.device,
                                self.cfg.train.amp))
        for key in self.best:
            self.best[key] = max(self.best[key] if self.best[key] is not None else -1.0, metrics[key])
        metrics.update(best_val_top1=self.best["val_top1"], best_val_top5=self.best["val_top5"])
        return metrics

    def extra_state(self) -> dict[str, Any]:
        return {"best_val_top1": self.best["val_top1"], "best_val_top5": self.best["val_top5"],
                "labels_subset": self.data.subset, "num_classes": self.data.num_classes}

    def summary(self) -> dict[str, Any]:
        return {"best_val_top1": self.best["val_top1"], "resolved": self.cfg.eval.model_dump(mode="json")}

    @classmethod
    def epoch_line(cls, m: dict[str, Any], cfg: RunConfig) -> str:
        return (f"{cls.name} epoch {m['epoch'] + 1}/{cfg.eval.epochs or 100}  loss {m['train_loss']:.3f}  train top-1 "
                f"{m['train_top1']:.1f}%  val top-1 [bold]{m['val_top1']:.2f}%[/] top-5 {m['val_top5']:.1f}%  "
                f"(best {m['best_val_top1']:.2f}%)  lr {m['lr']:.3g}  {m['images_per_s']:,.0f} img/s")


class LinearTask(ClassifyTask):
    """Linear evaluation (supplementary section 3.1): a frozen backbone, BatchNorm statistics included, and a
    fresh linear classifier (N(0, 0.01) weights, zero bias) on its pooled features, at ``eval.image_size``,
    else ``jigsaw.crop_size`` (the montage size the backbone saw while pretraining)."""

    name = "linear"


class FinetuneTask(ClassifyTask):
    """CIFAR-style small-image training (supplementary section 3.3), ``eval.protocol`` finetune (the whole
    network) or linear (frozen backbone), pad-4 crops at the dataset's own size; the backbone's strides are
    unchanged, so 32 px images want ``model.arch: resnet18_small`` as in pretraining."""

    name = "finetune"


def _chunks(chunks: Iterator[tuple[Tensor, Tensor]]) -> Batches:
    """Decoded chunks of a stream plan's rows in batches of at most ``_EVAL_BATCH``."""
    for images, labels in chunks:
        for start in range(0, len(labels), _EVAL_BATCH):
            yield images[start:start + _EVAL_BATCH], labels[start:start + _EVAL_BATCH]


__all__ = ["ClassifierModel", "ClassifyTask", "Datasets", "LinearTask", "FinetuneTask", "dataset_share", "evaluate",
           "freeze", "group_lrs"]
