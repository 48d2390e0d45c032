"""Image encoding for ``jigclu data convert``: PNG (lossless) or JPEG, and the stream of encoded rows.

:class:`EncodedRows` walks one split in a given order and encodes it one row group at a time
(threaded: zlib and libjpeg release the GIL), so a converter holds one row group in memory, never a
whole shard or dataset.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from jigclu.data.images import ImageDataset
from jigclu.errors import DataError

FORMATS = ("png", "jpeg")
MAX_JPEG_QUALITY = 95  # Pillow: above 95 the files grow a lot for no visible gain

Encoder = Callable[[torch.Tensor], bytes]


def _pil(image: torch.Tensor) -> Image.Image:
    """A ``uint8 [C, H, W]`` tensor (C = 1 or 3) as a PIL image ("L" or "RGB")."""
    arr = image.numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
    return Image.fromarray(arr)


def encode_png(image: torch.Tensor) -> bytes:
    """Encode a ``uint8 [C, H, W]`` tensor (C = 1 or 3) as PNG bytes (lossless)."""
    buf = io.BytesIO()
    _pil(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: torch.Tensor, quality: int = 90) -> bytes:
    """Encode a ``uint8 [C, H, W]`` tensor as JPEG bytes: C = 1 as 8-bit grayscale, C = 3 as colour."""
    if image.shape[0] not in (1, 3):
        raise DataError(f"JPEG needs 1 or 3 channels, got an image with {image.shape[0]}; use --format png")
    buf = io.BytesIO()
    _pil(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def check_format(image_format: str) -> str:
    """``"png"`` or ``"jpeg"`` (``"jpg"`` and any case accepted); anything else is a :class:`DataError`."""
    name = str(image_format).strip().lower()
    name = "jpeg" if name == "jpg" else name
    if name not in FORMATS:
        raise DataError(f"image format must be png or jpeg, got {image_format!r}")
    return name


def check_quality(quality: int) -> int:
    """A JPEG quality in 1..95."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= MAX_JPEG_QUALITY:
        raise DataError(f"JPEG quality must be an integer from 1 to {MAX_JPEG_QUALITY}, got {quality!r}")
    return int(quality)


def encoder(image_format: str, quality: int = 90) -> Encoder:
    """The encoding function for ``image_format`` at ``quality`` (used by JPEG; checked for both)."""
    name, q = check_format(image_format), check_quality(quality)
    if name == "png":
        return encode_png
    return lambda image: encode_jpeg(image, q)


def encode_many(ds: ImageDataset, indices: np.ndarray, encode: Encoder) -> list[bytes]:
    """``encode(ds[i][0])`` for each ``i`` in ``indices``, in order (threaded for big batches)."""

    def one(i: int) -> bytes:
        image, _ = ds[int(i)]
        return encode(image)

    workers = min(4, os.cpu_count() or 1)
    if workers > 1 and len(indices) >= 256:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, indices, chunksize=64))
    return [one(i) for i in indices]


@dataclass
class Rows:
    """A run of encoded rows: image bytes, labels and dataset-wide ids."""

    images: list[bytes]
    labels: list[int]
    ids: list[int]


class EncodedRows:
    """The rows of ``ds`` in ``order``, encoded ``batch`` at a time; ids count on from ``first_id``."""

    def __init__(self, ds: ImageDataset, order: np.ndarray, encode: Encoder, batch: int, first_id: int = 0) -> None:
        self.ds, self.order, self.encode, self.batch = ds, order, encode, batch
        self.labels = ds.labels.numpy()
        self._next = 0  # position in ``order`` of the next row to encode
        self._first_id = first_id
        self._pending: deque[tuple[bytes, int, int]] = deque()

    def _fill(self) -> None:
        if self._pending or self._next >= len(self.order):
            return
        chunk = self.order[self._next : self._next + self.batch]
        images = encode_many(self.ds, chunk, self.encode)
        ids = range(self._first_id + self._next, self._first_id + self._next + len(chunk))
        self._pending.extend(zip(images, self.labels[chunk].tolist(), ids))
        self._next += len(chunk)

    @property
    def exhausted(self) -> bool:
        self._fill()
        return not self._pending

    def take(self, max_rows: int, max_bytes: float) -> Rows:
        """Up to ``max_rows`` rows, stopping after the row whose image bytes reach ``max_bytes``."""
        out = Rows([], [], [])
        size = 0
        while len(out.images) < max_rows and size < max_bytes and not self.exhausted:
            image, label, row_id = self._pending.popleft()
            out.images.append(image)
            out.labels.append(label)
            out.ids.append(row_id)
            size += len(image)
        return out
