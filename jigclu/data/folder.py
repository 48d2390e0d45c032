"""ImageFolder trees (``folder:DIR``): one subfolder of images per class, optionally under
``train/`` and ``val/`` (or ``test/``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from jigclu.data.encoded import EncodedImageDataset, probe_image, verify_blobs
from jigclu.data.images import ImageDataset, ImageSize
from jigclu.data.request import MissingSplitError, Request, local_dir
from jigclu.errors import DataError

HINT = "pass folder:/path to a tree with one subfolder of images per class (optionally under train/ and val/)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


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


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _folder_layout(root: str) -> dict[str, str]:
    """Map split -> directory: ``root/train`` + ``root/val`` (or ``test``), or the whole tree as train.

    A tree is split only when ``train/`` exists and every top-level folder is ``train``, ``val``
    or ``test``, so a dataset that happens to have a class called "train" is not misread.
    """
    top = _subdirs(root)
    if "train" in top and set(top) <= {"train", "val", "test"}:
        layout = {"train": os.path.join(root, "train")}
        for name in ("val", "test"):  # val first: ImageNet's labelled held-out split
            if name in top:
                layout["test"] = os.path.join(root, name)
                break
        return layout
    return {"train": root}


def _image_files(class_dir: str) -> list[str]:
    """Image files under ``class_dir`` (recursively, like torchvision), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def load_folder(req: Request) -> ImageDataset:
    """An ImageFolder tree: class subfolders in sorted order give labels 0..K-1."""
    root = local_dir(req)
    layout = _folder_layout(root)
    if req.split not in layout:
        raise MissingSplitError(
            f"folder: {root} has train/ but no val/ or test/ subfolder, so it has no test split; "
            f"add {os.path.join(root, 'val')} with the same class subfolders"
        )
    # Classes from every split, so that label k means the same class in train and test.
    classes = sorted({c for d in layout.values() for c in _subdirs(d)})
    if not classes:
        raise DataError(f"folder: no class subfolders in {layout[req.split]}; {req.hint}")
    split_dir = layout[req.split]
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        class_dir = os.path.join(split_dir, cls)
        if os.path.isdir(class_dir):
            files = _image_files(class_dir)
            paths.extend(files)
            labels.extend([label] * len(files))
    if not paths:
        raise DataError(
            f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under the class folders of {split_dir}; "
            f"{req.hint}"
        )
    name = f"{req.spec} ({req.split})"
    blobs = FileBlobs(paths)
    checked = verify_blobs(blobs, name=name, on_corrupt=req.on_corrupt)
    size = req.image_size
    if size is None:
        # The first *train* image fixes the size of both splits, so they batch alike.
        size = checked.first_size if req.split == "train" else _first_train_size(layout["train"], classes)
    assert size is not None
    return EncodedImageDataset(
        blobs.take(checked.keep),
        torch.tensor(labels, dtype=torch.long)[torch.from_numpy(checked.keep)],
        name=req.spec,
        split=req.split,
        classes=classes,
        channels=1 if checked.grayscale else 3,
        image_size=size,
        num_corrupt=checked.num_corrupt,
    )


def _first_train_size(train_dir: str, classes: list[str]) -> ImageSize:
    """Size of the first decodable image of the train split (opened lazily, usually just one)."""
    for cls in classes:
        class_dir = os.path.join(train_dir, cls)
        if not os.path.isdir(class_dir):
            continue
        for path in _image_files(class_dir):
            with open(path, "rb") as f:
                probe = probe_image(f.read())
            if probe.ok:
                return probe.size
    raise DataError(f"folder: no decodable train image in {train_dir} to take the image size from; pass image_size")


# --------------------------------------------------------------------------------------------
# Parquet shards (local or cloud)
