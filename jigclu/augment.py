"""Batched per-patch augmentation, run on tensors on the training device.

JigClu (Chen, Liu, Jia; "Jigsaw Clustering for Unsupervised Visual Representation Learning",
CVPR 2021) augments every patch of every image independently with the MoCo v2 recipe
(Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020), itself the SimCLR
recipe (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020)::

    RandomResizedCrop(scale=(0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8
    -> RandomGrayscale p=0.2 -> GaussianBlur(sigma in [0.1, 2]) p=0.5 -> HorizontalFlip -> Normalize

The reference runs that per patch, per image, in PIL on data-loader processes. Here the whole
batch of patches is augmented at once: parameters are drawn for all patches in one go
(:func:`sample_params`), and each op is a small function of the patches and one parameter
tensor with a row per patch (:func:`adjust_brightness_`, :func:`adjust_hue_`,
:func:`gaussian_blur`, ...). Nothing loops over patches in Python.

Deliberate differences from the torchvision/PIL reference (each documented where it lives):

- Crop sizes and positions are continuous (sub-pixel), not rounded to whole pixels, and each crop
  is resampled straight from its full source image by one bilinear ``grid_sample`` without
  antialiasing (``F.interpolate(antialias=False)`` semantics; PIL's bilinear resize antialiases
  when it shrinks, so the reference's shrunken crops are slightly smoother).
- The colour-jitter sub-ops run in a fixed order (brightness, contrast, saturation, hue);
  torchvision shuffles the order on every call.
- The horizontal flip is folded into the crop's affine transform; that is exact because every
  later op is per-pixel or a mirror-symmetric blur with symmetric (reflect) padding.

Ops whose name ends in ``_`` work in place on the tensor they are given and return it, like
PyTorch's own: on CPU, allocating a fresh multi-megabyte tensor per op (page faults) costs ten
times more than the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, as PIL's ``convert("L")`` uses (the reference augments PIL images).
# torchvision's tensor path uses 0.2989 for red; the difference is below 1e-4.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

# torchvision's RandomResizedCrop draws up to 10 candidate crops before falling back.
_CROP_TRIES = 10
# On CPU the patches go through the pipeline a few images at a time, about this many bytes of
# float32 patches per chunk: small enough that the ~30 elementwise passes hit cache and reuse
# heap memory instead of page-faulting fresh buffers in (measured ~3x faster than one chunk).
_CPU_CHUNK_BYTES = 2 * 1024 * 1024
# On CPU the (banded) blur matrices are applied this many output pixels at a time, each band
# against only the input pixels it reads (see gaussian_blur): 16 was fastest at 112 px patches
# (2.2x faster than one dense matmul; 28, 37 and 56 px bands lay in between).
_CPU_BLUR_BAND = 16


# --------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Random parameters
# --------------------------------------------------------------------------------------------


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
    *,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    blur_p: float = 0.5,
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> PatchParams:
    """Draw every patch's augmentation parameters at once, on ``boxes.device``.

    The draws always happen in the same order and number, so a seeded generator reproduces a run
    exactly whichever ops end up applied.
    """
    dev = boxes.device
    p = boxes.shape[0]
    crops = sample_crops(boxes, scale, ratio, generator)
    u = _rand((p, 9), generator, dev)
    jittered = u[:, 0] < jitter_p
    b, c, s, h = jitter
    return PatchParams(
        crops=crops,
        flip=u[:, 8] < flip_p,
        jittered=jittered,
        brightness=_jitter_factor(b, jittered, u[:, 1]),
        contrast=_jitter_factor(c, jittered, u[:, 2]),
        saturation=_jitter_factor(s, jittered, u[:, 3]),
        hue=torch.where(jittered, _uniform(-h, h, u[:, 4]), torch.zeros_like(u[:, 4])),
        gray=u[:, 5] < gray_p,
        sigma=torch.where(
            u[:, 6] < blur_p, _uniform(blur_sigma[0], blur_sigma[1], u[:, 7]), torch.zeros_like(u[:, 7])
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


# --------------------------------------------------------------------------------------------
# Geometry: crop + resize + flip as one bilinear resampling of the source image
# --------------------------------------------------------------------------------------------


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


def _patches_per_image(src: Tensor, num_images: int) -> int:
    """``k`` if every image has exactly ``k >= 1`` patches in ``src``, else 0 (one host sync)."""
    p = src.shape[0]
    if num_images == 0 or p == 0 or p % num_images:
        return 0
    per_image = p // num_images
    counts = torch.bincount(src, minlength=num_images)
    return per_image if bool((counts == per_image).all()) else 0


# --------------------------------------------------------------------------------------------
# Colour ops: patches [P, 3, H, W] in [0, 1], one parameter per patch
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------------


def blur_kernel_size(sigma_max: float, out_size: int) -> int:
    """Odd Gaussian kernel size covering +-3 sigma_max, capped so reflect padding fits the patch.

    Reflect padding needs ``pad < size``; with ``pad = k // 2`` that caps ``k`` at ``2 S - 1``.
    """
    k = 2 * math.ceil(3 * sigma_max) + 1
    return max(1, min(k, 2 * out_size - 1))


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``[P, k]``; a delta (no blur) where ``sigma <= 0``."""
    centre = (kernel_size - 1) / 2
    offsets = torch.arange(kernel_size, device=sigma.device, dtype=torch.float32) - centre
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma)).to(torch.float32)
    weights = torch.exp(-0.5 * (offsets[None, :] / safe[:, None]) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(torch.float32).expand_as(weights)
    return torch.where((sigma > 0)[:, None], weights, delta)


def blur_matrices(sigma: Tensor, size: int, kernel_size: int) -> Tensor:
    """Per-patch 1-D blur along an axis of ``size`` pixels as matrices ``[P, size, size]``.

    Row ``i`` holds the Gaussian taps around pixel ``i``; taps that fall off the edge are folded
    back onto the pixels reflect padding would copy (torchvision pads with ``reflect``), so
    ``M @ column`` equals padding then convolving. Built as kernels times a constant 0/1 tap
    layout (a matmul), not a scatter, so it is deterministic on every device.
    """
    if kernel_size // 2 >= size:
        raise ValueError(f"kernel size {kernel_size} is too large for reflect padding of {size} pixels")
    layout = _tap_layout(size, kernel_size, sigma.device)
    return (gaussian_kernels(sigma, kernel_size) @ layout).view(-1, size, size)


@lru_cache(maxsize=32)
def _tap_layout(size: int, kernel_size: int, device: torch.device) -> Tensor:
    """Constant 0/1 ``[k, size*size]``: tap ``t`` of output pixel ``i`` reads source pixel ``j``.

    Cached: it depends only on the sizes, and rebuilding it (a one-hot of ``size*k`` entries)
    cost as much as a chunk's blur matmuls. Callers must not modify it in place.
    """
    pad = kernel_size // 2
    pixel = torch.arange(size, device=device)
    source = (pixel[:, None] + torch.arange(kernel_size, device=device)[None, :] - pad).abs()
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)  # [size, k]
    return F.one_hot(source, size).to(torch.float32).permute(1, 0, 2).reshape(kernel_size, size * size)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with its own ``sigma`` per patch and reflect padding (torchvision's).

    Blurring rows then columns is ``M_h @ x @ M_w^T`` with :func:`blur_matrices`: batched
    matmuls, which beat a depthwise convolution with one group per (patch, channel) several
    times over on CPU and need no padded copy. Two things keep the matmuls lean (measured on
    CPU at 112 px patches, together ~4x faster than a plain ``torch.matmul``):

    - the per-patch matrices are never broadcast over the channels (``torch.matmul`` would
      materialise a copy per channel): the column pass treats the channels' rows as one
      ``[C*H, W]`` matrix and the row pass runs once per channel;
    - on CPU the matrices are used band by band (:func:`_blur_bands`): a band of output pixels
      is multiplied only with the input pixels its taps reach, skipping the zeros of the dense
      matrix. The skipped terms are exact zeros, so the result does not change.

    Patches with ``sigma <= 0`` come back exactly unchanged, even where float32 matmuls run at
    reduced (TF32) precision. Returns a new tensor.
    """
    if kernel_size <= 1 or x.shape[0] == 0:
        return x
    p, c, h, w = x.shape
    rows = blur_matrices(sigma, h, kernel_size)
    cols = rows if w == h else blur_matrices(sigma, w, kernel_size)
    if torch.is_grad_enabled() and (x.requires_grad or sigma.requires_grad):
        # differentiable form (out= below records no gradients); the module runs without grad
        blurred = torch.matmul(rows[:, None], torch.matmul(x, cols.transpose(1, 2)[:, None]))
    else:
        band = _CPU_BLUR_BAND if x.device.type == "cpu" else max(h, w)
        flat, cols_t = x.reshape(p, c * h, w), cols.transpose(1, 2)
        parts = [torch.bmm(flat[:, :, i0:i1], cols_t[:, i0:i1, o0:o1])
                 for o0, o1, i0, i1 in _blur_bands(w, kernel_size, band)]
        across = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)).view(p, c, h, w)
        blurred = torch.empty_like(across)
        for ch in range(c):
            for o0, o1, i0, i1 in _blur_bands(h, kernel_size, band):
                torch.bmm(rows[:, o0:o1, i0:i1], across[:, ch, i0:i1], out=blurred[:, ch, o0:o1])
    # On CPU the caller (_apply_where) passes only blurred patches; skip the select then
    # (checking is free on CPU, a host sync elsewhere).
    if x.device.type == "cpu" and bool((sigma > 0).all()):
        return blurred
    return torch.where(_per_patch(sigma > 0), blurred, x)


def _blur_bands(size: int, kernel_size: int, band: int) -> list[tuple[int, int, int, int]]:
    """``(out0, out1, in0, in1)``: output pixels ``[out0, out1)`` read only inputs ``[in0, in1)``.

    Every non-zero of a :func:`blur_matrices` row ``i`` lies within ``kernel_size // 2`` of
    ``i`` (reflected taps fold back inside that reach), so a band of outputs needs its own
    range widened by that much on each side.
    """
    pad = kernel_size // 2
    return [(o, min(size, o + band), max(0, o - pad), min(size, o + band + pad)) for o in range(0, size, band)]


def normalize_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel, in place."""
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


# --------------------------------------------------------------------------------------------
# Scheduling: which patches an op touches, and in what chunks
# --------------------------------------------------------------------------------------------


def _apply_where(x: Tensor, mask: Tensor, op: Callable[..., Tensor], *params: Tensor) -> Tensor:
    """Apply ``op(patches, *params)`` to the patches where ``mask`` is True.

    On CPU only the selected patches are computed (finding them is free there). On accelerators
    every patch is computed, relying on identity parameters where ``mask`` is False, because
    selecting would cost a host sync per op, which is far dearer than the arithmetic saved.
    """
    if x.device.type != "cpu":
        return op(x, *params)
    index = mask.nonzero().squeeze(1)
    if index.numel() == x.shape[0]:
        return op(x, *params)
    if index.numel() > 0:
        # index_select / index_copy_ move whole patches (memcpy per row); x[index] = ... goes
        # through the generic index_put kernel, several times slower on CPU.
        picked = op(x.index_select(0, index), *(q.index_select(0, index) for q in params))
        x.index_copy_(0, index, picked)
    return x


def _chunks(
    src: Tensor, num_images: int, patches_per_chunk: int
) -> Iterator[tuple[Tensor, Tensor | slice, int]]:
    """Split the patches into image-major chunks of about ``patches_per_chunk`` patches.

    Yields ``(ids, images, per_image)``: the chunk's patch indices, the index of its source
    images (``images[i]`` is the source of patches ``ids[i*k : (i+1)*k]``) and ``k``. When every
    image has the same number of patches (the jigsaw case) chunks hold whole images and
    ``images`` is a slice, so no image is copied; otherwise each patch gets its own gathered
    image (``k = 1``), a copy bounded by the chunk size.
    """
    p = src.shape[0]
    per_image = _patches_per_image(src, num_images)
    if per_image:
        order = torch.argsort(src, stable=True)
        step = max(1, patches_per_chunk // per_image)
        for i in range(0, num_images, step):
            j = min(i + step, num_images)
            yield order[i * per_image : j * per_image], slice(i, j), per_image
    else:
        for a in range(0, p, patches_per_chunk):
            ids = torch.arange(a, min(a + patches_per_chunk, p), device=src.device)
            yield ids, src[ids], 1


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


def _check_pair(name: str, pair: tuple[float, float], high: float | None = None) -> None:
    """Raise ValueError unless ``0 < pair[0] <= pair[1] (<= high)``."""
    lo, hi = pair
    if not (0 < lo <= hi and (high is None or hi <= high)):
        bound = f" <= {high}" if high is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {tuple(pair)}")


def _check_prob(name: str, p: float) -> None:
    """Raise ValueError unless ``p`` is a probability."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


class PatchAugment(torch.nn.Module):
    """JigClu's per-patch augmentation, batched on the training device.

    Every patch gets its own MoCo v2 / SimCLR augmentation, as in JigClu (Chen, Liu, Jia,
    CVPR 2021): random resized crop inside the patch's box (``scale`` of the box area, aspect
    ratio in ``ratio``), colour jitter ``jitter`` = (brightness, contrast, saturation, hue) with
    probability ``jitter_p``, grayscale with ``gray_p``, Gaussian blur with sigma in
    ``blur_sigma`` (pixels of the output patch, as the reference blurs after its resized crop)
    with ``blur_p``, horizontal flip with ``flip_p``, then normalisation by ``mean``/``std``.
    With ``enabled=False`` each patch is just its box resized to ``out_size`` and normalised
    (evaluation, or an ablation without augmentation).

    Runs under ``torch.no_grad`` and in float32 whatever the surrounding autocast; all
    randomness comes from the ``generator`` given to :meth:`forward`.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        out_size: int,
        *,
        enabled: bool = True,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_p: float = 0.5,
        flip_p: float = 0.5,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if out_size < 1:
            raise ValueError(f"out_size must be >= 1, got {out_size}")
        _check_pair("scale", scale, high=1.0)
        _check_pair("ratio", ratio)
        _check_pair("blur_sigma", blur_sigma)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 values >= 0 with hue <= 0.5, got {tuple(jitter)}")
        for name, p in (("jitter_p", jitter_p), ("gray_p", gray_p), ("blur_p", blur_p), ("flip_p", flip_p)):
            _check_prob(name, p)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each and std > 0, got {tuple(mean)}, {tuple(std)}")

        self.out_size = int(out_size)
        self.enabled = enabled
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.jitter = (float(jitter[0]), float(jitter[1]), float(jitter[2]), float(jitter[3]))
        self.jitter_p, self.gray_p, self.blur_p, self.flip_p = jitter_p, gray_p, blur_p, flip_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.kernel_size = blur_kernel_size(self.blur_sigma[1], self.out_size)
        # Not persistent: constants of the recipe, not state a checkpoint should carry.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"out_size={self.out_size}, enabled={self.enabled}, scale={self.scale}, ratio={self.ratio}, "
            f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, "
            f"blur_sigma={self.blur_sigma}, blur_p={self.blur_p}, flip_p={self.flip_p}"
        )

    def sample(self, boxes: Tensor, generator: torch.Generator | None = None) -> PatchParams:
        """Per-patch parameters for ``boxes`` (identity colour, no flip, whole box when disabled)."""
        if not self.enabled:
            return identity_params(boxes)
        return sample_params(
            boxes,
            scale=self.scale,
            ratio=self.ratio,
            jitter=self.jitter,
            jitter_p=self.jitter_p,
            gray_p=self.gray_p,
            blur_sigma=self.blur_sigma,
            blur_p=self.blur_p,
            flip_p=self.flip_p,
            generator=generator,
        )

    def apply_color(self, x: Tensor, params: PatchParams) -> Tensor:
        """Jitter, grayscale and blur ``x`` ``[P, 3, S, S]`` (in [0, 1]) with per-patch ``params``."""
        jitter = (params.brightness, params.contrast, params.saturation, params.hue)
        x = _apply_where(x, params.jittered, color_jitter_, *jitter)
        x = _apply_where(x, params.gray, grayscale_, params.gray)
        blur = partial(gaussian_blur, kernel_size=self.kernel_size)
        return _apply_where(x, params.sigma > 0, blur, params.sigma)

    @torch.no_grad()
    def forward(
        self, images: Tensor, src: Tensor, boxes: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Augment patches cut from ``images``.

        Args:
            images: ``[B, 3, H, W]`` float in [0, 1] on the training device (uint8 ``[B, 1|3,
                H, W]`` is accepted too and converted chunk by chunk, see :func:`to_float_rgb`).
            src: long ``[P]``: index into ``images`` of each patch's source image.
            boxes: ``[P, 4]`` (x0, y0, x1, y1) pixel box of each patch in its source image,
                x1/y1 exclusive like PIL's ``crop``.
            generator: source of all randomness (on any device); the global RNG if None.

        Returns:
            float32 ``[P, 3, out_size, out_size]`` normalised patches on ``images.device``.
        """
        gray_uint8 = images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 1
        if images.ndim != 4 or not (images.shape[1] == 3 or gray_uint8):
            raise ValueError(
                f"images must be [B, 3, H, W] (or uint8 [B, 1, H, W]), got {tuple(images.shape)}"
            )
        if src.ndim != 1 or boxes.shape != (src.shape[0], 4):
            raise ValueError(
                f"src must be [P] and boxes [P, 4], got {tuple(src.shape)} and {tuple(boxes.shape)}"
            )
        device = images.device
        num_images, height, width = images.shape[0], images.shape[2], images.shape[3]
        size = self.out_size
        with torch.autocast(device_type=device.type, enabled=False):
            src = src.to(device=device, dtype=torch.long)
            params = self.sample(boxes.to(device=device, dtype=torch.float32), generator)
            mean, std = self.mean.to(device), self.std.to(device)
            out = torch.empty(src.shape[0], 3, size, size, device=device)
            per_chunk = src.shape[0]
            if device.type == "cpu":
                per_chunk = max(1, _CPU_CHUNK_BYTES // (3 * size * size * 4))
            for ids, which, per_image in _chunks(src, num_images, max(1, per_chunk)):
                chunk = params.select(ids)
                grid = crop_grid(chunk.crops, chunk.flip, (height, width), size)
                x = resample_patches(_as_float_rgb(images[which]), grid, per_image)
                if self.enabled:
                    x = self.apply_color(x, chunk)
                out.index_copy_(0, ids, normalize_(x, mean, std))  # not out[ids] =: see _apply_where
            return out
