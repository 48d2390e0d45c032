"""JigClu and SimCLR trained for the same wall-clock budget, by one loop (the quality benchmark's engine).

Both methods share everything but the pretext task: the backbone (``jigclu.models``), the batched
on-device augmentation (:class:`~jigclu.augment.PatchAugment`, the MoCo v2 recipe), SGD with
momentum and a cosine schedule, and the data order. The schedule runs on *elapsed training time*
(warm-up, then cosine to 0 at the budget), so a run ends with a decayed lr whatever its speed.
Snapshots of the backbone are kept at the budget points (e.g. 5/10/20/30 min) and scored after
training, so evaluation time never eats into the budget.

* JigClu step: exactly the trainer's (``make_montages`` + ``jigclu_losses``, local montages).
* SimCLR step (Chen et al., ICML 2020): two views of each whole image through the same
  ``PatchAugment`` (box = the whole image, out size = the montage side), the same MLP head as
  JigClu's clustering head, NT-Xent over the 2N views (``jigclu.losses.nt_xent``).
* supervised reference: one view per image, a linear classifier, cross-entropy on the labels.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from jigclu.config import RunConfig
from jigclu.jigsaw import step_seed
from jigclu.losses import JigCluLoss, nt_xent
from jigclu.models import ClusteringHead, ResNetBackbone
from jigclu.trainers.pretrain import build_augment, build_model, jigclu_losses, make_montages


class JigCluMethod(nn.Module):
    """One JigClu training step on a uint8 batch (the pretraining trainer's step, local montages)."""

    name = "JigClu"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg)
        self.augment = build_augment(cfg)
        self.criterion = JigCluLoss(cfg.loss.w_clu, cfg.loss.w_loc, cfg.loss.temperature)

    @property
    def backbone(self) -> ResNetBackbone:
        return self.model.backbone

    def loss(self, images: Tensor, seed: int, labels: Tensor | None = None) -> Tensor:
        cfg = self.cfg
        montages, perm, total = make_montages(images, self.augment, cfg.model.grid, cfg.jigsaw.cross_ratio, seed, "local")
        return jigclu_losses(self.model, self.criterion, montages, perm, total)["loss"]


class SimCLRMethod(nn.Module):
    """One SimCLR step: two augmented views of each image, NT-Xent at ``temperature`` (not JigClu's
    ``loss.temperature``: SupClu and NT-Xent are tuned apart)."""

    name = "SimCLR"

    def __init__(self, cfg: RunConfig, temperature: float = 0.2) -> None:
        super().__init__()
        self.cfg, self.temperature = cfg, temperature
        self.model = nn.Module()
        self.model.backbone = ResNetBackbone(cfg.model.arch, cfg.model.width)  # type: ignore[arg-type]
        self.model.head = ClusteringHead(self.model.backbone.feature_dim, cfg.model.proj_dim)
        self.augment = build_augment(cfg, cfg.jigsaw.crop_size)

    @property
    def backbone(self) -> ResNetBackbone:
        return self.model.backbone  # type: ignore[return-value]

    def loss(self, images: Tensor, seed: int, labels: Tensor | None = None) -> Tensor:
        n, _, h, w = images.shape
        src = torch.arange(n).repeat(2)
        boxes = torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(2 * n, 4)
        views = self.augment(images, src, boxes, torch.Generator().manual_seed(seed))
        z = self.model.head(self.model.backbone(views))
        return nt_xent(z, self.temperature)


class SupervisedMethod(nn.Module):
    """The supervised reference: the same backbone and a linear classifier, cross-entropy on the
    labels, one view per image through the same augmentation (box = the whole image)."""

    name = "supervised"

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.backbone = ResNetBackbone(cfg.model.arch, cfg.model.width)  # type: ignore[arg-type]
        self.model.fc = nn.Linear(self.model.backbone.feature_dim, num_classes)
        self.augment = build_augment(cfg, cfg.jigsaw.crop_size)

    @property
    def backbone(self) -> ResNetBackbone:
        return self.model.backbone  # type: ignore[return-value]

    def loss(self, images: Tensor, seed: int, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise ValueError("the supervised reference needs labels")
        n, _, h, w = images.shape
        boxes = torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(n, 4)
        views = self.augment(images, torch.arange(n), boxes, torch.Generator().manual_seed(seed))
        return F.cross_entropy(self.model.fc(self.model.backbone(views)), labels)


@dataclass
class BudgetRun:
    """What :func:`train_for_budget` returns: backbone snapshots at the budget points and a log."""

    snapshots: dict[float, dict[str, Tensor]] = field(default_factory=dict)  # minutes -> backbone state
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    losses: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, loss), every few steps


def time_lr(elapsed: float, budget: float, warmup: float) -> float:
    """lr multiplier at ``elapsed`` seconds of a ``budget``: linear warm-up, then cosine to 0."""
    if warmup and elapsed < warmup:
        return max(elapsed / warmup, 0.01)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (elapsed - warmup) / max(budget - warmup, 1e-9))))


def train_for_budget(method: nn.Module, images: Tensor, points_min: list[float], *, batch_size: int, lr: float,
                     weight_decay: float, seed: int, warmup_frac: float = 0.05,
                     labels: Tensor | None = None,
                     progress: Callable[[float, float], None] | None = None) -> BudgetRun:
    """Train ``method`` on uint8 ``images`` until the last budget point (minutes of wall clock,
    training only); keep a copy of the backbone at each point. lr is per 256 images."""
    torch.manual_seed(seed)
    budget = 60.0 * max(points_min)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr * batch_size / 256,
                          momentum=0.9, weight_decay=weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(seed)
    run, pending = BudgetRun(), sorted(points_min)
    method.train()
    elapsed, order, pos = 0.0, torch.randperm(len(images), generator=gen), 0
    start = time.perf_counter()
    while pending:
        if pos + batch_size > len(order):  # a new epoch: a new order
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * time_lr(elapsed, budget, warmup_frac * budget)
        loss = method.loss(images[idx], step_seed(seed, 0, run.steps), None if labels is None else labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.steps += 1
        run.images += batch_size
        elapsed = time.perf_counter() - start
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{method.name}: loss {value} at step {run.steps}")
        if run.steps % 20 == 0:
            run.losses.append((elapsed, value))
            if progress:
                progress(elapsed, budget)
        while pending and elapsed >= 60.0 * pending[0]:
            run.snapshots[pending.pop(0)] = copy.deepcopy(method.backbone.state_dict())
    run.seconds = elapsed
    return run


__all__ = ["JigCluMethod", "SimCLRMethod", "SupervisedMethod", "train_for_budget", "time_lr", "BudgetRun"]

