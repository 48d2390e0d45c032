"""Convert any supported source into Parquet shards (``jigclu data convert SRC DEST``).

Parquet shards are the one format that works everywhere a cluster runs: a local disk, S3 or GCS
(through pyarrow's filesystems), with no per-file overhead. Each shard ``part-NNNNN.parquet`` has
the columns ``image`` (lossless PNG bytes), ``label`` (int64) and ``split`` (``"train"`` /
``"test"``), and its schema metadata records the class names, channel count and image size, so
that ``load_dataset("parquet:DEST")`` gives back exactly what was written.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image

from jigclu import storage
from jigclu.data.datasets import load_dataset
from jigclu.data.images import ImageDataset
from jigclu.data.parquet import META_CHANNELS, META_CLASSES, META_IMAGE_SIZE, META_SOURCE
from jigclu.data.request import MissingSplitError, normalize_split, resolve
from jigclu.errors import DataError

SHARD_NAME = "part-{:05d}.parquet"


def encode_png(image: torch.Tensor) -> bytes:
    """Encode a ``uint8 [C, H, W]`` tensor (C = 1 or 3) as PNG bytes (lossless)."""
    arr = image.numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(
    source: ImageDataset | str,
    dest: str,
    split_names: Sequence[str] = ("train", "test"),
    rows_per_shard: int = 10000,
    *,
    image_size: int | tuple[int, int] | None = None,
    on_corrupt: str = "skip",
) -> int:
    """Write ``source`` as Parquet shards under ``dest`` and return the number of rows written.

    Args:
        source: a loaded :class:`ImageDataset` (written as its own ``split``), or a dataset spec,
            of which every split in ``split_names`` that exists is written (a flat ImageFolder,
            for example, has only ``train``).
        dest: a local directory or a ``s3://`` / ``gs://`` URI; must not exist or be empty.
        split_names: splits to write when ``source`` is a spec.
        rows_per_shard: rows per ``part-NNNNN.parquet`` file (a shard never mixes splits).
        image_size: resize when loading a spec source (see :func:`load_dataset`).
        on_corrupt: corrupt-image policy when loading a spec source.

    The shards are written (each with :func:`jigclu.storage.write_atomic_with`) into a hidden
    sibling directory first and renamed into place, so an error leaves nothing at ``dest``.
    (Object stores have no directory rename: there the finished shards are moved one by one,
    which is as close to atomic as they allow.)
    """
    if rows_per_shard < 1:
        raise DataError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    datasets = _datasets_to_write(source, split_names, image_size, on_corrupt)
    fs, path = resolve(dest)
    where = storage.display(fs, path)
    _check_destination(fs, path, where)

    staging = _staging(dest)
    schema = _schema(datasets, source)
    total = 0
    try:
        shard = 0
        for ds in datasets:
            for start in range(0, len(ds), rows_per_shard):
                indices = range(start, min(start + rows_per_shard, len(ds)))
                table = _encode_rows(ds, indices, schema)
                shard_location = storage.join(staging, SHARD_NAME.format(shard))
                storage.write_atomic_with(shard_location, partial(pq.write_table, table), suffix=".parquet")
                shard += 1
                total += table.num_rows
        if total == 0:
            raise DataError(f"nothing to write to {where}: the source has no images")
        _publish(fs, resolve(staging)[1], path)
    finally:
        _remove_quietly(staging)  # on success only an object store's emptied staging prefix is left
    return total


def convert_main(src: str, dest: str, image_size: int | None = None) -> int:
    """``jigclu data convert SRC DEST``: convert the dataset spec ``src`` to shards at ``dest``.

    Returns the number of rows written; prints nothing (the CLI reports).
    """
    return write_parquet(src, dest, image_size=image_size)


def _datasets_to_write(
    source: ImageDataset | str,
    split_names: Sequence[str],
    image_size: int | tuple[int, int] | None,
    on_corrupt: str,
) -> list[ImageDataset]:
    """The datasets behind ``source``: itself, or every existing split of a spec."""
    if isinstance(source, ImageDataset):
        return [source]
    if not isinstance(source, str):
        raise DataError(f"write_parquet needs an ImageDataset or a dataset spec, got {type(source).__name__}")
    splits = list(dict.fromkeys(normalize_split(s) for s in split_names))  # dedupe, keep order
    if not splits:
        raise DataError("write_parquet: split_names is empty")
    datasets = []
    for split in splits:
        try:
            datasets.append(load_dataset(source, split=split, image_size=image_size, on_corrupt=on_corrupt))
        except MissingSplitError:
            continue  # e.g. a flat ImageFolder has no test split: write what exists
    if not datasets:
        raise MissingSplitError(f"{source} has none of the splits {', '.join(splits)}")
    return datasets


def _schema(datasets: list[ImageDataset], source: ImageDataset | str) -> pa.Schema:
    """Column types plus the metadata that lets the reader restore classes, channels and size."""
    first = datasets[0]
    meta = {
        META_CLASSES: json.dumps(first.classes).encode(),
        # If splits disagree (a lazy source may see colour only in one), decode all as colour.
        META_CHANNELS: str(max(ds.channels for ds in datasets)).encode(),
        META_SOURCE: (source if isinstance(source, str) else first.name).encode(),
    }
    if all(ds.image_size == first.image_size for ds in datasets):
        meta[META_IMAGE_SIZE] = f"{first.image_size[0]},{first.image_size[1]}".encode()
    return pa.schema(
        [("image", pa.binary()), ("label", pa.int64()), ("split", pa.string())],
        metadata=meta,
    )


def _encode_rows(ds: ImageDataset, indices: range, schema: pa.Schema) -> pa.Table:
    """PNG-encode ``ds[indices]`` into one table (threaded: zlib releases the GIL)."""

    def encode(i: int) -> bytes:
        image, _ = ds[i]
        return encode_png(image)

    workers = min(4, os.cpu_count() or 1)
    if workers > 1 and len(indices) >= 256:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            images = list(pool.map(encode, indices, chunksize=64))
    else:
        images = [encode(i) for i in indices]
    labels = ds.labels[indices.start : indices.stop].numpy()
    return pa.table(
        {
            "image": pa.array(images, type=pa.binary()),
            "label": pa.array(labels, type=pa.int64()),
            "split": pa.array([ds.split] * len(indices), type=pa.string()),
        },
        schema=schema,
    )


def _check_destination(fs: pafs.FileSystem, path: str, where: str) -> None:
    """Refuse to overwrite: ``dest`` must be absent or an empty directory."""
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            raise DataError(f"refusing to overwrite {where}: it is a file; choose a new destination directory")
        if info.type == pafs.FileType.Directory:
            entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
            if entries:
                raise DataError(
                    f"refusing to overwrite {where}: it is not empty ({len(entries)} entries); "
                    "choose a new destination or delete it first"
                )
    except OSError as exc:
        raise DataError(f"cannot inspect destination {where}: {exc}") from exc


def _staging(dest: str) -> str:
    """A fresh hidden sibling of ``dest`` (same filesystem, so publishing it is one rename),
    written like ``dest`` (a path or a URI, its query options kept)."""
    location, query = storage.normalise(dest), ""
    if storage.is_uri(location) and "?" in location:
        location, query = location.split("?", 1)
        query = "?" + query
    parent, base = location.rsplit("/", 1)
    return f"{parent}/.{base}.tmp-{uuid.uuid4().hex[:12]}{query}"


def _publish(fs: pafs.FileSystem, tmp: str, path: str) -> None:
    """Move the finished temporary directory ``tmp`` to ``path`` (both paths on ``fs``)."""
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)  # empty (checked before writing); rename cannot replace it everywhere
    try:
        fs.move(tmp, path)  # one rename on local disks: the shards appear all at once
        return
    except (OSError, pa.ArrowException):
        pass  # object stores cannot move directories; move the files instead
    fs.create_dir(path, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(tmp, recursive=False)):
        fs.move(info.path, posixpath.join(path, info.base_name))


def _remove_quietly(location: str) -> None:
    """Best-effort cleanup of a temporary directory (never masks the original error)."""
    try:
        storage.delete(location)
    except Exception:  # noqa: BLE001 - cleanup must not hide the error being raised
        pass
