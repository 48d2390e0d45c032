"""JigClu pretraining: one loop that runs in a plain process or as a Ray Train worker.

Per step (Chen, Liu and Jia, CVPR 2021, section 3; the README's "The method in one step"):
split -> per-patch augment (batched, on the training device) -> one shared permutation -> stitch -> backbone -> decouple -> heads -> ``w_clu * SupClu +
w_loc * CE``. With several workers and ``jigsaw.montage_scope: global`` the patches of all
workers are gathered, every worker derives the same permutation from the step seed, stitches
its slice of the montages, and the per-patch features are all-gathered with gradient, so each
worker's loss sees the whole global batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from jigclu import dist
from jigclu.augment import PatchAugment
from jigclu.config import RunConfig
from jigclu.context import RunContext
from jigclu.data import make_loader
from jigclu.data.stream import STREAM_NAME
from jigclu.data.stream_loader import StreamLoader, read_sample
from jigclu.errors import ConfigError, DataError
from jigclu.jigsaw import jigsaw_labels, patch_layout, random_permutation, step_seed, stitch
from jigclu.losses import JigCluLoss
from jigclu.models import JigCluModel
from jigclu.trainers.common import cosine_lambda, training_splits
from jigclu.trainers.knn import CollapseRule, KnnMonitor, held_out_monitor
from jigclu.trainers.loop import StepResult, Task, run, wrap_ddp

_PATCH_SALT, _PERM_SALT = 1, 2


def make_montages(images: Tensor, augment: PatchAugment, grid: int, cross_ratio: float,
                  seed: int, scope: str = "global") -> tuple[Tensor, Tensor, int]:
    """Jigsaw one batch: uint8 images ``[n, C, H, W]`` -> (montages, permutation, global n).

    ``seed`` is the step seed: patches are augmented with ``seed + rank`` (each worker its own
    images) and the permutation is drawn from ``seed`` alone, so every worker draws the same
    one. Returns this worker's montages ``[n, 3, m*s, m*s]``, the permutation over all
    ``m*m*N`` patches of the scope, and ``N`` (the number of images the permutation spans).
    """
    x = images  # uint8 or float; PatchAugment converts only the pixels it samples
    n, _, height, width = x.shape
    cells = grid * grid
    src, boxes = patch_layout(n, height, width, grid, cross_ratio, x.device)
    gen = torch.Generator(device=x.device).manual_seed(step_seed(seed, 0, dist.rank(), _PATCH_SALT))
    patches = augment(x, src, boxes, gen)  # [cells * n, 3, s, s], position-major
    if scope == "global" and dist.is_distributed():
        world, rank = dist.world_size(), dist.rank()
        everyone = dist.gather(patches)  # rank-major: [world, cells, n, ...]
        everyone = everyone.view(world, cells, n, *patches.shape[1:]).transpose(0, 1)
        everyone = everyone.reshape(cells * world * n, *patches.shape[1:])
        total = world * n
        perm = random_permutation(cells * total, step_seed(seed, 0, 0, _PERM_SALT), x.device)
        # only the slots of this worker's montages: slot = cell * total + montage
        mine = perm.view(cells, total)[:, rank * n:(rank + 1) * n].reshape(-1)
        return stitch(everyone[mine], grid), perm, total
    perm = random_permutation(cells * n, step_seed(seed, 0, dist.rank(), _PERM_SALT), x.device)
    return stitch(patches[perm], grid), perm, n


def jigclu_losses(model: torch.nn.Module, criterion: JigCluLoss, montages: Tensor, perm: Tensor,
                  total: int, amp: str = "none") -> dict[str, Tensor]:
    """Forward the montages and compute both losses (labels ``perm % N`` and ``perm // N``)."""
    label_clu, label_loc = jigsaw_labels(perm, total)
    with torch.autocast(montages.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        embeddings, loc_logits = model(montages)
    return criterion(embeddings.float(), loc_logits.float(), label_clu, label_loc)


def build_model(cfg: RunConfig) -> JigCluModel:
    return JigCluModel(cfg.model.arch, cfg.model.width, cfg.model.grid, cfg.model.proj_dim)


def build_augment(cfg: RunConfig, out_size: int | None = None) -> PatchAugment:
    """The per-patch augmentation of ``cfg`` (the paper's recipe with ``jigsaw.crop_scale`` and
    ``jigsaw.blur_p``), producing ``out_size`` px patches (default: the patch size)."""
    return PatchAugment(out_size or cfg.patch_size, enabled=cfg.jigsaw.augment,
                        scale=(cfg.jigsaw.crop_scale, 1.0), blur_p=cfg.jigsaw.blur_p)


class PretrainTask(Task):
    """JigClu pretraining: per-step cosine schedule, kNN monitor on the main worker."""

    name = "pretrain"
    resume_keys = ("model", "jigsaw")
    nan_hint = "try a lower optim.lr or a higher loss.temperature"

    def setup(self, cfg: RunConfig, ctx: RunContext, state: dict[str, Any] | None) -> None:
        self.cfg, self.device = cfg, ctx.device
        world, rank = dist.world_size(), dist.rank()
        self.global_batch = cfg.data.batch_size
        # The global batch is fixed whatever the world size (elastic runs keep their lr); when it
        # does not divide evenly each worker takes the floor and a few images per step are left out.
        local_batch = self.global_batch // world
        if local_batch < 2:
            raise ConfigError(f"data.batch_size={self.global_batch} leaves fewer than 2 images per worker "
                              f"on {world} workers")
        self.stream = None
        if cfg.data.loader == "ray_data":
            num_classes, train_rows = self._setup_stream(cfg, ctx, local_batch)
        else:
            train_ds, val_ds = training_splits(cfg)
            num_classes, train_rows = train_ds.num_classes, len(train_ds)
            self.loader, self.sampler = make_loader(train_ds, local_batch, num_replicas=world, rank=rank,
                                                    seed=cfg.seed, num_workers=cfg.data.num_workers,
                                                    pin_memory=self.device.type == "cuda")
            self.monitor = None
            if cfg.monitor.knn and rank == 0 and num_classes >= 2:  # one class: no labels to score
                self.monitor = held_out_monitor(cfg, train_ds, val_ds)
        self.steps_per_epoch = train_rows // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"{cfg.data.dataset} has {train_rows} training images, fewer than "
                            f"data.batch_size={self.global_batch}")
        if cfg.train.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)
        self.epochs = cfg.train.epochs
        self.collapse = CollapseRule(cfg.monitor.collapse_std, cfg.monitor.collapse_patience, num_classes, state)

        self.model = build_model(cfg).to(self.device)
        self.model.gather_features = cfg.jigsaw.montage_scope == "global"
        self.augment = build_augment(cfg).to(self.device)
        self.criterion = JigCluLoss(cfg.loss.w_clu, cfg.loss.w_loc, cfg.loss.temperature)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.effective_lr(),
                                         momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        total_steps = self.steps_per_epoch * self.epochs
        warmup = int(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_lambda(total_steps, warmup))
        self.best_knn, self.init_scores = None, {}
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.best_knn, self.init_scores = state.get("best_knn"), state.get("init_scores") or {}
        elif self.monitor is not None:  # the random-init baseline of this very model, on the same split
            scores = self.monitor.evaluate(self.model.backbone, self.device)
            self.init_scores = {f"init_{k}": scores[k] for k in ("knn_top1", "probe_top1") if k in scores}
        self.trained = wrap_ddp(self.model, self.device)

    def _setup_stream(self, cfg: RunConfig, ctx: RunContext, local_batch: int) -> tuple[int, int]:
        """``data.loader=ray_data``: this worker's shard of the Ray Data stream, and a monitor on a
        bounded, seeded sample; returns (classes, training rows per global epoch)."""
        shard = ctx.dataset_shard(STREAM_NAME)
        if shard is None:
            raise ConfigError("data.loader=ray_data needs a Ray Train run (scaling.workers >= 1)")
        plan = ctx.stream_plan  # the driver's: no worker reads the source's footers
        self.stream = StreamLoader(shard, local_batch, seed=cfg.seed, rank=dist.rank(), on_corrupt=cfg.data.on_corrupt,
                                   shuffle_buffer=cfg.data.shuffle_buffer, agree=dist.all_agree)
        self.loader = self.sampler = self.stream
        self.monitor = None
        queries, split = (plan.val_units, "val") if plan.val_units else (plan.test_units, "test")
        if cfg.monitor.knn and dist.rank() == 0 and plan.num_classes >= 2 and queries:
            mon, seed = cfg.monitor, cfg.data.val_seed
            self.monitor = KnnMonitor.from_datasets(
                read_sample(plan, plan.units, mon.train_limit, seed, "train"),
                read_sample(plan, queries, mon.test_limit, seed + 1, split), cfg.jigsaw.crop_size, mon.k,
                mon.knn_temperature, None, None, seed=seed, probe=mon.probe, split=split)
        world = dist.world_size()
        return plan.num_classes, (plan.num_rows // world) * world  # Ray's equal split leaves the rest out

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        super().start_epoch(epoch, skip)
        self.trained.train()

    def step(self, batch: Any, epoch: int, step: int) -> StepResult:
        images = batch[0].to(self.device, non_blocking=True)
        cfg = self.cfg
        montages, perm, total = make_montages(images, self.augment, cfg.model.grid, cfg.jigsaw.cross_ratio,
                                              step_seed(cfg.seed, epoch, step), cfg.jigsaw.montage_scope)
        out = jigclu_losses(self.trained, self.criterion, montages, perm, total, cfg.train.amp)
        stats = {key: out[key].item() for key in ("loss", "loss_clu", "loss_loc", "loc_acc")}
        stats["steps"] = 1
        return out["loss"], stats, self.global_batch

    def after_step(self) -> None:
        self.scheduler.step()

    def end_epoch(self, epoch: int, sums: dict[str, Any], seconds: float) -> dict[str, Any]:
        steps = max(sums.get("steps", 0), 1)  # a stream may end a step or two early (corrupt images)
        metrics: dict[str, Any] = {k: sums.get(k, 0.0) / steps for k in ("loss", "loss_clu", "loss_loc", "loc_acc")}
        metrics["loc_acc"] *= 100.0
        metrics.update(lr=self.scheduler.get_last_lr()[0], loss_temperature=self.criterion.clu.temperature,
                       images_per_s=steps * self.global_batch / max(seconds, 1e-9))
        if self.stream is not None:  # every worker: what the stream delivered this epoch, all workers together
            seen, corrupt = dist.all_reduce_sum([self.stream.rows, self.stream.corrupt])
            metrics.update(images_seen=int(seen), corrupt_skipped=int(corrupt))
        every = self.cfg.monitor.every
        if self.monitor is not None and ((epoch + 1) % every == 0 or epoch + 1 == self.epochs):
            metrics.update(self.monitor.evaluate(self.model.backbone, self.device), knn_split=self.monitor.split)
            self.best_knn = max(self.best_knn or 0.0, metrics["knn_top1"])
            metrics.update(self.collapse.check(metrics))
        if self.best_knn is not None:
            metrics["best_knn_top1"] = self.best_knn
        metrics.update(self.init_scores)
        return metrics

    def extra_state(self) -> dict[str, Any]:
        return {"best_knn": self.best_knn, "init_scores": self.init_scores, "chance_streak": self.collapse.streak}

    def summary(self) -> dict[str, Any]:
        return {"best_knn_top1": self.best_knn}

    @classmethod
    def epoch_line(cls, m: dict[str, Any], cfg: RunConfig) -> str:
        knn = f"  knn top-1 [bold]{m['knn_top1']:.1f}%[/]" if m.get("knn_top1") is not None else ""
        return (f"epoch {m['epoch'] + 1}/{cfg.train.epochs}  loss {m['loss']:.3f} (clu {m['loss_clu']:.3f}, "
                f"loc {m['loss_loc']:.3f})  loc acc {m['loc_acc']:.1f}%{knn}  {m['images_per_s']:,.0f} img/s")


def run_pretrain(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Pretrain with JigClu; returns a summary (last metrics, best kNN, epochs run)."""
    return run(PretrainTask(), cfg, ctx)


__all__ = ["PretrainTask", "run_pretrain", "make_montages", "jigclu_losses", "build_model", "build_augment"]
