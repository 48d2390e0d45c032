"""Datasets, Parquet conversion and world-size-independent loading for jigclu.

The one path for the data: a source spec (``digits``, ``fashion_mnist``, ``cifar10:DIR``,
``folder:DIR``, ``parquet:URI``, ...) -> :func:`load_dataset` -> :class:`ImageDataset` of uint8
images and labels -> :class:`ShardSampler` + :func:`collate_uint8` -> uint8 batches.
"""

from jigclu.data.convert import convert_main, encode_png, write_parquet
from jigclu.data.datasets import KNOWN_KINDS, load_dataset, parse_spec
from jigclu.data.encoded import CorruptDataWarning, EncodedImageDataset
from jigclu.data.idx import FASHION_MNIST_DIR, read_idx
from jigclu.data.images import ImageDataset, TensorImageDataset, resize_uint8
from jigclu.data.loader import ShardSampler, collate_uint8, make_loader
from jigclu.data.splits import balanced_subset_indices, seeded_subset, split_validation, training_splits
from jigclu.data.request import MissingSplitError

__all__ = [
    "FASHION_MNIST_DIR",
    "KNOWN_KINDS",
    "CorruptDataWarning",
    "EncodedImageDataset",
    "ImageDataset",
    "MissingSplitError",
    "ShardSampler",
    "TensorImageDataset",
    "balanced_subset_indices",
    "collate_uint8",
    "convert_main",
    "encode_png",
    "load_dataset",
    "make_loader",
    "parse_spec",
    "read_idx",
    "resize_uint8",
    "seeded_subset",
    "split_validation",
    "training_splits",
    "write_parquet",
]
