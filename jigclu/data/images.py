"""The one dataset type every trainer sees: uint8 images plus integer labels.

Two storage strategies sit behind :class:`ImageDataset`:

* :class:`TensorImageDataset` (here) holds every image in one ``uint8`` tensor ``[N, C, H, W]``.
  Small real datasets (digits, MNIST-style IDX, CIFAR) fit easily, and indexing a tensor is far
  faster than decoding files, so these never touch PIL after loading.
* :class:`~jigclu.data.encoded.EncodedImageDataset` keeps the encoded bytes (files of an
  ImageFolder tree, or the ``image`` column of Parquet shards) and decodes one image per
  ``__getitem__``, so datasets larger than memory still work (see :mod:`jigclu.data.encoded`).

Images stay ``uint8`` all the way to the training device: augmentation and normalisation run
batched on the device (see :mod:`jigclu.augment`), which keeps data-loader workers cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from jigclu.errors import DataError

ImageSize = tuple[int, int]
"""``(height, width)`` in pixels (torch order; PIL's ``Image.size`` is ``(width, height)``)."""


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
        _, channels, height, width = images.shape
        super().__init__(name=name, split=split, classes=classes, labels=labels, channels=channels,
                         image_size=(height, width), num_corrupt=num_corrupt)
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
