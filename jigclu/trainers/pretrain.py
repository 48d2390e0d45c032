"""Pretraining: one loop that runs in a plain process or as a Ray Train worker, for any method.

The step is the method's (``jigclu/methods/``: JigClu by default, SimCLR as ``method: simclr``);
this task owns what every method shares: the data (in memory or streamed), SGD with a per-step
cosine schedule, the global batch fixed whatever the world size, the kNN monitor on the main
worker, collapse detection, and the epoch's metrics.
"""

from __future__ import annotations

from typing import Any

import torch

from jigclu import dist
from jigclu.config import RunConfig
from jigclu.context import RunContext
from jigclu.data import make_loader
from jigclu.data.stream import STREAM_NAME
from jigclu.data.stream_loader import StreamLoader, device_decoder, read_sample
from jigclu.errors import ConfigError, DataError
from jigclu.jigsaw import step_seed
from jigclu.methods import METHODS, Method, build_method
from jigclu.data.splits import training_splits
from jigclu.trainers.common import TimeCosine, cosine_lambda
from jigclu.evaluation.knn import CollapseRule, KnnMonitor, held_out_monitor
from jigclu.trainers.loop import StepResult, Task, wrap_ddp

class PretrainTask(Task):
    """Pretraining with ``cfg.method``: per-step cosine schedule, kNN monitor on the main worker."""

    name = "pretrain"
    resume_keys = ("method", "model", "jigsaw")
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

        self.method: Method = build_method(cfg).to(self.device)
        self.model = self.method.model  # what the checkpoint holds: backbone + the method's heads
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.effective_lr(),
                                         momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        self.epoch_s = cfg.train.epoch_s
        if self.epoch_s is not None:  # a fixed wall-clock budget: the schedule runs on training time
            self.clock = TimeCosine(min(cfg.optim.warmup_epochs / self.epochs, 1.0))
            schedule = self.clock
        else:
            total_steps = self.steps_per_epoch * self.epochs
            schedule = cosine_lambda(total_steps, int(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.best_knn, self.init_scores = None, {}
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.best_knn, self.init_scores = state.get("best_knn"), state.get("init_scores") or {}
        elif self.monitor is not None:  # the random-init baseline of this very model, on the same split
            scores = self.monitor.evaluate(self.model.backbone, self.device)
            self.init_scores = {f"init_{k}": scores[k] for k in ("knn_top1", "probe_top1") if k in scores}
        self.trained = wrap_ddp(self.method, self.device)

    def _setup_stream(self, cfg: RunConfig, ctx: RunContext, local_batch: int) -> tuple[int, int]:
        """``data.loader=ray_data``: this worker's shard of the Ray Data stream, and a monitor on a
        bounded, seeded sample; returns (classes, training rows per global epoch)."""
        shard = ctx.dataset_shard(STREAM_NAME)
        if shard is None:
            raise ConfigError("data.loader=ray_data needs a Ray Train run (scaling.workers >= 1)")
        plan = ctx.stream_plan  # the driver's: no worker reads the source's footers
        self.stream = StreamLoader(shard, local_batch, seed=cfg.seed, rank=dist.rank(), on_corrupt=cfg.data.on_corrupt,
                                   shuffle_buffer=cfg.data.shuffle_buffer, agree=dist.all_agree,
                                   decoder=device_decoder(cfg, plan, self.device))
        self.loader = self.sampler = self.stream
        self.monitor = None
        queries, split = (plan.val_units, "val") if plan.val_units else (plan.test_units, "test")
        if cfg.monitor.knn and dist.rank() == 0 and plan.num_classes >= 2 and queries:
            mon, seed = cfg.monitor, cfg.data.val_seed
            self.monitor = KnnMonitor.from_datasets(
                read_sample(plan, plan.units, mon.train_limit, seed, "train"),
                read_sample(plan, queries, mon.test_limit, seed + 1, split), cfg.monitor_size, mon.k,
                mon.knn_temperature, None, None, seed=seed, probe=mon.probe, split=split)
        world = dist.world_size()
        return plan.num_classes, (plan.num_rows // world) * world  # Ray's equal split leaves the rest out

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        super().start_epoch(epoch, skip)
        self.epoch = epoch
        self.trained.train()

    def step(self, batch: Any, epoch: int, step: int) -> StepResult:
        images = batch[0].to(self.device, non_blocking=True)
        out = self.trained(images, step_seed(self.cfg.seed, epoch, step))
        stats = {key: out[key].item() for key in ("loss", *self.method.stats)}
        stats["steps"] = 1
        return out["loss"], stats, self.global_batch

    def after_step(self, elapsed: float) -> None:
        if self.epoch_s is not None:
            self.clock.progress = (self.epoch + min(elapsed / self.epoch_s, 1.0)) / self.epochs
        self.scheduler.step()

    def end_epoch(self, epoch: int, sums: dict[str, Any], seconds: float) -> dict[str, Any]:
        steps = max(sums.get("steps", 0), 1)  # a stream may end a step or two early (corrupt images)
        metrics: dict[str, Any] = {k: sums.get(k, 0.0) / steps for k in ("loss", *self.method.stats)}
        metrics.update({k: 100.0 * metrics[k] for k in self.method.percent})
        metrics.update(lr=self.scheduler.get_last_lr()[0], loss_temperature=self.method.temperature,
                       images_per_s=steps * self.global_batch / max(seconds, 1e-9),
                       epoch_images=steps * self.global_batch)
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
        return (f"epoch {m['epoch'] + 1}/{cfg.train.epochs}  {METHODS[cfg.method].line(m)}{knn}  "
                f"{m['images_per_s']:,.0f} img/s")


__all__ = ["PretrainTask"]
