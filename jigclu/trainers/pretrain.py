"""JigClu pretraining: one loop that runs in a plain process or as a Ray Train worker.

Per step (SPEC.md section 1): split -> per-patch augment (batched, on the training device)
-> one shared permutation -> stitch -> backbone -> decouple -> heads -> ``w_clu * SupClu +
w_loc * CE``. With several workers and ``jigsaw.montage_scope: global`` the patches of all
workers are gathered, every worker derives the same permutation from the step seed, stitches
its slice of the montages, and the per-patch features are all-gathered with gradient, so each
worker's loss sees the whole global batch.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from jigclu import dist
from jigclu.augment import PatchAugment
from jigclu.config import RunConfig
from jigclu.context import LocalContext
from jigclu.data import ShardSampler, collate_uint8, load_dataset
from jigclu.errors import ConfigError, DataError, TrainingError
from jigclu.jigsaw import jigsaw_labels, patch_layout, random_permutation, step_seed, stitch
from jigclu.losses import JigCluLoss
from jigclu.models import JigCluModel
from jigclu.progress import TrainProgress
from jigclu.trainers.common import SubsetDataset, cosine_lambda, seed_everything
from jigclu.trainers.knn import KnnMonitor

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


def _unwrap(model: torch.nn.Module) -> JigCluModel:
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]


def build_model(cfg: RunConfig) -> JigCluModel:
    return JigCluModel(cfg.model.arch, cfg.model.width, cfg.model.grid, cfg.model.proj_dim)


def _check_resume_compatible(state: dict[str, Any], cfg: RunConfig) -> None:
    saved = state.get("config", {})
    for section in ("model", "jigsaw"):
        before, now = saved.get(section), cfg.model_dump(mode="json")[section]
        if before is not None and before != now:
            diff = [k for k in now if before.get(k) != now[k]]
            raise ConfigError(f"cannot resume: {section}.{diff[0]} differs from the checkpoint "
                              f"({before.get(diff[0])!r} there, {now[diff[0]]!r} now)")


def run_pretrain(cfg: RunConfig, ctx: LocalContext) -> dict[str, Any]:
    """Pretrain with JigClu; returns a summary (last metrics, best kNN, epochs run)."""
    seed_everything(cfg.seed)
    device = ctx.device
    world, rank = dist.world_size(), dist.rank()
    global_batch = cfg.data.batch_size
    # The global batch is fixed whatever the world size (elastic runs keep their lr); when it
    # does not divide evenly each worker takes the floor and a few images per step are left out.
    local_batch = global_batch // world
    if local_batch < 2:
        raise ConfigError(f"data.batch_size={global_batch} leaves fewer than 2 images per worker "
                          f"on {world} workers")

    train_ds = load_dataset(cfg.data.dataset, "train", image_size=cfg.data.image_size,
                            on_corrupt=cfg.data.on_corrupt)
    if cfg.data.limit is not None and cfg.data.limit < len(train_ds):
        train_ds = _limit(train_ds, cfg.data.limit)
    steps_per_epoch = len(train_ds) // global_batch
    if steps_per_epoch == 0:
        raise DataError(f"{cfg.data.dataset} has {len(train_ds)} training images, fewer than "
                        f"data.batch_size={global_batch}")
    if cfg.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)
    sampler = ShardSampler(len(train_ds), num_replicas=world, rank=rank, seed=cfg.seed)
    loader = DataLoader(train_ds, batch_size=local_batch, sampler=sampler, collate_fn=collate_uint8,
                        num_workers=cfg.data.num_workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0)

    monitor = None
    if cfg.monitor.knn and rank == 0:
        test_ds = load_dataset(cfg.data.dataset, "test", image_size=cfg.data.image_size,
                               on_corrupt=cfg.data.on_corrupt)
        monitor = KnnMonitor.from_datasets(train_ds, test_ds, cfg.jigsaw.crop_size, cfg.monitor.k,
                                           cfg.monitor.knn_temperature, cfg.monitor.train_limit,
                                           cfg.monitor.test_limit, seed=cfg.seed)

    model: torch.nn.Module = build_model(cfg).to(device)
    _unwrap(model).gather_features = cfg.jigsaw.montage_scope == "global"
    augment = PatchAugment(cfg.patch_size, enabled=cfg.jigsaw.augment).to(device)
    criterion = JigCluLoss(cfg.loss.w_clu, cfg.loss.w_loc, cfg.loss.temperature)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.effective_lr(), momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(total_steps, warmup))

    start_epoch, global_step, best_knn = 0, 0, None
    state = ctx.load_state()
    if state is not None:
        _check_resume_compatible(state, cfg)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        best_knn = state.get("best_knn")
    if dist.is_distributed():
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    summary: dict[str, Any] = {"epochs_run": 0, "start_epoch": start_epoch}
    last: dict[str, Any] = {}
    with TrainProgress(total_steps, "pretrain", enabled=ctx.progress and ctx.is_main,
                       completed=start_epoch * steps_per_epoch) as bar:
        for epoch in range(start_epoch, cfg.train.epochs):
            sampler.set_epoch(epoch)
            model.train()
            sums = {"loss": 0.0, "loss_clu": 0.0, "loss_loc": 0.0, "loc_acc": 0.0}
            t0 = time.perf_counter()
            for step, (images, _labels) in zip(range(steps_per_epoch), loader):
                images = images.to(device, non_blocking=True)
                seed = step_seed(cfg.seed, epoch, step)
                montages, perm, total = make_montages(images, augment, cfg.model.grid,
                                                      cfg.jigsaw.cross_ratio, seed, cfg.jigsaw.montage_scope)
                out = jigclu_losses(model, criterion, montages, perm, total, cfg.train.amp)
                if not torch.isfinite(out["loss"]):
                    raise TrainingError(f"loss became {out['loss'].item()} at epoch {epoch} step {step}; "
                                        f"try a lower optim.lr or a higher loss.temperature "
                                        f"(no checkpoint written for this epoch)")
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()
                scheduler.step()
                global_step += 1
                for key in sums:
                    sums[key] += out[key].item()
                bar.advance(images=global_batch, description=f"pretrain {epoch + 1}/{cfg.train.epochs}",
                            loss=out["loss"].item())
            elapsed = time.perf_counter() - t0
            metrics: dict[str, Any] = {k: v / steps_per_epoch for k, v in sums.items()}
            metrics["loc_acc"] *= 100.0
            metrics.update(epoch=epoch, step=global_step, lr=scheduler.get_last_lr()[0],
                           images_per_s=steps_per_epoch * global_batch / elapsed, epoch_time_s=elapsed,
                           world_size=world, time=time.time())
            if monitor is not None and ((epoch + 1) % cfg.monitor.every == 0 or epoch + 1 == cfg.train.epochs):
                metrics.update(monitor.evaluate(_unwrap(model).backbone, device))
                best_knn = max(best_knn or 0.0, metrics["knn_top1"])
            if best_knn is not None:
                metrics["best_knn_top1"] = best_knn
            bar.log(_epoch_line(metrics, cfg.train.epochs))
            ckpt = {
                "task": "pretrain", "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "global_step": global_step, "best_knn": best_knn,
                "config": cfg.model_dump(mode="json"), "world_size": world,
            }
            ctx.report(metrics, ckpt)
            summary["epochs_run"] += 1
            last = metrics
    summary.update(last=last, best_knn_top1=best_knn)
    return summary


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    knn = f"  knn top-1 [bold]{m['knn_top1']:.1f}%[/]" if "knn_top1" in m else ""
    return (f"epoch {m['epoch'] + 1}/{epochs}  loss {m['loss']:.3f} (clu {m['loss_clu']:.3f}, "
            f"loc {m['loss_loc']:.3f})  loc acc {m['loc_acc']:.1f}%{knn}  {m['images_per_s']:,.0f} img/s")


def _limit(ds, limit: int):
    """The first ``limit`` images of ``ds`` as a dataset with the same attributes."""
    return SubsetDataset(ds, torch.arange(limit))


__all__ = ["run_pretrain", "make_montages", "jigclu_losses", "build_model"]
