"""Backbone weights out: ``jigclu export`` writes a checkpoint's backbone as a plain torchvision ResNet state
dict, for detection / segmentation frameworks (the paper's detection and segmentation transfer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jigclu import storage
from jigclu.checkpoint import save_checkpoint
from jigclu.errors import JigcluError
from jigclu.models import ARCHS
from jigclu.pretrained import check_fits, load_backbone_weights


@dataclass
class ExportResult:
    path: str
    arch: str
    width: int
    tensors: int
    torchvision_compatible: bool  # loads into torchvision.models.<arch>() with only fc.* missing

    def message(self) -> str:
        base = self.arch.removesuffix("_small")
        line = (f"wrote {self.tensors} backbone tensors ({self.arch}, width {self.width}) to {self.path}; "
                f"load with torchvision.models.{base}().load_state_dict(torch.load(path, weights_only=True), "
                f"strict=False) (only fc.* missing)")
        if self.torchvision_compatible:
            return line
        differs = []
        if self.arch.endswith("_small"):
            differs.append("conv1 is a 3x3 stride-1 stem without max-pool")
        if self.width != 64:
            differs.append(f"stage widths are {self.width}-{self.width * 8 * ARCHS[self.arch][0].expansion} "
                           f"channels, not torchvision's 64-{64 * 8 * ARCHS[self.arch][0].expansion}")
        return (f"wrote {self.tensors} backbone tensors ({self.arch}, width {self.width}) to {self.path}; "
                f"note: {' and '.join(differs)}, so it does not load into torchvision's default "
                f"{base}; load it into jigclu.models.ResNetBackbone('{self.arch}', {self.width}) "
                f"(a torchvision ResNet subclass with the same key names)")


def export_torchvision(checkpoint: str | Path, out: str | Path) -> ExportResult:
    """Write the backbone of ``checkpoint`` as a plain torchvision ResNet state dict (atomically).

    The file holds tensors only (no heads, no ``fc``, no metadata), so any framework that loads
    torchvision ResNet weights can read it with ``torch.load(..., weights_only=True)``.
    """
    weights = load_backbone_weights(checkpoint)
    found = weights.arch
    if found is None:
        raise JigcluError(f"{weights.path} holds no ResNet-18/50 backbone jigclu can export")
    arch, width = found
    check_fits(weights, arch, width)
    out = storage.normalise(out)
    if storage.exists(out) and not storage.is_file(out):
        raise JigcluError(f"export target {out} is a directory; give a file name like backbone.pt")
    state = {k: v.detach().clone().contiguous() for k, v in weights.state.items()}
    save_checkpoint(state, out)
    compatible = not arch.endswith("_small") and width == 64
    return ExportResult(out, arch, width, len(state), compatible)


__all__ = ["ExportResult", "export_torchvision"]
