"""Pieces every trainer shares: seeding, eval preprocessing, schedules, dataset subsets."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from jigclu.augment import IMAGENET_MEAN, IMAGENET_STD, to_float_rgb
from jigclu.data import ImageDataset, load_dataset
from jigclu.data.loader import VAL_SALT, stratified
from jigclu.errors import DataError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states as a checkpoint can hold them: tensors and plain values only,
    since checkpoints load with ``weights_only=True`` (numpy's state becomes a tensor)."""
    _kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only onto as many devices as saved them)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def eval_images(images: Tensor, size: int, device: torch.device | str) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> normalised float ``[B, 3, size, size]`` on ``device``."""
    x = to_float_rgb(images.to(device, non_blocking=True))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def cosine_lambda(total_steps: int, warmup_steps: int = 0):
    """LR multiplier: linear warm-up, then cosine decay to 0 over ``total_steps`` (per step)."""

    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def stack_items(dataset: Dataset, indices: Tensor | list[int]) -> tuple[Tensor, Tensor]:
    """Materialise ``dataset[indices]`` as one uint8 image tensor and a label tensor."""
    images = getattr(dataset, "images", None)
    idx = torch.as_tensor(indices, dtype=torch.long)
    if images is not None:
        return images[idx], dataset.labels[idx]
    items = [dataset[int(i)] for i in idx]
    return torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


def seeded_subset(n: int, limit: int | None, seed: int) -> Tensor:
    """A seeded random subset of ``range(n)`` of size ``limit`` (all of it when None)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:limit].sort().values


def split_validation(dataset: ImageDataset, val_size: float | None, seed: int,
                     what: str = "data") -> tuple[ImageDataset, ImageDataset | None]:
    """``(train, val)``: a seeded, class-balanced validation split carved from ``dataset``.

    ``val_size`` is a count (>= 1) or a fraction (< 1) of ``dataset``; None keeps everything for
    training (``val`` is None). The split depends on the labels and ``seed`` (``data.val_seed``)
    only, so every trial of a sweep, and runs of any training seed, hold out the same images.
    """
    if val_size is None:
        return dataset, None
    n = len(dataset)
    count = int(val_size) if val_size >= 1 else round(val_size * n)
    if count >= n:
        raise DataError(f"data.val_size={val_size:g} asks for {count} validation images but {what} has only "
                        f"{n} training images; use a smaller count or a fraction such as 0.1")
    if count < dataset.num_classes:
        raise DataError(f"data.val_size={val_size:g} gives {count} validation images, fewer than the "
                        f"{dataset.num_classes} classes of {what}; use at least one per class")
    val = stratified(torch.as_tensor(dataset.labels, dtype=torch.long), count, seed + VAL_SALT)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return dataset.subset(torch.nonzero(keep).flatten()), dataset.subset(val)


def training_splits(cfg: Any) -> tuple[ImageDataset, ImageDataset | None]:
    """``(train, val)`` of ``cfg``'s data: the validation split (``data.val_size``) is carved from the
    whole training split first, then ``data.limit`` keeps the first N of the remaining images."""
    train = load_dataset(cfg.data.dataset, "train", image_size=cfg.data.image_size, on_corrupt=cfg.data.on_corrupt)
    train, val = split_validation(train, cfg.data.val_size, cfg.data.val_seed, cfg.data.dataset)
    if cfg.data.limit is not None and cfg.data.limit < len(train):
        train = train.subset(torch.arange(cfg.data.limit))
    return train, val
