"""Pieces every trainer shares: seeding (and the RNG state a checkpoint keeps) and the cosine schedules
(per step, or on training time for a fixed wall-clock budget).

Splits and subsets of the data live with the data: :mod:`jigclu.data.splits`."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states as a checkpoint can hold them: tensors and plain values only,
    since checkpoints load with ``weights_only=True`` (numpy's state becomes a tensor)."""
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only onto as many devices as saved them)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def cosine_lambda(total_steps: int, warmup_steps: int = 0):
    """LR multiplier: linear warm-up, then cosine decay to 0 over ``total_steps`` (per step)."""

    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def cosine_at(progress: float, warmup: float = 0.0) -> float:
    """LR multiplier at ``progress`` (0 to 1) of a run whose first ``warmup`` (a fraction) warms up
    linearly from 1%: then cosine decay to 0 at 1."""
    if warmup and progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1.0 - warmup, 1e-9))))


class TimeCosine:
    """A ``LambdaLR`` multiplier on training time (``train.epoch_s``): the task sets ``progress``, the
    fraction of the run's planned seconds trained so far, before each scheduler step. Its ``__dict__``
    is what ``LambdaLR.state_dict`` keeps, so a resumed run goes on where the schedule was."""

    def __init__(self, warmup: float = 0.0) -> None:
        self.progress, self.warmup = 0.0, warmup

    def __call__(self, _step: int) -> float:
        return cosine_at(self.progress, self.warmup)
