"""JigClu and SimCLR trained for the same wall-clock budget, by one loop (the quality benchmark's engine).

Both methods share everything but the pretext task: the backbone (``jigclu.models``), the batched
on-device augmentation (:class:`~jigclu.augment.PatchAugment`, the MoCo v2 recipe), SGD with
momentum and a cosine schedule, and the data order. The schedule runs on *elapsed training time*
(warm-up, then cosine to 0 at the budget), so a run ends with a decayed lr whatever its speed.
Snapshots of the backbone are kept at the budget points (e.g. 5/10/20/30 min) and scored after
training, so evaluation time never eats into the budget.

* JigClu and SimCLR: the library's methods (``jigclu.methods``, ``method: jigclu|simclr``), exactly
  the pretraining trainer's steps; SimCLR takes two views of each whole image through the same
  ``PatchAugment`` (out size = the montage side) and NT-Xent at its own ``loss.temperature``.
* supervised reference (here, not a pretraining method): one view per image, a linear classifier,
  cross-entropy on the labels.
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
from jigclu.methods import build_augment
from jigclu.models import ResNetBackbone
from jigclu.trainers.common import cosine_at


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

    def forward(self, images: Tensor, seed: int, labels: Tensor | None = None) -> dict[str, Tensor]:
        if labels is None:
            raise ValueError("the supervised reference needs labels")
        n, _, h, w = images.shape
        boxes = torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(n, 4)
        views = self.augment(images, torch.arange(n), boxes, torch.Generator().manual_seed(seed))
        return {"loss": F.cross_entropy(self.model.fc(self.model.backbone(views)), labels)}


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
    return cosine_at(elapsed / budget, warmup / budget)


def train_for_budget(method: nn.Module, images: Tensor, points_min: list[float], *, batch_size: int, lr: float,
                     weight_decay: float, seed: int, warmup_frac: float = 0.05,
                     labels: Tensor | None = None,
                     progress: Callable[[float, float], None] | None = None) -> BudgetRun:
    """Train ``method`` (a :class:`jigclu.methods.Method`, or the supervised reference with ``labels``)
    on uint8 ``images`` until the last budget point (minutes of wall clock,
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
        seed_of_step = step_seed(seed, 0, run.steps)
        out = method(images[idx], seed_of_step) if labels is None else method(images[idx], seed_of_step, labels[idx])
        loss = out["loss"]
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


__all__ = ["SupervisedMethod", "train_for_budget", "time_lr", "BudgetRun"]

