"""The jigsaw operations of Jigsaw Clustering (Chen, Liu, Jia; CVPR 2021), for any m x m grid.

One training step turns ``n`` images into ``n`` montages:

1. **split** each image into ``m*m`` overlapping boxes (:func:`grid_boxes`),
2. **transform** every patch independently (:class:`jigclu.augment.PatchAugment`),
3. draw one permutation ``p`` of the ``n*m*m`` patches,
4. **stitch** the permuted patches into ``n`` montages (:func:`stitch`),
5. after the backbone, **decouple** each montage's feature map into ``m*m`` per-patch
   features (:func:`decouple`).

Ordering is what makes the labels trivial. Patches are laid out *position-major*: index ``k``
holds image ``k % n`` at grid position ``k // n`` (positions row-major). Stitching fills
montage slots in the same order (slot ``j`` = montage ``j % n``, cell ``j // n``), and
decoupling returns features in slot order, so the patch at slot ``j`` is patch ``p[j]`` and
its labels are ``p[j] % n`` (which image) and ``p[j] // n`` (which position).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def grid_boxes(height: int, width: int, grid: int, cross_ratio: float) -> Tensor:
    """Pixel boxes ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of the ``grid*grid`` cells, row-major.

    Each edge between two cells is pushed outwards by ``cross_ratio * 2 / grid`` of the image
    side, so neighbouring crops overlap; edges on the image border stay put. At ``grid=2`` this
    is exactly the reference implementation's ``JigCluTransform``: quadrant boxes extended by
    ``cross_ratio`` of the side towards the centre, ``(0, 0, w//2 + c*w, h//2 + c*h)`` and so
    on, rounded the way PIL's ``Image.crop`` rounds (Python ``round``).
    """
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    over_x = cross_ratio * 2 / grid * width
    over_y = cross_ratio * 2 / grid * height
    boxes = []
    for row in range(grid):
        for col in range(grid):
            x0 = 0 if col == 0 else (col * width) // grid - over_x
            x1 = width if col == grid - 1 else ((col + 1) * width) // grid + over_x
            y0 = 0 if row == 0 else (row * height) // grid - over_y
            y1 = height if row == grid - 1 else ((row + 1) * height) // grid + over_y
            box = [max(0, round(x0)), max(0, round(y0)), min(width, round(x1)), min(height, round(y1))]
            boxes.append(box)
    return torch.tensor(boxes, dtype=torch.float32)


def patch_layout(n: int, height: int, width: int, grid: int, cross_ratio: float,
                 device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Source image index and box of every patch, in position-major order.

    Returns ``src`` (long ``[n*m*m]``, ``src[k] = k % n``) and ``boxes`` (``[n*m*m, 4]``,
    the box of grid position ``k // n``).
    """
    cells = grid_boxes(height, width, grid, cross_ratio).to(device)
    src = torch.arange(n, device=device).repeat(grid * grid)
    boxes = cells.repeat_interleave(n, dim=0)
    return src, boxes


def jigsaw_labels(perm: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Clustering label (source image) and location label (grid position) of every slot."""
    return perm % n, torch.div(perm, n, rounding_mode="floor")


def stitch(patches: Tensor, grid: int, montages: slice | None = None) -> Tensor:
    """Stitch already-permuted patches ``[m*m*n, C, s, s]`` into montages ``[n, C, m*s, m*s]``.

    Slot ``j`` goes to montage ``j % n``, cell ``j // n`` (cells row-major). ``montages``
    selects a contiguous range of montages to build (one worker's share of a global batch)
    without materialising the others.
    """
    cells = grid * grid
    total, channels, s, s2 = patches.shape
    if total % cells:
        raise ValueError(f"{total} patches do not fill {grid}x{grid} montages")
    n = total // cells
    view = patches.view(grid, grid, n, channels, s, s2)
    if montages is not None:
        view = view[:, :, montages]
        n = view.shape[2]
    # (row, col, montage, C, y, x) -> (montage, C, row, y, col, x): row-major cells.
    return view.permute(2, 3, 0, 4, 1, 5).reshape(n, channels, grid * s, grid * s2)


def decouple(features: Tensor, grid: int) -> Tensor:
    """Per-patch features ``[m*m*n, d]`` in slot order from montage feature maps ``[n, d, h, w]``.

    Like the reference, the map is first bilinearly resized to the next multiple of ``m``
    (7x7 -> 8x8 at m = 2) so every cell pools the same number of positions, then
    adaptive-average-pooled to ``m x m``.
    """
    n, d, h, w = features.shape
    th, tw = grid * math.ceil(h / grid), grid * math.ceil(w / grid)
    if (th, tw) != (h, w):
        features = F.interpolate(features, size=(th, tw), mode="bilinear", align_corners=False)
    pooled = F.adaptive_avg_pool2d(features, grid)  # [n, d, m, m]
    # slot j = cell * n + montage, cell row-major
    return pooled.permute(2, 3, 0, 1).reshape(grid * grid * n, d)


def random_permutation(size: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """The shared permutation of one step, a pure function of ``seed``.

    Every worker derives the same permutation from the same (run seed, epoch, step) seed, so
    nothing needs to be broadcast and a resumed run redraws identical permutations.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(size, generator=gen).to(device)


def step_seed(seed: int, epoch: int, step: int, salt: int = 0) -> int:
    """A 63-bit seed for (run seed, epoch, step), stable across processes and world sizes."""
    mix = (seed * 1_000_003 + epoch) * 1_000_033 + step
    mix = (mix * 6364136223846793005 + 1442695040888963407 + salt * 0x9E3779B97F4A7C15) % (1 << 63)
    return int(mix)
