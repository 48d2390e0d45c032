"""Batched train-time augmentation of the downstream trainers: uint8 ``[B, C, H, W]`` ->
normalised float ``[B, 3, S, S]`` on the training device, from a seeded generator (a resumed
run replays the same crops).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from jigclu.augment import IMAGENET_MEAN, IMAGENET_STD, PatchAugment, to_float_rgb
from jigclu.trainers.protocols import Augment


def _normalise(x: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class RandomResizedCropFlip(nn.Module):
    """RandomResizedCrop(size, scale=(min_scale, 1)) + horizontal flip, one batched resampling.

    Reuses :class:`PatchAugment` with the whole image as the box and every colour op off, so the
    crop geometry is exactly pretraining's (continuous crops, torchvision's 10-try sampling).
    """

    def __init__(self, size: int, min_scale: float = 0.08) -> None:
        super().__init__()
        self.aug = PatchAugment(size, scale=(min_scale, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = images.shape
        boxes = torch.tensor([0.0, 0.0, float(w), float(h)], device=images.device).expand(n, 4)
        return self.aug(images, torch.arange(n, device=images.device), boxes, generator)


class PadCropFlip(nn.Module):
    """CIFAR's RandomCrop(size, padding=4) + horizontal flip: zero-pad, cut a random window.

    The window is gathered with one advanced index per batch (no Python loop over images); a
    flip reverses the window's column indices.
    """

    def __init__(self, size: int, padding: int = 4) -> None:
        super().__init__()
        self.size, self.padding = size, padding

    @torch.no_grad()
    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        x = to_float_rgb(images)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        n, s, p = x.shape[0], self.size, self.padding
        x = F.pad(x, (p, p, p, p))  # black border in pixel space, as torchvision's fill=0
        u = torch.rand(n, 3, generator=generator, device=generator.device).to(x.device)
        ox = (u[:, 0] * (2 * p + 1)).long().clamp_(max=2 * p)
        oy = (u[:, 1] * (2 * p + 1)).long().clamp_(max=2 * p)
        flip = u[:, 2] < 0.5
        ar = torch.arange(s, device=x.device)
        cols = torch.where(flip[:, None], s - 1 - ar, ar) + ox[:, None]  # [n, s]
        rows = ar[None, :] + oy[:, None]  # [n, s]
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [n, s, s, 3]
        return _normalise(out.permute(0, 3, 1, 2).contiguous())


def build_augment(kind: Augment, size: int, min_scale: float) -> nn.Module:
    return RandomResizedCropFlip(size, min_scale) if kind == "rrc" else PadCropFlip(size)


__all__ = ["RandomResizedCropFlip", "PadCropFlip", "build_augment"]
