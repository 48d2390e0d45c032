"""Datasets, Parquet conversion and world-size-independent loading for jigclu.

The one path for the data: a source spec (``digits``, ``fashion_mnist``, ``cifar10:DIR``,
``folder:DIR``, ``parquet:URI``, ...) -> :func:`load_dataset` -> :class:`ImageDataset` of uint8
images and labels -> :class:`ShardSampler` + :func:`collate_uint8` -> uint8 batches.

The names below are imported on first use: a process that imports only a torch-free module of this
package (a Ray Data decode task: :mod:`jigclu.data.decode`) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "convert": ("convert_main", "encode_png", "write_parquet"),
    "datasets": ("KNOWN_KINDS", "load_dataset", "parse_spec"),
    "encoded": ("CorruptDataWarning", "EncodedImageDataset"),
    "idx": ("FASHION_MNIST_DIR", "read_idx"),
    "images": ("ImageDataset", "TensorImageDataset", "resize_uint8"),
    "loader": ("ShardSampler", "collate_uint8", "make_loader"),
    "splits": ("balanced_subset_indices", "seeded_subset", "split_validation", "training_splits"),
    "request": ("MissingSplitError",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'jigclu.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jigclu.data.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_HOME_OF)
