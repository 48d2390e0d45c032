"""Checkpoints: one dict, written atomically, loaded safely.

A checkpoint holds model, optimizer and scheduler state, the epoch it completed, the global
step, the resolved config and the world size it was written with. It is written through
:func:`jigclu.storage.write_atomic_with` (a crash mid-write never leaves a half-written file,
locally or in object storage) and read with ``torch.load(weights_only=True)``, so loading a
checkpoint never runs pickled code. Where a run keeps its checkpoints is
:class:`jigclu.runs.RunLayout`'s business.

A file whose pickle would import anything beyond tensors and plain containers (``os.system``,
``builtins.eval``, any class) is refused with :class:`UnsafeCheckpointError`, naming the file and
what it would have imported (read off its opcodes, never run). That is not corruption: a crash or
a truncated upload does not write such a pickle, somebody did, so a resume does not fall back to
an older checkpoint past it (:meth:`jigclu.runs.RunLayout.load_latest`) but stops with that line.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

from jigclu import storage
from jigclu.errors import JigcluError


class UnsafeCheckpointError(JigcluError):
    """The file is no jigclu checkpoint: unpickling it would import code (refused, never run)."""


# what torch.save writes for tensors and state dicts; anything else in a pickle is foreign
_WEIGHTS_GLOBALS = ("torch.", "collections.OrderedDict")


def foreign_globals(data: bytes) -> list[str]:
    """The globals (``posix.system``, ``builtins.eval``, classes) a pickle or torch checkpoint
    would import beyond torch's tensor rebuilders, read off its opcodes without running any."""
    buffer = io.BytesIO(data)
    try:
        if zipfile.is_zipfile(buffer):  # torch's format: the pickle is <archive>/data.pkl
            with zipfile.ZipFile(buffer) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                buffer = io.BytesIO(archive.read(names[0]) if names else b"")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []
    buffer.seek(0)
    found: list[str] = []
    end = len(buffer.getbuffer())
    while buffer.tell() < end:  # the legacy format is several pickles in a row, then raw bytes
        strings: list[str] = []  # the strings pushed so far (STACK_GLOBAL takes module and name off them)
        memo: dict[Any, str] = {}
        try:
            for op, arg, _pos in pickletools.genops(buffer):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(arg, "?"))
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                    memo[len(memo) if arg is None else arg] = strings[-1] if strings else "?"
        except Exception:  # the raw tensor bytes after the last pickle, or a damaged file
            break
    return [name for name in dict.fromkeys(found) if not name.startswith(_WEIGHTS_GLOBALS)]


def save_checkpoint(state: dict[str, Any], location: str | Path) -> str:
    """Atomically write ``state`` to ``location`` (a path or a storage URI)."""
    return storage.write_atomic_with(location, lambda tmp: torch.save(state, tmp), suffix=".pt")


def load_checkpoint(location: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or any plain state dict)."""
    if not storage.is_file(location):
        raise JigcluError(f"checkpoint not found: {location}")
    data = b""
    try:
        data = storage.read_bytes(location)
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except JigcluError:
        raise
    except Exception as exc:  # an unsafe pickle (refused by weights_only, never run), truncated, not a torch file
        foreign = foreign_globals(data)
        if foreign:
            raise UnsafeCheckpointError(
                f"refusing {location}: not a jigclu checkpoint, and unsafe: unpickling it would import "
                f"{', '.join(foreign[:3])} (jigclu loads tensors only and never runs pickled code)") from None
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
