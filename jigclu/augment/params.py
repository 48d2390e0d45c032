"""Random parameters: every patch's augmentation drawn at once, one row per patch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from jigclu.augment.recipe import REFERENCE_RECIPE, AugmentRecipe

# torchvision's RandomResizedCrop draws up to 10 candidate crops before falling back.
_CROP_TRIES = 10


@dataclass(frozen=True)
class PatchParams:
    """Augmentation parameters, one row per patch, all on the same device.

    Patches an op does not apply to carry its identity value (factor 1, hue 0, sigma 0), so on
    accelerators every op can run on the whole batch without masking or host syncs.
    """

    crops: Tensor  # [P, 4] float (x0, y0, w, h): crop region in source-image pixels (continuous)
    flip: Tensor  # [P] bool: mirror horizontally
    jittered: Tensor  # [P] bool: colour jitter applies (else the four factors are identities)
    brightness: Tensor  # [P] float multiplicative factor
    contrast: Tensor  # [P] float blend factor towards the patch's mean gray level
    saturation: Tensor  # [P] float blend factor towards the patch's grayscale
    hue: Tensor  # [P] float hue shift, in turns (fraction of the colour wheel)
    gray: Tensor  # [P] bool: convert to grayscale
    sigma: Tensor  # [P] float Gaussian blur std in output pixels; 0 means no blur

    def select(self, index: Tensor) -> PatchParams:
        """The parameters of the patches ``index`` (a long index tensor)."""
        return PatchParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) samples drawn on the generator's own device (so any generator works), then moved."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _uniform(low: float, high: float, u: Tensor) -> Tensor:
    """Map U[0, 1) samples to U[low, high)."""
    return low + (high - low) * u


def sample_crops(
    boxes: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """RandomResizedCrop regions inside each box, vectorised: ``[P, 4]`` as (x0, y0, w, h).

    torchvision's semantics with the box as the image: area fraction ~ U(scale), aspect ratio
    log-uniform in ``ratio``, rejected if it does not fit; up to 10 tries, then a central crop
    with the aspect ratio clamped into ``ratio``. Here all 10 tries are drawn at once for every
    patch and the first that fits is kept, so the distribution is torchvision's except that sizes
    and positions are continuous instead of rounded to whole pixels.
    """
    boxes = boxes.to(torch.float32)
    p = boxes.shape[0]
    x0, y0, x1, y1 = boxes.unbind(1)
    bw, bh = x1 - x0, y1 - y0
    u = _rand((p, _CROP_TRIES, 2), generator, boxes.device)
    area = (bw * bh)[:, None] * _uniform(scale[0], scale[1], u[..., 0])
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), u[..., 1]))
    w_try, h_try = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (w_try <= bw[:, None]) & (h_try <= bh[:, None])
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first max
    w = w_try.gather(1, first).squeeze(1)
    h = h_try.gather(1, first).squeeze(1)

    # Fallback when no try fits: the whole box, trimmed to the nearest allowed aspect ratio.
    box_ratio = bw / bh
    fw = torch.where(box_ratio > ratio[1], bh * ratio[1], bw)
    fh = torch.where(box_ratio < ratio[0], bw / ratio[0], bh)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w, fw)
    h = torch.where(any_fit, h, fh)

    # Position uniform over the free space; the fallback crop is centred like torchvision's.
    pos = _rand((p, 2), generator, boxes.device)
    pos = torch.where(any_fit[:, None], pos, torch.full_like(pos, 0.5))
    cx0 = x0 + pos[:, 0] * (bw - w)
    cy0 = y0 + pos[:, 1] * (bh - h)
    return torch.stack((cx0, cy0, w, h), dim=1)


def _jitter_factor(strength: float, applied: Tensor, u: Tensor) -> Tensor:
    """Factor ~ U[max(0, 1 - s), 1 + s] where ``applied``, else 1 (torchvision's ColorJitter)."""
    factor = _uniform(max(0.0, 1.0 - strength), 1.0 + strength, u)
    return torch.where(applied, factor, torch.ones_like(factor))


def sample_params(
    boxes: Tensor,
    recipe: AugmentRecipe = REFERENCE_RECIPE,
    *,
    generator: torch.Generator | None = None,
    **overrides: Any,
) -> PatchParams:
    """Draw every patch's augmentation parameters from ``recipe`` at once, on ``boxes.device``.

    ``overrides`` replace fields of ``recipe`` (``sample_params(boxes, gray_p=0.5)``). The draws
    always happen in the same order and number, so a seeded generator reproduces a run exactly
    whichever ops end up applied.
    """
    r = recipe.updated("sample_params", overrides)
    dev = boxes.device
    p = boxes.shape[0]
    crops = sample_crops(boxes, r.scale, r.ratio, generator)
    u = _rand((p, 9), generator, dev)
    jittered = u[:, 0] < r.jitter_p
    b, c, s, h = r.jitter
    return PatchParams(
        crops=crops,
        flip=u[:, 8] < r.flip_p,
        jittered=jittered,
        brightness=_jitter_factor(b, jittered, u[:, 1]),
        contrast=_jitter_factor(c, jittered, u[:, 2]),
        saturation=_jitter_factor(s, jittered, u[:, 3]),
        hue=torch.where(jittered, _uniform(-h, h, u[:, 4]), torch.zeros_like(u[:, 4])),
        gray=u[:, 5] < r.gray_p,
        sigma=torch.where(
            u[:, 6] < r.blur_p, _uniform(r.blur_sigma[0], r.blur_sigma[1], u[:, 7]), torch.zeros_like(u[:, 7])
        ),
    )


def identity_params(boxes: Tensor) -> PatchParams:
    """Parameters that resize each whole box and change nothing else (``enabled=False``)."""
    boxes = boxes.to(torch.float32)
    p, dev = boxes.shape[0], boxes.device
    ones, zeros = torch.ones(p, device=dev), torch.zeros(p, device=dev)
    no = torch.zeros(p, dtype=torch.bool, device=dev)
    crops = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1)
    return PatchParams(crops, no, no, ones, ones, ones, zeros, no, zeros)
