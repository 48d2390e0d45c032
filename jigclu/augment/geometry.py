"""Input conversion and geometry: crop + resize + flip as one bilinear resampling of the source.

Crop sizes and positions are continuous (sub-pixel), not rounded to whole pixels, and each crop
is resampled straight from its full source image by one bilinear ``grid_sample`` without
antialiasing (``F.interpolate(antialias=False)`` semantics; PIL's bilinear resize antialiases
when it shrinks, so the reference's shrunken crops are slightly smoother). The horizontal flip is
folded into the crop's affine transform; that is exact because every later op is per-pixel or a
mirror-symmetric blur with symmetric (reflect) padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float_rgb(x: Tensor) -> Tensor:
    """Convert uint8 images ``[B, C, H, W]`` (C = 1 or 3) to float32 RGB ``[B, 3, H, W]`` in [0, 1].

    Grayscale is replicated to three channels so that every dataset feeds the same RGB pipeline
    (and the same ImageNet normalisation) as the reference.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float_rgb expects uint8 images, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"to_float_rgb expects [B, 1|3, H, W], got shape {tuple(x.shape)}")
    out = x.to(torch.float32).div_(255.0)
    if out.shape[1] == 1:
        # contiguous(): later in-place ops must not write through an expanded (aliased) view
        out = out.expand(-1, 3, -1, -1).contiguous()
    return out


def _as_float_rgb(images: Tensor) -> Tensor:
    """float32 RGB in [0, 1] from either uint8 (any of 1/3 channels) or float RGB images."""
    return to_float_rgb(images) if images.dtype == torch.uint8 else images.to(torch.float32)


def crop_grid(crops: Tensor, flip: Tensor, image_size: tuple[int, int], out_size: int) -> Tensor:
    """``grid_sample`` grid ``[P, S, S, 2]`` that reads each crop, resized to ``S``, from its image.

    With ``align_corners=False`` an image of width ``W`` spans normalised x in [-1, 1] edge to
    edge, so a crop ``[x0, x0 + w)`` in pixels spans ``[2 x0 / W - 1, 2 (x0 + w) / W - 1]``. The
    affine maps output x in [-1, 1] onto that span: scale ``w / W`` (negated to flip) about the
    crop centre. Output pixel centres then land exactly on ``x0 + (j + 0.5) w / S``, which is
    ``F.interpolate``'s bilinear sampling of the cut-out crop (and, when ``w == S`` with integer
    ``x0``, exactly the source pixel centres).

    The affine has no rotation, so x depends only on the column and y only on the row:
    ``affine_grid`` is evaluated on one row and one column and broadcast, not on all S*S points.

    Samples are finally clamped to the centres of the crop's outermost pixels, which is what
    resizing a cut-out crop does (``F.interpolate`` clamps to the crop's own border), so pixels
    just outside the crop do not bleed in when it is enlarged.
    """
    height, width = image_size
    p = crops.shape[0]
    x0, y0, w, h = crops.to(torch.float32).unbind(1)
    zero = torch.zeros_like(w)
    sx = torch.where(flip, -w, w) / width
    tx = (2 * x0 + w) / width - 1
    sy = h / height
    ty = (2 * y0 + h) / height - 1
    theta = torch.stack((sx, zero, tx, zero, sy, ty), dim=1).view(p, 2, 3)
    gx = F.affine_grid(theta, [p, 1, 1, out_size], align_corners=False)[:, 0, :, 0]  # [P, S]
    gy = F.affine_grid(theta, [p, 1, out_size, 1], align_corners=False)[:, :, 0, 1]  # [P, S]

    # Half a pixel in from each crop edge (at most to the crop centre), in normalised units.
    half_x = torch.clamp(w, max=1.0) / 2
    half_y = torch.clamp(h, max=1.0) / 2
    gx = torch.clamp(gx, _normalised(x0 + half_x, width), _normalised(x0 + w - half_x, width))
    gy = torch.clamp(gy, _normalised(y0 + half_y, height), _normalised(y0 + h - half_y, height))
    shape = (p, out_size, out_size)
    return torch.stack((gx[:, None, :].expand(shape), gy[:, :, None].expand(shape)), dim=-1)


def _normalised(position: Tensor, extent: int) -> Tensor:
    """Pixel position ``[P]`` (edge-based) to ``grid_sample``'s [-1, 1] units, as a ``[P, 1]`` column."""
    return (2 * position / extent - 1)[:, None]


def resample_patches(images: Tensor, grid: Tensor, per_image: int = 1) -> Tensor:
    """Bilinearly sample patches ``[P, C, S, S]`` along ``grid`` ``[P, S, S, 2]``.

    Patches come in image-major order: patches ``i*k .. i*k + k-1`` (``k = per_image``) are cut
    from ``images[i]``. The grids of one image's patches are stacked along the output height
    and sampled in one call from the un-gathered image, which avoids materialising ``k``
    full-size copies of every image as ``images[src]`` would.
    """
    b, c = images.shape[:2]
    p, s_h, s_w = grid.shape[:3]
    if p != b * per_image:
        raise ValueError(f"{p} grids do not make {per_image} patches for each of {b} images")
    stacked = grid.reshape(b, per_image * s_h, s_w, 2)
    out = F.grid_sample(images, stacked, mode="bilinear", padding_mode="border", align_corners=False)
    if per_image == 1:
        return out
    return out.view(b, c, per_image, s_h, s_w).transpose(1, 2).reshape(p, c, s_h, s_w)
