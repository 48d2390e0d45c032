"""Parquet shards (``parquet:DIR|URI``), local or in object storage (``s3://``, ``gs://``).

Each shard has an ``image`` column (encoded bytes), a ``label`` column and an optional ``split``
column; :mod:`jigclu.data.convert` writes them, with metadata that restores class names,
channel count and image size exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch

from jigclu import storage
from jigclu.data.encoded import EncodedImageDataset, verify_blobs
from jigclu.data.images import ImageDataset
from jigclu.data.request import MissingSplitError, Request, resolve
from jigclu.errors import DataError

HINT = "create shards with 'jigclu data convert SRC DEST', then pass parquet:DEST"

# Metadata keys written by jigclu.data.convert.write_parquet and honoured when reading back,
# so that a converted dataset keeps its class names, channel count and image size exactly.
META_CLASSES = b"jigclu.classes"
META_CHANNELS = b"jigclu.channels"
META_IMAGE_SIZE = b"jigclu.image_size"
META_SOURCE = b"jigclu.source"
# How the ``image`` column is encoded ("png" or "jpeg"); informational, the reader decodes by content.
META_IMAGE_FORMAT = b"jigclu.image_format"


class ArrowBlobs:
    """Encoded images held in one Arrow binary array (the ``image`` column of Parquet shards)."""

    def __init__(self, images: pa.Array, files: list[str], file_index: np.ndarray, rows: np.ndarray) -> None:
        self.images = images  # large_binary, one chunk: O(1) indexing
        self.files = files  # shard paths, for error messages
        self.file_index = file_index  # shard of each item
        self.rows = rows  # row of each item inside its shard

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> bytes | None:
        value: bytes | None = self.images[index].as_py()
        return value

    def describe(self, index: int) -> str:
        return f"{self.files[int(self.file_index[index])]} row {int(self.rows[index])}"

    def take(self, indices: np.ndarray) -> ArrowBlobs:
        return ArrowBlobs(
            self.images.take(pa.array(indices, type=pa.int64())),
            self.files,
            self.file_index[indices],
            self.rows[indices],
        )


def load_parquet(req: Request) -> ImageDataset:
    """Parquet shards with ``image`` (PNG/JPEG bytes), ``label`` (int) and optional ``split`` columns."""
    if not req.location:
        raise DataError(f"parquet needs a location: parquet:/dir or parquet:s3://bucket/prefix; {req.hint}")
    fs, path = resolve(req.location)
    where = storage.display(fs, path)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"parquet: {where} does not exist; {req.hint}")
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        fragments = list(dataset.get_fragments())
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"parquet: cannot read {where}: {exc}") from exc
    if not fragments:
        raise DataError(f"parquet: no .parquet files in {where}; {req.hint}")
    schema = dataset.schema
    check_parquet_schema(schema, where)
    has_split = "split" in schema.names
    if not has_split and req.split == "test":
        # Returning the training rows as "test" would silently evaluate on training data.
        raise MissingSplitError(
            f"parquet: {where} has no 'split' column, so all its rows form the train split; "
            f"write it with a split column ('train'/'test') to get a test split"
        )
    wanted = pa.array(["train"] if req.split == "train" else ["test", "val"])

    all_labels: list[pa.Array] = []  # of every split: train and test must agree on the classes
    split_labels: list[np.ndarray] = []
    chunks: list[pa.Array] = []
    file_index: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    try:
        for k, frag in enumerate(fragments):
            # Read the small columns first, then only the wanted rows' image bytes.
            small = frag.to_table(schema=schema, columns=["label", "split"] if has_split else ["label"])
            all_labels.extend(small["label"].chunks)
            if has_split:
                mask = pc.fill_null(pc.is_in(small["split"], value_set=wanted), False)
                keep = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
                filt = pc.field("split").isin(wanted)
            else:
                keep, filt = np.arange(small.num_rows), None
            if len(keep) == 0:
                continue
            table = frag.to_table(schema=schema, columns=["image"], filter=filt)
            if table.num_rows != len(keep):  # pragma: no cover - would be a pyarrow bug
                raise DataError(f"parquet: {frag.path} changed while it was being read")
            chunks.extend(c.cast(pa.large_binary()) for c in table["image"].chunks)
            split_labels.append(small["label"].to_numpy().astype(np.int64)[keep])
            file_index.append(np.full(len(keep), k, dtype=np.int32))
            rows.append(keep)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"parquet: cannot read {where}: {exc}") from exc

    labels_all = pa.chunked_array(all_labels, type=schema.field("label").type)
    if labels_all.null_count:
        raise DataError(f"parquet: {where} has {labels_all.null_count} null labels")
    if not chunks:
        raise MissingSplitError(f"parquet: {where} has no rows whose split is {' or '.join(wanted.to_pylist())}")

    labels = np.concatenate(split_labels)
    meta = schema.metadata or {}
    classes = _parquet_classes(meta, labels_all, where)
    blobs = ArrowBlobs(
        pa.chunked_array(chunks, type=pa.large_binary()).combine_chunks(),
        [storage.display(fs, f.path) for f in fragments],
        np.concatenate(file_index),
        np.concatenate(rows),
    )
    name = f"{req.spec} ({req.split})"
    checked = verify_blobs(blobs, name=name, on_corrupt=req.on_corrupt)
    channels = int(meta[META_CHANNELS]) if META_CHANNELS in meta else (1 if checked.grayscale else 3)
    size = req.image_size
    if size is None and META_IMAGE_SIZE in meta:
        h, w = (int(v) for v in meta[META_IMAGE_SIZE].decode().split(","))
        size = (h, w)
    if size is None:
        size = checked.first_size
    assert size is not None
    return EncodedImageDataset(
        blobs.take(checked.keep),
        torch.from_numpy(labels[checked.keep]),
        name=req.spec,
        split=req.split,
        classes=classes,
        channels=channels,
        image_size=size,
        num_corrupt=checked.num_corrupt,
    )


def check_parquet_schema(schema: pa.Schema, where: str) -> None:
    """The columns we need exist with usable types."""
    problems = []
    if "image" not in schema.names or not (
        pa.types.is_binary(schema.field("image").type) or pa.types.is_large_binary(schema.field("image").type)
    ):
        problems.append("a binary 'image' column (encoded PNG/JPEG bytes)")
    if "label" not in schema.names or not pa.types.is_integer(schema.field("label").type):
        problems.append("an integer 'label' column")
    if "split" in schema.names and not (
        pa.types.is_string(schema.field("split").type) or pa.types.is_large_string(schema.field("split").type)
    ):
        problems.append("a string 'split' column (when present)")
    if problems:
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise DataError(f"parquet: {where} needs {' and '.join(problems)}; found columns {found}")


def _parquet_classes(meta: dict[bytes, bytes], labels_all: pa.ChunkedArray, where: str) -> list[str]:
    """Class names from jigclu's metadata, else ``"0".."K-1"`` with K = max label + 1 over all splits."""
    # Called after the null check and with at least one row, so min/max are integers.
    min_label, max_label = int(pc.min(labels_all).as_py()), int(pc.max(labels_all).as_py())
    if min_label < 0:
        raise DataError(f"parquet: {where} has negative label {min_label}")
    if META_CLASSES in meta:
        classes = [str(c) for c in json.loads(meta[META_CLASSES])]
        if max_label >= len(classes):
            raise DataError(f"parquet: {where} has label {max_label} but its metadata names {len(classes)} classes")
        return classes
    return [str(c) for c in range(max_label + 1)]


# --------------------------------------------------------------------------------------------
# Registry
