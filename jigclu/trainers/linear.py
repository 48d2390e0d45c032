"""Linear evaluation (the paper's supplementary section 3.1): a frozen backbone, BatchNorm statistics included, and a
fresh linear classifier trained on its pooled features.

Defaults are the paper's: 100 epochs, batch 256, lr 30 (the reference README uses 10), x0.1
at epochs 60 and 80, no weight decay, random-resized crop + flip; the classifier starts from
N(0, 0.01) weights and zero bias. The input side is ``eval.image_size``, else
``jigsaw.crop_size``: the montage size the backbone saw while pretraining.
"""

from __future__ import annotations

from typing import Any

from jigclu.config import RunConfig
from jigclu.context import RunContext
from jigclu.trainers.classify import ClassifyTask
from jigclu.trainers.loop import run


class LinearTask(ClassifyTask):
    name = "linear"


def run_linear(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Train a linear classifier on frozen features; returns the run summary (best and last)."""
    return run(LinearTask(), cfg, ctx)


__all__ = ["LinearTask", "run_linear"]
