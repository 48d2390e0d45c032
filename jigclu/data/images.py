"""The one dataset type every trainer sees: uint8 images plus integer labels.

Two storage strategies sit behind :class:`ImageDataset`:

* :class:`TensorImageDataset` holds every image in one ``uint8`` tensor ``[N, C, H, W]``.
  Small real datasets (digits, MNIST-style IDX, CIFAR) fit easily, and indexing a tensor is far
  faster than decoding files, so these never touch PIL after loading.
* :class:`EncodedImageDataset` keeps the encoded bytes (files of an ImageFolder tree, or the
  ``image`` column of Parquet shards) and decodes one image per ``__getitem__``, so datasets larger
  than memory still work. Every image is *verified* at load time so that a corrupt file is found
  (and skipped or reported) before training starts, not hours into an epoch.

Images stay ``uint8`` all the way to the training device: augmentation and normalisation run
batched on the device (see ``jigclu/augment.py``), which keeps data-loader workers cheap.
"""

from __future__ import annotations

import io
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from jigclu.errors import DataError

ImageSize = tuple[int, int]
"""``(height, width)`` in pixels (torch order; PIL's ``Image.size`` is ``(width, height)``)."""

ON_CORRUPT_CHOICES = ("skip", "fail")

# PIL modes that carry no colour; a lazy dataset made only of these is decoded as 1-channel "L".
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La"})


class CorruptDataWarning(UserWarning):
    """Some images could not be decoded and were left out (``on_corrupt="skip"``)."""


def as_size(image_size: int | Sequence[int] | None) -> ImageSize | None:
    """Normalise an ``image_size`` argument (side length or ``(H, W)``) to ``(H, W)``."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        size: tuple[int, ...] = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size[0], size[1]


def check_on_corrupt(on_corrupt: str) -> None:
    """Reject an unknown ``on_corrupt`` policy with a one-line error."""
    if on_corrupt not in ON_CORRUPT_CHOICES:
        raise DataError(f"on_corrupt must be one of {', '.join(ON_CORRUPT_CHOICES)}; got {on_corrupt!r}")


# --------------------------------------------------------------------------------------------
# The dataset types
# --------------------------------------------------------------------------------------------


class ImageDataset(Dataset[tuple[torch.Tensor, int]], ABC):
    """A labelled image dataset: ``ds[i] -> (uint8 tensor [C, H, W], int label)``.

    Attributes:
        name: the source spec it was loaded from (``"cifar10:/data/cifar"``), for logs.
        split: ``"train"`` or ``"test"``.
        classes: class names; ``labels`` index into this list.
        num_classes: ``len(classes)``.
        channels: 1 for grayscale sources, 3 for colour.
        labels: ``LongTensor [N]`` of every label, so class-balanced subsets and kNN banks need
            no image decoding.
        image_size: ``(H, W)`` of every item (all items share it, so batches stack).
        num_corrupt: images found undecodable at load time and left out.
        images: the ``uint8 [N, C, H, W]`` tensor for in-memory datasets, ``None`` for lazy ones.
    """

    images: torch.Tensor | None = None

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        labels: torch.Tensor,
        channels: int,
        image_size: ImageSize,
        num_corrupt: int = 0,
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DataError(
                f"{name}: labels must lie in [0, {len(classes)}), found "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.labels = labels
        self.channels = int(channels)
        self.image_size: ImageSize = (int(image_size[0]), int(image_size[1]))
        self.num_corrupt = int(num_corrupt)
        # A Python list makes __getitem__'s label lookup a plain list index (no tensor overhead).
        self._label_list: list[int] = labels.tolist()

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``), including classes with no images in this split."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._label_list)

    @abstractmethod
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` as ``(uint8 [C, H, W], label)``."""

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageDataset:
        """A new dataset of the items at ``indices`` (same classes, channels and image size).

        This generic version is a view that indexes into ``self``; the concrete classes override
        it with flat copies of their storage.
        """
        return _IndexedImageDataset(self, torch.as_tensor(indices, dtype=torch.long))

    def __repr__(self) -> str:
        h, w = self.image_size
        kind = "in-memory" if self.images is not None else "lazy"
        return (
            f"{type(self).__name__}({self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes}, {self.channels}x{h}x{w}, {kind}, corrupt={self.num_corrupt})"
        )

    @staticmethod
    def from_tensors(
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        *,
        classes: Sequence[str] | None = None,
        name: str = "tensors",
        split: str = "train",
    ) -> TensorImageDataset:
        """Wrap an existing ``uint8 [N, C, H, W]`` tensor and its labels (handy in tests)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if classes is None:
            classes = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
        return TensorImageDataset(images, labels, name=name, split=split, classes=classes)


class _IndexedImageDataset(ImageDataset):
    """The items of ``parent`` at ``indices`` (see :meth:`ImageDataset.subset`)."""

    def __init__(self, parent: ImageDataset, indices: torch.Tensor) -> None:
        super().__init__(
            name=parent.name,
            split=parent.split,
            classes=parent.classes,
            labels=parent.labels[indices],
            channels=parent.channels,
            image_size=parent.image_size,
        )
        self.parent = parent
        self.indices: list[int] = indices.tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.parent[self.indices[index]]


class TensorImageDataset(ImageDataset):
    """An :class:`ImageDataset` held in one ``uint8 [N, C, H, W]`` tensor."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        num_corrupt: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(
                f"{name}: images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
        super().__init__(
            name=name,
            split=split,
            classes=classes,
            labels=labels,
            channels=images.shape[1],
            image_size=(images.shape[2], images.shape[3]),
            num_corrupt=num_corrupt,
        )
        self.images = images.contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        assert self.images is not None
        # clone: callers may augment in place; they must never write into the shared tensor.
        return self.images[index].clone(), self._label_list[index]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TensorImageDataset:
        assert self.images is not None
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(
            self.images[idx], self.labels[idx], name=self.name, split=self.split, classes=self.classes
        )


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


class FileBlobs:
    """Encoded images stored one per local file (an ImageFolder tree)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        with open(self.paths[index], "rb") as f:
            return f.read()

    def describe(self, index: int) -> str:
        return self.paths[index]

    def take(self, indices: np.ndarray) -> FileBlobs:
        return FileBlobs([self.paths[int(i)] for i in indices])


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
        super().__init__(
            name=name,
            split=split,
            classes=classes,
            labels=labels,
            channels=channels,
            image_size=image_size,
            num_corrupt=num_corrupt,
        )
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


# --------------------------------------------------------------------------------------------
# Decoding, verification, resizing
# --------------------------------------------------------------------------------------------


def decode_image(data: bytes, mode: str, size: ImageSize | None) -> torch.Tensor:
    """Decode encoded image bytes to a ``uint8 [C, H, W]`` tensor in ``mode`` at ``size``."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        out = img if img.mode == mode else img.convert(mode)
        if size is not None and out.size != (size[1], size[0]):
            # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
            out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.array(out, dtype=np.uint8)  # a writable copy, so torch.from_numpy is safe
    if arr.ndim == 2:
        return torch.from_numpy(arr).unsqueeze(0)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


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


def resize_uint8(images: torch.Tensor, size: ImageSize, chunk: int = 4096) -> torch.Tensor:
    """Resize a ``uint8 [N, C, H, W]`` tensor to ``size`` with antialiased bilinear filtering.

    Works in chunks so that the float copy never exceeds ``chunk`` images.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], *size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].float()
        block = F.interpolate(block, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = block.round_().clamp_(0, 255).to(torch.uint8)
    return out
