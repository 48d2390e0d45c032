"""CIFAR-10/100-style small-image training (the paper's supplementary section 3.3), one of two protocols
(``eval.protocol``):

* ``finetune`` (default): the whole network, lr 0.1, x0.2 at epochs 40, 60, 80, weight decay
  5e-4;
* ``linear``: frozen backbone (BatchNorm statistics included), linear classifier, lr 10, x0.2
  at 40, 60, 80, no weight decay.

Both: 100 epochs, batch 128, pad-4 random crop + horizontal flip at the dataset's own size
(``eval.image_size`` to change it), and the backbone's strides unchanged: use
``model.arch: resnet18_small`` (3x3 stride-1 stem) for 32 px images, as in pretraining.
"""

from __future__ import annotations

from typing import Any

from jigclu.config import RunConfig
from jigclu.context import RunContext
from jigclu.trainers.classify import ClassifyTask
from jigclu.trainers.loop import run


class FinetuneTask(ClassifyTask):
    name = "finetune"


def run_finetune(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Fine-tune (or linearly evaluate) on small images; returns the run summary."""
    return run(FinetuneTask(), cfg, ctx)


__all__ = ["FinetuneTask", "run_finetune"]
