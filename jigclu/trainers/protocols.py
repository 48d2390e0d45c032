"""The downstream protocols: the paper's defaults, resolved into a run's config.

Chen, Liu and Jia (CVPR 2021), supplementary section 3. Every ``eval.*`` key a user leaves
unset takes its protocol's value here, so a run's saved ``config.yaml`` says exactly what ran:

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from jigclu.config import RunConfig, build_config, label_fraction
from jigclu.errors import ConfigError

Augment = Literal["rrc", "padcrop"]

@dataclass(frozen=True)
class Protocol:
    """Paper defaults of one downstream protocol (the paper's supplementary section 3); milestones for 100 epochs."""

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


__all__ = ["Protocol", "PROTOCOLS", "protocol_key", "resolve_eval"]
