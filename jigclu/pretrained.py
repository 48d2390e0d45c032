"""Pretrained backbone weights in: find a checkpoint, read its backbone, check it fits, adopt its model.

Every downstream trainer starts from a pretrained backbone or from random init. The weights may
come from a pretraining (or downstream) run directory, one of our ``.pt`` checkpoints, or a
plain torchvision-style state dict written by ``jigclu export`` (:mod:`jigclu.export`). This module
finds them, reads the architecture they were built for off their tensor shapes, and refuses weights
that do not fit the configured ``model.arch``/``model.width`` with one line naming what differs.

Choice (documented for users): when the configured model section was *not* set by the user
(no ``model.arch``/``model.width`` in the YAML or the overrides), :func:`adopt_pretrained`
takes the checkpoint's architecture and width and says so; an explicit setting that does not
fit is an error, never silently replaced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jigclu import storage
from jigclu.checkpoint import backbone_state, load_checkpoint
from jigclu.config import RunConfig, build_config
from jigclu.errors import ConfigError, JigcluError
from jigclu.models import ResNetBackbone
from jigclu.runs import find_checkpoint

# stage block counts -> the arch name (before the small-stem suffix)
_BLOCKS = {("basic", (2, 2, 2, 2)): "resnet18", ("bottleneck", (3, 4, 6, 3)): "resnet50"}
_SHOWN = 3  # mismatches named in an error line; the rest are counted


@dataclass
class BackboneWeights:
    """A backbone state dict (torchvision key names) and where it came from."""

    state: dict[str, Tensor]
    path: str
    config: dict[str, Any] | None  # the run config saved in the checkpoint, if any
    task: str | None  # pretrain, linear, semi, finetune; None for an export or a bare dict

    @property
    def arch(self) -> tuple[str, int] | None:
        """``(arch, width)`` read off the tensor shapes (None when it is no ResNet we build)."""
        return infer_arch(self.state)


_LAST_READ: list[tuple[tuple[str, float | None], "BackboneWeights"]] = []  # this process's last read


def load_backbone_weights(path: str | Path) -> BackboneWeights:
    """Read the backbone of a checkpoint file or run directory (local or a storage URI; see
    :func:`jigclu.runs.find_checkpoint`).

    A process reads one checkpoint once: the run's set-up (:func:`adopt_pretrained`) and its trainer both
    ask for it, and an ImageNet ResNet-50's weights are 100 MB from a bucket. The last read is kept and
    given again while its file and modification time are the same (nothing writes into its tensors:
    they are copied into the model)."""
    file = find_checkpoint(str(path))
    key = (file, storage.mtime(file))
    if _LAST_READ and _LAST_READ[0][0] == key:
        return _LAST_READ[0][1]
    weights = _read_backbone(file)
    _LAST_READ[:] = [(key, weights)]
    return weights


def _read_backbone(file: str) -> BackboneWeights:
    state = load_checkpoint(file, map_location="cpu")
    try:
        weights = backbone_state(state)
    except JigcluError as exc:
        raise JigcluError(f"{file}: {exc}") from None
    config = state.get("config") if isinstance(state.get("config"), dict) else None
    task = state.get("task") if isinstance(state.get("task"), str) else None
    return BackboneWeights({k: v for k, v in weights.items() if isinstance(v, Tensor)}, file, config, task)


def infer_arch(state: dict[str, Tensor]) -> tuple[str, int] | None:
    """``(arch, width)`` of a ResNet state dict from its shapes, or None if it is none of ours.

    The stem's kernel tells the small variant (3x3) from the ImageNet one (7x7), ``conv1``'s
    output channels give the width, ``layer1.0.conv3`` marks Bottleneck blocks, and the number
    of blocks per stage tells ResNet-18 from ResNet-50.
    """
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        return None
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(ids))
    base = _BLOCKS.get((kind, tuple(blocks)))
    if base is None:
        return None
    small = conv1.shape[-1] == 3
    return (f"{base}_small" if small else base), int(conv1.shape[0])


def expected_shapes(arch: str, width: int) -> dict[str, tuple[int, ...]]:
    """Shapes of every backbone tensor of ``arch``/``width`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = ResNetBackbone(arch, width)  # type: ignore[arg-type]
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_fits(weights: BackboneWeights, arch: str, width: int) -> None:
    """Raise :class:`ConfigError` (one line) unless ``weights`` load exactly into ``arch``/``width``."""
    want = expected_shapes(arch, width)
    have = {k: tuple(v.shape) for k, v in weights.state.items()}
    problems = [f"{k} {list(have[k])} there vs {list(want[k])} here"
                for k in want if k in have and have[k] != want[k]]
    problems += [f"{k} missing there" for k in want if k not in have]
    problems += [f"{k} only there" for k in have if k not in want]
    if not problems:
        return
    shown = "; ".join(problems[:_SHOWN]) + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
    guess = weights.arch
    hint = (f" (the checkpoint holds model.arch={guess[0]} model.width={guess[1]}: set those, or leave "
            f"model.arch/model.width unset to adopt them)") if guess else ""
    raise ConfigError(f"checkpoint {weights.path} does not fit model.arch={arch} model.width={width}: "
                      f"{len(problems)} tensors differ: {shown}{hint}")


def load_into(backbone: ResNetBackbone, weights: BackboneWeights) -> None:
    """Copy ``weights`` into ``backbone`` after :func:`check_fits` (so errors are one line)."""
    check_fits(weights, backbone.arch, backbone.width)
    backbone.load_state_dict(weights.state, strict=True)


def _user_set(cfg: RunConfig, section: str, key: str) -> bool:
    """True when ``section.key`` came from the YAML or an override (pydantic tracks that)."""
    return section in cfg.model_fields_set and key in getattr(cfg, section).model_fields_set


def adopt_pretrained(cfg: RunConfig) -> tuple[RunConfig, list[str]]:
    """Fit the config to ``eval.pretrained``: adopt its arch/width (and the pretraining's
    ``jigsaw.crop_size``, the input size the backbone learned on, or its ``monitor.image_size``, the side
    its features were scored at, as ``eval.image_size``) where the user set none.

    Returns the (re-validated) config and one note per adopted value. Raises
    :class:`ConfigError` when the user's explicit settings do not fit the checkpoint. A config
    without ``eval.pretrained`` is returned unchanged.
    """
    if not cfg.eval.pretrained:
        return cfg, []
    weights = load_backbone_weights(cfg.eval.pretrained)
    data = cfg.model_dump(mode="json")
    notes: list[str] = []
    found = weights.arch
    if found is not None:
        for key, value in zip(("arch", "width"), found):
            if not _user_set(cfg, "model", key) and data["model"][key] != value:
                data["model"][key] = value
                notes.append(f"model.{key}={value}")
    saved = weights.config or {}
    crop = (saved.get("jigsaw") or {}).get("crop_size")
    if (weights.task == "pretrain" and crop and cfg.eval.image_size is None
            and not _user_set(cfg, "jigsaw", "crop_size") and crop != cfg.jigsaw.crop_size):
        data["jigsaw"]["crop_size"] = crop
        if not _user_set(cfg, "model", "grid"):
            data["model"]["grid"] = (saved.get("model") or {}).get("grid", data["model"]["grid"])
        notes.append(f"jigsaw.crop_size={crop}")
    side = (saved.get("monitor") or {}).get("image_size")  # the side its features were scored and selected at
    if weights.task == "pretrain" and side and cfg.eval.image_size is None and side != data["jigsaw"]["crop_size"]:
        data["eval"]["image_size"] = side
        notes.append(f"eval.image_size={side}")
    adopted: RunConfig = build_config(RunConfig, data) if notes else cfg
    check_fits(weights, adopted.model.arch, adopted.model.width)
    return adopted, [f"using {', '.join(notes)} from {weights.path}"] if notes else []


__all__ = ["BackboneWeights", "load_backbone_weights", "infer_arch", "expected_shapes", "check_fits", "load_into",
           "adopt_pretrained"]
