"""Subsets and splits of a dataset's images, by labels and seeds alone (no image is decoded).

* the validation split (``data.val_size``): seeded, class-balanced, carved from the training images
  before ``data.limit`` (:func:`split_validation`, :func:`training_splits`; a streamed source's
  twin is ``jigclu.data.stream``'s, with the same count rule, :func:`val_count`);
* semi-supervised label subsets (1% / 10%, :func:`balanced_subset_indices`);
* seeded subsets of a split (:func:`seeded_subset`: the monitor's bank and queries, ``eval.val_limit``),
  materialised as tensors by :func:`stack_items`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from jigclu.data.datasets import load_dataset
from jigclu.data.images import ImageDataset
from jigclu.errors import DataError


def balanced_subset_indices(
    labels: torch.Tensor,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a class-balanced labelled subset (for semi-supervised runs: 1% / 10% labels).

    Takes ``per_class`` items of every class, or ``fraction`` of each class (at least one), chosen
    with a generator seeded by ``seed``; returned sorted. Uses labels only, so no image is decoded.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("pass exactly one of fraction or per_class")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator()
    generator.manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        k = per_class if per_class is not None else max(1, round(fraction * len(members)))  # type: ignore[operator]
        perm = torch.randperm(len(members), generator=generator)
        chosen.append(members[perm[: min(k, len(members))]])
    return torch.sort(torch.cat(chosen)).values if chosen else torch.zeros(0, dtype=torch.long)


VAL_SALT = 7919  # the validation split's generator: seed + salt, apart from every other subset's


def stratified(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Exactly ``count`` indices, each class's share proportional to its size (largest remainders)."""
    classes, sizes = torch.unique(labels, return_counts=True)
    exact = sizes.double() * count / len(labels)
    quota = exact.floor().long()
    quota[torch.argsort(exact - quota, descending=True)[:count - int(quota.sum())]] += 1
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls, k in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(chosen).sort().values


def val_count(val_size: float, total: int, classes: int | None, what: str) -> int:
    """How many validation images ``data.val_size`` asks of ``total`` training images (a count >= 1, or a
    fraction < 1); one :class:`DataError` when that leaves no training image or misses a class."""
    count = int(val_size) if val_size >= 1 else round(val_size * total)
    if count >= total or count < 1:
        raise DataError(f"data.val_size={val_size:g} asks for {count} validation images but {what} has only "
                        f"{total} training images; use a smaller count or a fraction such as 0.1")
    if classes is not None and count < classes:
        raise DataError(f"data.val_size={val_size:g} gives {count} validation images, fewer than the "
                        f"{classes} classes of {what}; use at least one per class")
    return count


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
    count = val_count(val_size, n, dataset.num_classes, what)
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


def label_file_entries(path: str) -> list[str]:
    """The entries of a semi labels file (``eval.labels``): one training image per line, by index (or,
    for folder datasets, by name); blank lines and ``#`` comments skipped. One :class:`ConfigError`
    when ``path`` is no readable file or lists nothing."""
    from pathlib import Path

    from jigclu.errors import ConfigError

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"eval.labels: {path!r} is neither a label fraction (1%, 10%, 0.05) nor a file")
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"eval.labels: cannot read {file}: {exc}") from None
    entries = [e for e in (line.split("#", 1)[0].strip() for line in lines) if e]
    if not entries:
        raise ConfigError(f"eval.labels: {file} lists no images")
    return entries


def stack_items(dataset: Dataset, indices: Tensor | list[int]) -> tuple[Tensor, Tensor]:
    """Materialise ``dataset[indices]`` as one uint8 image tensor and a label tensor."""
    images = getattr(dataset, "images", None)
    idx = torch.as_tensor(indices, dtype=torch.long)
    if images is not None:
        return images[idx], dataset.labels[idx]
    items = [dataset[int(i)] for i in idx]
    return torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


__all__ = ["stack_items", "VAL_SALT", "balanced_subset_indices", "label_file_entries", "seeded_subset", "split_validation", "stratified",
           "training_splits", "val_count"]
