"""What a pretraining method is on the one loop: a network, its augmentation, and one step's losses.

A method (solo-learn's shape) is an ``nn.Module`` that owns

* ``model``: the network a checkpoint holds, a ``backbone`` (:class:`~jigclu.models.ResNetBackbone`,
  what the kNN monitor scores and ``jigclu export`` writes) plus the method's heads;
* its augmentation (:class:`~jigclu.augment.PatchAugment`, batched on the training device);
* ``forward(images, seed)``: uint8 images ``[n, C, H, W]`` of this worker and the step seed ->
  ``{"loss": ..., <stat>: ...}``, the loss over the whole global batch when several workers train.

The pretraining task (``jigclu/trainers/pretrain.py``) wraps the method in DDP, steps it, averages
its ``stats`` per epoch and prints them; everything else (data, schedule, checkpoints, monitor,
Ray) is the method-agnostic loop's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from jigclu.augment import PatchAugment
from jigclu.config import RunConfig
from jigclu.models import ResNetBackbone


class Method(nn.Module, ABC):
    """Base of the pretraining methods (:data:`jigclu.methods.METHODS`)."""

    name: ClassVar[str]
    stats: ClassVar[tuple[str, ...]] = ()  # besides "loss": what forward returns, averaged per epoch
    percent: ClassVar[tuple[str, ...]] = ()  # stats shown and logged x100
    model: nn.Module
    temperature: float  # the loss's temperature as the step uses it (logged: PBT's mutations must reach it)

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def backbone(self) -> ResNetBackbone:
        return self.model.backbone  # type: ignore[return-value]

    @abstractmethod
    def forward(self, images: Tensor, seed: int) -> dict[str, Tensor]:
        """The step's losses (``"loss"`` and :attr:`stats`) on a batch of uint8 images; ``seed`` (the
        same on every worker) seeds the step's augmentation."""

    def autocast(self, device: torch.device) -> Any:
        """bf16 autocast around the network when ``train.amp: bf16`` (the losses stay in float)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cfg.train.amp == "bf16")

    @classmethod
    def line(cls, m: dict[str, Any]) -> str:
        """The method's part of an epoch line: the loss and the stats."""
        parts = [f"{k.removeprefix('loss_')} {m[k]:.3f}" for k in cls.stats if k.startswith("loss_") and k in m]
        loss = f"loss {m['loss']:.3f}" + (f" ({', '.join(parts)})" if parts else "")
        rest = [f"{k.replace('_', ' ')} {m[k]:.1f}%" for k in cls.percent if k in m]
        return "  ".join([loss, *rest])


def build_augment(cfg: RunConfig, out_size: int | None = None) -> PatchAugment:
    """The per-patch augmentation of ``cfg`` (the paper's recipe with ``jigsaw.crop_scale`` and
    ``jigsaw.blur_p``), producing ``out_size`` px patches (default: the jigsaw patch size)."""
    return PatchAugment(out_size or cfg.patch_size, enabled=cfg.jigsaw.augment,
                        scale=(cfg.jigsaw.crop_scale, 1.0), blur_p=cfg.jigsaw.blur_p)


__all__ = ["Method", "build_augment"]
