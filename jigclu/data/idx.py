"""MNIST-style IDX files (``mnist:DIR``, ``fashion_mnist[:DIR]``)."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from jigclu.data.images import ImageDataset
from jigclu.data.request import Request, in_memory, local_dir
from jigclu.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX ``.gz`` files."""

HINTS = {
    "fashion_mnist": "install with 'apt-get install dataset-fashion-mnist' or pass fashion_mnist:/path",
    "mnist": (
        "put the MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-..., .gz or not) "
        "in one directory and pass mnist:/path"
    ),
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_UBYTE = 0x08  # the only element type MNIST-style files use


def _idx_names(prefix: str, what: str) -> list[str]:
    """File names an IDX file may have (``train-images-idx3-ubyte`` or Kaggle's ``train-images.idx3-ubyte``)."""
    ndim = 3 if what == "images" else 1
    return [f"{prefix}-{what}-idx{ndim}-ubyte", f"{prefix}-{what}.idx{ndim}-ubyte"]


def _find_idx(root: str, prefix: str, what: str) -> str | None:
    """Path of an IDX file under ``root`` (also torchvision's ``MNIST/raw`` layout), raw or ``.gz``."""
    dirs = [root] + [os.path.join(root, *sub, "raw") for sub in ((), ("MNIST",), ("FashionMNIST",))]
    for d in dirs:
        for base in _idx_names(prefix, what):
            for ext in ("", ".gz"):  # raw first: no decompression needed
                path = os.path.join(d, base + ext)
                if os.path.isfile(path):
                    return path
    return None


def read_idx(path: str, ndim: int, kind: str = "idx") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped or not) into an array of ``ndim`` dims.

    The header is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian uint32 sizes; the
    payload must hold exactly their product of bytes.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # sniff gzip instead of trusting the file name
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"{kind}: cannot read {path}: {exc}") from exc
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
        found = f"0x{magic:08x}" if magic is not None else f"a {len(raw)}-byte file"
        raise DataError(
            f"{kind}: {path} is not an IDX file of {ndim}-d unsigned bytes "
            f"(magic number {found}, expected 0x{expected_magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{kind}: {path} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise DataError(
            f"{kind}: {path} holds {len(raw) - header} data bytes but its IDX header "
            f"promises {'x'.join(map(str, dims))} = {size}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


def load_idx(req: Request) -> ImageDataset:
    """MNIST-style IDX files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    root = local_dir(req, default=FASHION_MNIST_DIR if req.kind == "fashion_mnist" else None)
    prefix = _IDX_PREFIX[req.split]
    paths = {}
    for what in ("images", "labels"):
        path = _find_idx(root, prefix, what)
        if path is None:
            looked = f"{_idx_names(prefix, what)[0]}[.gz]"
            raise DataError(f"{req.kind}: no IDX {what} file in {root} (looked for {looked}); {req.hint}")
        paths[what] = path
    images = read_idx(paths["images"], 3, req.kind)
    labels = read_idx(paths["labels"], 1, req.kind).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"{req.kind}: {paths['images']} has {len(images)} images but {paths['labels']} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= 10:
        raise DataError(f"{req.kind}: {paths['labels']} has label {labels.max()}; MNIST-style labels are 0..9")
    classes = FASHION_MNIST_CLASSES if req.kind == "fashion_mnist" else [str(c) for c in range(10)]
    return in_memory(req, images[:, None], labels, list(classes))
