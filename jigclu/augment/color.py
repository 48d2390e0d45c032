"""Colour ops on patches ``[P, 3, H, W]`` in [0, 1], with one parameter per patch.

The colour-jitter sub-ops run in a fixed order (brightness, contrast, saturation, hue);
torchvision shuffles the order on every call. Ops whose name ends in ``_`` work in place.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

# ITU-R 601-2 luma, as PIL's ``convert("L")`` uses (the reference augments PIL images).
# torchvision's tensor path uses 0.2989 for red; the difference is below 1e-4.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


def _per_patch(v: Tensor) -> Tensor:
    """View a ``[P]`` parameter so that it broadcasts over ``[P, C, H, W]``."""
    return v.view(-1, 1, 1, 1)


def rgb_to_gray(x: Tensor) -> Tensor:
    """Luma ``[P, 1, H, W]`` of RGB patches (ITU-R 601-2 weights)."""
    r, g, b = x.unbind(1)
    return r.mul(LUMA_WEIGHTS[0]).add_(g, alpha=LUMA_WEIGHTS[1]).add_(b, alpha=LUMA_WEIGHTS[2]).unsqueeze(1)


def _blend_(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``x = clamp(factor * x + (1 - factor) * other, 0, 1)`` in place (torchvision's ``_blend``).

    ``other`` (a gray level or grayscale image) is consumed: it is scaled in place.
    """
    f = _per_patch(factor)
    return x.mul_(f).add_(other.mul_(1 - f)).clamp_(0.0, 1.0)


def adjust_brightness_(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by ``factor`` per patch, in place (torchvision ``adjust_brightness``)."""
    return x.mul_(_per_patch(factor)).clamp_(0.0, 1.0)


def adjust_contrast_(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each patch with its mean gray level, in place (torchvision ``adjust_contrast``)."""
    return _blend_(x, rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation_(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each patch with its own grayscale, in place (torchvision ``adjust_saturation``)."""
    return _blend_(x, rgb_to_gray(x), factor)


def _select(cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.where(cond, a, b)`` for finite ``a`` and ``b``, as a lerp with 0/1 weights.

    Exact (``lerp`` returns its end at weight 1 and its start at weight 0) and branch-free:
    ``torch.where``'s CPU kernel branches per element and, on the unpredictable masks of real
    images, measured 4-5x slower than this.
    """
    return torch.lerp(b, a, cond.to(a.dtype))


def rgb_to_hue6(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue in sixths of a turn ``[P, H, W]``, with the channel minimum and range (max - min).

    The hue is not wrapped: it lies in [-1, 5] and is meant modulo 6. HSV's value is ``min +
    range`` and its saturation ``range / value``, so (hue, min, range) carries the same
    information as HSV and is exactly what :func:`hue6_to_rgb_` needs. Gray pixels (range 0) get
    hue 0; ties between channels resolve red, then green, then blue, as in torchvision.
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    spread = maxc - minc
    # Select the sector's numerator first, so that only one division is needed.
    num = _select(
        maxc == g,
        torch.sub(b, r).add_(spread, alpha=2.0),
        torch.sub(r, g).add_(spread, alpha=4.0),
    )
    num = _select(maxc == r, torch.sub(g, b), num)
    # A gray pixel has max == r, so its numerator g - b is 0: any non-zero divisor gives hue 0.
    hue6 = num.div_(spread.clamp(min=torch.finfo(spread.dtype).tiny))
    return hue6, minc, spread


def hue6_to_rgb_(hue6: Tensor, minc: Tensor, spread: Tensor, out: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hue6` for hue in [0, 6], written into ``out`` ``[P, 3, H, W]``.

    Each channel is ``min + range * pure(hue)``, with the fully saturated hue colour
    ``pure = clamp((|h - 3| - 1, 2 - |h - 2|, 2 - |h - 4|), 0, 1)`` for (R, G, B): a closed form
    of torchvision's six-sector HSV -> RGB that needs no sector selection.
    """
    const = partial(torch.tensor, device=out.device, dtype=out.dtype)
    centre = const((3.0, 2.0, 4.0)).view(1, 3, 1, 1)
    sign = const((1.0, -1.0, -1.0)).view(1, 3, 1, 1)
    offset = const((-1.0, 2.0, 2.0)).view(1, 3, 1, 1)
    torch.sub(hue6.unsqueeze(1), centre, out=out)
    out.abs_().mul_(sign).add_(offset).clamp_(0.0, 1.0)
    return out.mul_(spread.unsqueeze(1)).add_(minc.unsqueeze(1))


def adjust_hue_(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` turns (in [-0.5, 0.5]) per patch, in place (torchvision ``adjust_hue``)."""
    hue6, minc, spread = rgb_to_hue6(x)
    hue6.add_(6.0 * shift.view(-1, 1, 1))
    # Wrap into [0, 6): hue6 lies in [-4, 8] here, so one turn either way is enough. Adding
    # 6 * (0 or 1) gives the same floats as remainder_(6.0) (h + 6 below 0, h - 6 from 6 up,
    # both exact or rounded alike), without remainder's division.
    hue6.add_((hue6 < 0).to(hue6.dtype), alpha=6.0)
    hue6.sub_((hue6 >= 6).to(hue6.dtype), alpha=6.0)
    return hue6_to_rgb_(hue6, minc, spread, out=x)


def color_jitter_(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor) -> Tensor:
    """ColorJitter in place, in a fixed order: brightness, contrast, saturation, hue.

    torchvision shuffles these four per call; a fixed order keeps one batched pass per op.
    With identity parameters every op is a no-op (the hue round trip up to float rounding).
    """
    adjust_brightness_(x, brightness)
    adjust_contrast_(x, contrast)
    adjust_saturation_(x, saturation)
    return adjust_hue_(x, hue)


def grayscale_(x: Tensor, amount: Tensor) -> Tensor:
    """Move each patch ``amount`` (1: all the way, 0: not at all) to its luma, in place.

    Luma is replicated to the three channels, as ``RandomGrayscale`` does for RGB input.
    """
    return x.lerp_(rgb_to_gray(x), _per_patch(amount.to(x.dtype)))


def normalize_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel, in place."""
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
