"""What every reader receives (:class:`Request`) and the helpers the readers share.

:func:`jigclu.data.datasets.load_dataset` turns its arguments into one :class:`Request` and hands
it to the reader registered for the spec's kind (``jigclu/data/{digits,idx,cifar,folder,parquet}.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import torch

from jigclu import storage
from jigclu.data.decode import resolve
from jigclu.data.images import ImageDataset, ImageSize, TensorImageDataset, resize_uint8
from jigclu.errors import DataError

_SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test"}


class MissingSplitError(DataError):
    """The source exists but has no such split (e.g. a flat ImageFolder asked for ``test``)."""


def normalize_split(split: str) -> str:
    """``"train"`` or ``"test"`` (``"val"`` is an alias of ``"test"``)."""
    try:
        return _SPLIT_ALIASES[split]
    except (KeyError, TypeError):
        raise DataError(f"split must be 'train' or 'test' (or 'val'), got {split!r}") from None


@dataclass(frozen=True)
class Request:
    """One :func:`~jigclu.data.datasets.load_dataset` call, as every reader receives it."""

    spec: str  # as the user wrote it, used as the dataset's name
    kind: str
    location: str  # "" when the spec has no ':LOCATION' part
    split: str  # "train" or "test"
    image_size: ImageSize | None
    on_corrupt: str
    hint: str  # how to get this kind of data, for error messages


Reader = Callable[[Request], ImageDataset]


def local_dir(req: Request, default: str | None = None) -> str:
    """The request's location as an absolute local directory; errors if missing."""
    location = req.location or default
    if not location:
        raise DataError(f"{req.kind} needs a directory: {req.kind}:/path/to/data ({req.hint})")
    if storage.is_uri(location):
        raise DataError(f"{req.kind} reads local directories only, got {location}; use parquet:URI for cloud data")
    path = os.path.abspath(os.path.expanduser(location))
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DataError(f"{req.kind}: {path} {what}; {req.hint}")
    return path


def in_memory(req: Request, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> ImageDataset:
    """Wrap decoded ``uint8 [N, C, H, W]`` arrays, resizing once if ``image_size`` asks for it."""
    if not images.flags.writeable:  # e.g. np.frombuffer over file bytes; torch wants to own it
        images = images.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if req.image_size is not None:
        tensor = resize_uint8(tensor, req.image_size)
    return TensorImageDataset(
        tensor,
        torch.from_numpy(labels.astype(np.int64)),
        name=req.spec,
        split=req.split,
        classes=classes,
    )
