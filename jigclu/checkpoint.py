"""Checkpoints: one dict, written atomically, loaded safely.

A checkpoint holds model, optimizer and scheduler state, the epoch it completed, the global
step, the resolved config and the world size it was written with. It is written to a
temporary file in the same directory and renamed into place, so a crash mid-write never
leaves a half-written ``last.pt``; it is read with ``torch.load(weights_only=True)``, so
loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from jigclu.errors import JigcluError

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``state`` to ``path`` (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or any plain state dict)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise JigcluError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or unsafe pickle
        raise JigcluError(f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise JigcluError(f"checkpoint {path} does not hold a state dict")
    return state


def backbone_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's parameters and buffers from a pretraining or downstream checkpoint.

    Accepts our checkpoints (``model`` with ``backbone.*`` keys), a bare state dict with
    ``backbone.*`` keys, or an exported torchvision-style dict (keys ``conv1.*``, ``layer*``).
    """
    model = state.get("model", state)
    if not isinstance(model, dict):
        raise JigcluError("checkpoint has no model state")
    prefixed = {k[len("backbone."):]: v for k, v in model.items() if k.startswith("backbone.")}
    if prefixed:
        return prefixed
    plain = {k: v for k, v in model.items() if k.split(".")[0] in
             {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}}
    if not plain:
        raise JigcluError("checkpoint holds no backbone weights (no 'backbone.*' or torchvision keys)")
    return plain
