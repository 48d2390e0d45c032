"""Checkpoints: one dict, written atomically, loaded safely.

A checkpoint holds model, optimizer and scheduler state, the epoch it completed, the global
step, the resolved config and the world size it was written with. It is written through
:func:`jigclu.storage.write_atomic_with` (a crash mid-write never leaves a half-written file,
locally or in object storage) and read with ``torch.load(weights_only=True)``, so loading a
checkpoint never runs pickled code. Where a run keeps its checkpoints is
:class:`jigclu.runs.RunLayout`'s business.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from jigclu import storage
from jigclu.errors import JigcluError


def save_checkpoint(state: dict[str, Any], location: str | Path) -> str:
    """Atomically write ``state`` to ``location`` (a path or a storage URI)."""
    return storage.write_atomic_with(location, lambda tmp: torch.save(state, tmp), suffix=".pt")


def load_checkpoint(location: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or any plain state dict)."""
    if not storage.is_file(location):
        raise JigcluError(f"checkpoint not found: {location}")
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(location)), map_location=map_location,
                           weights_only=True)
    except JigcluError:
        raise
    except Exception as exc:  # truncated, not a torch file, or an unsafe pickle
        raise JigcluError(f"checkpoint {location} is unreadable or corrupt ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise JigcluError(f"checkpoint {location} does not hold a state dict")
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
