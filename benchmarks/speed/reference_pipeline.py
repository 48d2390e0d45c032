"""The reference implementation's per-image PIL augmentation, for speed comparisons.

JigClu's public code (dvlab-research/JigsawClustering, ``JigCluTransform`` + the MoCo v2
augmentation list in ``main.py``) cuts each PIL image into 4 overlapping quadrant crops and runs
every crop through torchvision's PIL transforms, one image at a time on data-loader workers.
This module rebuilds that pipeline so :mod:`jigclu.augment` can be timed against it; it is not
used for training.

Run ``python -m benchmarks.speed.reference_pipeline`` from the repository root (with ``jigclu``
installed) to print images/s on one CPU thread for both pipelines.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PILGaussianBlur:
    """SimCLR's Gaussian blur as MoCo v2 / JigClu apply it: PIL blur, sigma ~ U[0.1, 2]."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def quadrant_boxes(width: int, height: int, cross: float) -> list[tuple[float, float, float, float]]:
    """The reference's 4 overlapping crop boxes (PIL ``crop`` boxes, x1/y1 exclusive).

    Order as in the reference: top-left, bottom-left, top-right, bottom-right.
    """
    cw, ch = cross * width, cross * height
    return [
        (0, 0, width // 2 + cw, height // 2 + ch),
        (0, height // 2 - ch, width // 2 + cw, height),
        (width // 2 - cw, 0, width, height // 2 + ch),
        (width // 2 - cw, height // 2 - ch, width, height),
    ]


def reference_transform(patch_size: int, cross: float = 0.3) -> Callable[[Image.Image], list[Tensor]]:
    """Reference JigClu transform: PIL image -> 4 augmented, normalised ``[3, S, S]`` patches."""
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(patch_size, scale=(0.2, 1.0)),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([PILGaussianBlur((0.1, 2.0))], p=0.5),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )

    def transform(img: Image.Image) -> list[Tensor]:
        return [augment(img.crop(box)) for box in quadrant_boxes(img.width, img.height, cross)]

    return transform


def _synthetic_images(n: int, size: int, seed: int = 0) -> Tensor:
    """uint8 ``[n, 3, size, size]`` images with smooth structure plus noise (content-agnostic timing)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return (noisy * 255).round().to(torch.uint8)


def time_reference(images: Tensor, patch_size: int, repeats: int) -> float:
    """Images/s of :func:`reference_transform` over ``images`` (uint8 ``[n, 3, H, W]``)."""
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    transform = reference_transform(patch_size)
    transform(pil[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for img in pil:
            transform(img)
    return repeats * len(pil) / (time.perf_counter() - start)


def time_batched(
    images: Tensor, patch_size: int, repeats: int, batch: int, float_input: bool = True
) -> float:
    """Images/s of :class:`jigclu.augment.PatchAugment` on the same images, ``batch`` at a time.

    ``float_input``: convert the whole uint8 batch with ``to_float_rgb`` first (as the trainer
    does) instead of handing ``PatchAugment`` the uint8 batch to convert chunk by chunk.
    """
    from jigclu.augment import PatchAugment, to_float_rgb

    n, _, height, width = images.shape
    boxes_one = torch.tensor(quadrant_boxes(width, height, 0.3), dtype=torch.float32)
    augment = PatchAugment(patch_size)
    g = torch.Generator().manual_seed(0)

    def run(chunk: Tensor) -> Tensor:
        b = chunk.shape[0]
        src = torch.arange(b).repeat(4)  # position-major, as jigclu.jigsaw lays patches out
        boxes = boxes_one.repeat_interleave(b, dim=0)
        return augment(to_float_rgb(chunk) if float_input else chunk, src, boxes, g)

    run(images[:batch])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, n, batch):
            run(images[i : i + batch])
    return repeats * n / (time.perf_counter() - start)


def main() -> None:
    """Print images/s (one CPU thread) of the reference and the batched pipeline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    for size, patch in ((256, 112), (32, 16)):
        images = _synthetic_images(args.images, size)
        ref = time_reference(images, patch, args.repeats)
        ours = time_batched(images, patch, args.repeats, args.batch)
        ours_uint8 = time_batched(images, patch, args.repeats, args.batch, float_input=False)
        print(
            f"{size}px -> {patch}px, 4 patches/image, 1 thread: reference {ref:8.1f} img/s | "
            f"batched {ours:8.1f} img/s (x{ours / ref:.2f}) | uint8 in {ours_uint8:8.1f} img/s"
        )


if __name__ == "__main__":
    main()
