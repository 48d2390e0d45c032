"""Lazily decoded images: where the encoded bytes come from, decoding, load-time verification.

:class:`EncodedImageDataset` keeps the encoded bytes (files of an ImageFolder tree, or the
``image`` column of Parquet shards, behind a :class:`BlobSource`) and decodes one image per
``__getitem__``, so datasets larger than memory still work. Every image is *verified* at load
time (:func:`verify_blobs`) so that a corrupt file is found (and skipped or reported) before
training starts, not hours into an epoch.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from jigclu.data.decode import decode_array
from jigclu.data.images import ImageDataset, ImageSize
from jigclu.errors import DataError

ON_CORRUPT_CHOICES = ("skip", "fail")

# PIL modes that carry no colour; a lazy dataset made only of these is decoded as 1-channel "L".
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La"})


class CorruptDataWarning(UserWarning):
    """Some images could not be decoded and were left out (``on_corrupt="skip"``)."""


def check_on_corrupt(on_corrupt: str) -> None:
    """Reject an unknown ``on_corrupt`` policy with a one-line error."""
    if on_corrupt not in ON_CORRUPT_CHOICES:
        raise DataError(f"on_corrupt must be one of {', '.join(ON_CORRUPT_CHOICES)}; got {on_corrupt!r}")


class BlobSource(Protocol):
    """Where a lazy dataset's encoded images come from (files on disk, a Parquet column)."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> bytes | None:
        """The encoded bytes of item ``index`` (``None`` for a null Parquet cell)."""
        ...

    def describe(self, index: int) -> str:
        """Where item ``index`` lives, for error messages (a file path, ``file row N``)."""
        ...

    def take(self, indices: np.ndarray) -> BlobSource:
        """The items at ``indices``, in that order."""
        ...


class EncodedImageDataset(ImageDataset):
    """An :class:`ImageDataset` that decodes each image with PIL on access.

    Every item is converted to ``"L"`` (``channels == 1``) or ``"RGB"`` (``channels == 3``) and
    resized (bilinear, antialiased when shrinking) to ``image_size`` so that batches stack.
    """

    def __init__(
        self,
        blobs: BlobSource,
        labels: torch.Tensor,
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        channels: int,
        image_size: ImageSize,
        num_corrupt: int = 0,
    ) -> None:
        if len(blobs) != len(labels):
            raise DataError(f"{name}: {len(blobs)} images but {len(labels)} labels")
        if channels not in (1, 3):
            raise DataError(f"{name}: channels must be 1 or 3, got {channels}")
        super().__init__(name=name, split=split, classes=classes, labels=labels, channels=channels,
                         image_size=image_size, num_corrupt=num_corrupt)
        self.blobs = blobs

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        data = self.blobs.read(index)
        mode = "L" if self.channels == 1 else "RGB"
        if data is None:
            raise DataError(f"{self.name}: {self.blobs.describe(index)}: image is null")
        try:
            image = decode_image(data, mode, self.image_size)
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
            # Load-time verification cannot catch everything (a JPEG's entropy-coded data is only
            # checked by a full decode), so a late failure still names the file.
            raise DataError(f"{self.name}: cannot decode {self.blobs.describe(index)}: {exc}") from exc
        return image, self._label_list[index]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> EncodedImageDataset:
        idx = np.asarray(torch.as_tensor(indices, dtype=torch.long).numpy())
        return EncodedImageDataset(
            self.blobs.take(idx),
            self.labels[torch.from_numpy(idx)],
            name=self.name,
            split=self.split,
            classes=self.classes,
            channels=self.channels,
            image_size=self.image_size,
        )


def decode_image(data: bytes, mode: str, size: ImageSize | None) -> torch.Tensor:
    """Decode encoded image bytes to a ``uint8 [C, H, W]`` tensor in ``mode`` at ``size``."""
    return torch.from_numpy(decode_array(data, mode, size))


@dataclass(frozen=True)
class Probe:
    """What :func:`probe_image` learned about one encoded image."""

    ok: bool
    mode: str = ""
    size: ImageSize = (0, 0)  # (H, W)
    error: str = ""


def probe_image(data: bytes | None) -> Probe:
    """Check that ``data`` is a well-formed image without fully decoding it.

    ``Image.verify`` walks the file structure (for PNG: every chunk and its CRC), which catches
    truncated and garbled files at a fraction of the cost of a full decode.
    """
    if data is None:
        return Probe(False, error="image is null")
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode, (w, h) = img.mode, img.size
            img.verify()
    except Exception as exc:  # noqa: BLE001 - PIL signals corruption through many exception types
        return Probe(False, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return Probe(True, mode=mode, size=(h, w))


@dataclass(frozen=True)
class VerifiedBlobs:
    """Result of :func:`verify_blobs`: which items to keep and what they look like."""

    keep: np.ndarray  # int64 indices of the decodable items, in order
    grayscale: bool  # every kept image has a colourless mode
    first_size: ImageSize | None  # (H, W) of the first kept image
    num_corrupt: int


def verify_blobs(blobs: BlobSource, *, name: str, on_corrupt: str) -> VerifiedBlobs:
    """Probe every image of ``blobs``; skip (with one warning) or fail on corrupt ones."""
    check_on_corrupt(on_corrupt)
    n = len(blobs)

    def probe(i: int) -> Probe:
        try:
            data = blobs.read(i)
        except OSError as exc:
            return Probe(False, error=f"cannot read: {exc}")
        return probe_image(data)

    probes = _parallel_map(probe, range(n))
    bad = [i for i, p in enumerate(probes) if not p.ok]
    if bad and on_corrupt == "fail":
        first = bad[0]
        raise DataError(
            f"{name}: corrupt image {blobs.describe(first)} ({probes[first].error}); "
            f"{len(bad)} of {n} images are undecodable (load with on_corrupt='skip' to leave them out)"
        )
    keep = np.array([i for i, p in enumerate(probes) if p.ok], dtype=np.int64)
    if len(keep) == 0:
        raise DataError(
            f"{name}: none of its {n} images could be decoded (first: {blobs.describe(0)}: {probes[0].error})"
        )
    if bad:
        first = bad[0]
        warnings.warn(
            f"{name}: skipped {len(bad)} corrupt image(s) of {n} (first: {blobs.describe(first)}: "
            f"{probes[first].error})",
            CorruptDataWarning,
            stacklevel=2,
        )
    kept = [probes[i] for i in keep]
    return VerifiedBlobs(
        keep=keep,
        grayscale=all(p.mode in _GRAYSCALE_MODES for p in kept),
        first_size=kept[0].size,
        num_corrupt=len(bad),
    )


def _parallel_map(fn: Callable[[int], Probe], items: range) -> list[Probe]:
    """``[fn(i) for i in items]``, threaded for large inputs (file reads and zlib release the GIL)."""
    if len(items) < 512:
        return [fn(i) for i in items]
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items, chunksize=256))
