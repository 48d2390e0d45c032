"""Pretraining methods on the one loop (``method:`` in a config): JigClu, and SimCLR as its baseline.

Each is a :class:`~jigclu.methods.base.Method`: a network with a ``backbone``, its augmentation and
one step's losses. ``jigclu pretrain ... method=simclr`` trains the baseline with everything else
unchanged (data, schedule, monitor, checkpoints, Ray), and a sweep may search ``method``.
"""

from __future__ import annotations

from jigclu.config import RunConfig
from jigclu.methods.base import Method, build_augment
from jigclu.methods.jigclu import JigClu
from jigclu.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {JigClu.name: JigClu, SimCLR.name: SimCLR}


def build_method(cfg: RunConfig) -> Method:
    """The method ``cfg.method`` names, built from ``cfg``."""
    return METHODS[cfg.method](cfg)


__all__ = ["METHODS", "Method", "JigClu", "SimCLR", "build_method", "build_augment"]
