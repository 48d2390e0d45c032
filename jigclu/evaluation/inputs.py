"""What an evaluation feeds the network: uint8 images resized to the evaluation side and normalised,
on the device (the kNN monitor, the probe, the downstream classifier's scoring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from jigclu.augment import IMAGENET_MEAN, IMAGENET_STD, to_float_rgb


def eval_images(images: Tensor, size: int, device: torch.device | str) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> normalised float ``[B, 3, size, size]`` on ``device``."""
    x = to_float_rgb(images.to(device, non_blocking=True))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


__all__ = ["eval_images"]
