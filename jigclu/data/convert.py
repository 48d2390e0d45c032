"""Convert any supported source into Parquet shards (``jigclu data convert SRC DEST``).

Parquet shards are the one format that works everywhere a cluster runs: a local disk, S3 or GCS
(through pyarrow's filesystems), with no per-file overhead. The shards are sized for streaming:
each ``part-NNNNN.parquet`` grows until its encoded bytes reach ``shard_mb`` (192 MB by default;
the last shard of a split is smaller), in row groups of ``row_group_rows`` images, so a reader can
stream a shard one row group at a time. A shard never mixes splits.

Columns: ``image`` (PNG, lossless, or JPEG bytes), ``label`` (int64), ``split`` (``"train"`` /
``"test"``) and ``id`` (int64, unique over the whole dataset: the row's position in writing
order). ``id``, ``label`` and ``split`` carry min/max statistics per row group. The schema
metadata records the class names, channel count, image size and image format, so that
``load_dataset("parquet:DEST")`` gives back what was written (exactly, for PNG).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import sys
import uuid
import zlib
from collections.abc import Sequence
from functools import partial
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from jigclu import storage
from jigclu.data.datasets import load_dataset
from jigclu.data.encode import EncodedRows, Rows, check_format, encode_png, encoder
from jigclu.data.images import ImageDataset
from jigclu.data.parquet import META_CHANNELS, META_CLASSES, META_IMAGE_FORMAT, META_IMAGE_SIZE, META_SOURCE
from jigclu.data.request import MissingSplitError, normalize_split, resolve
from jigclu.errors import DataError

__all__ = ["SHARD_NAME", "convert_main", "encode_png", "write_parquet"]

SHARD_NAME = "part-{:05d}.parquet"
MB = 1 << 20  # shard_mb counts MiB
# Image bytes are already compressed: no codec, no dictionary and no min/max statistics for them
# (those would copy whole images into the footer). The small columns get all three.
_WRITER_OPTIONS = dict(
    compression={"image": "NONE", "label": "ZSTD", "split": "ZSTD", "id": "ZSTD"},
    use_dictionary=["label", "split"],
    write_statistics=["label", "split", "id"],
)


def write_parquet(
    source: ImageDataset | str,
    dest: str,
    split_names: Sequence[str] = ("train", "test"),
    rows_per_shard: int | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    on_corrupt: str = "skip",
    shard_mb: float = 192,
    row_group_rows: int = 2048,
    image_format: str = "png",
    quality: int = 90,
    shuffle_seed: int | None = None,
    progress: bool = False,
) -> int:
    """Write ``source`` as Parquet shards under ``dest`` and return the number of rows written.

    Args:
        source: a loaded :class:`ImageDataset` (written as its own ``split``), or a dataset spec,
            of which every split in ``split_names`` that exists is written (a flat ImageFolder,
            for example, has only ``train``).
        dest: a local directory or a ``s3://`` / ``gs://`` URI; must not exist or be empty.
        split_names: splits to write when ``source`` is a spec.
        rows_per_shard: an optional cap on the rows of one ``part-NNNNN.parquet``.
        image_size: resize when loading a spec source (see :func:`load_dataset`).
        on_corrupt: corrupt-image policy when loading a spec source.
        shard_mb: a shard is closed once its bytes reach this many MiB (it overshoots by about
            one image plus its footer); the last shard of a split holds what is left.
        row_group_rows: rows per Parquet row group (a shard's last row group may be shorter).
        image_format: ``"png"`` (lossless) or ``"jpeg"`` (lossy, much smaller for photos).
        quality: JPEG quality, 1 to 95.
        shuffle_seed: shuffle each split's rows with this seed before writing (sources such as
            ImageFolder are sorted by class, and a streaming reader reads in order); ``None``
            keeps the source order.
        progress: report on stdout: a rich bar on a terminal, else one line per finished shard.

    Each shard is streamed to a file one row group at a time (:func:`jigclu.storage.write_atomic_with`)
    in a hidden sibling directory, which is renamed into place at the end, so an error leaves
    nothing at ``dest``. (Object stores have no directory rename: there the finished shards are
    moved one by one, which is as close to atomic as they allow.)
    """
    _check_options(rows_per_shard, shard_mb, row_group_rows, shuffle_seed)
    image_format = check_format(image_format)
    encode = encoder(image_format, quality)  # checks the quality too: all before any work
    datasets = _datasets_to_write(source, split_names, image_size, on_corrupt)
    fs, path = resolve(dest)
    where = storage.display(fs, path)
    _check_destination(fs, path, where)

    staging = _staging(dest)
    schema = _schema(datasets, source, image_format)
    cap = rows_per_shard or math.inf
    total = 0
    try:
        with _Progress(sum(len(ds) for ds in datasets), enabled=progress) as report:
            shard = 0
            for ds in datasets:
                order = _order(len(ds), ds.split, shuffle_seed)
                rows = EncodedRows(ds, order, encode, batch=row_group_rows, first_id=total)
                while not rows.exhausted:
                    name = SHARD_NAME.format(shard)
                    written: list[int] = []  # rows, bytes
                    write = partial(_write_shard, rows, schema, shard_mb * MB, cap, row_group_rows, report, written)
                    try:
                        storage.write_atomic_with(storage.join(staging, name), write, suffix=".parquet")
                        failure = None
                    except _SourceFailed as failed:
                        failure = failed.__cause__
                    if failure is not None:
                        raise failure  # the source's own error, not a failed write (and not chained to one)
                    report.shard_done(name, *written)
                    total += written[0]
                    shard += 1
        if total == 0:
            raise DataError(f"nothing to write to {where}: the source has no images")
        _publish(fs, resolve(staging)[1], path)
    finally:
        _remove_quietly(staging)  # on success only an object store's emptied staging prefix is left
    return total


def convert_main(
    src: str,
    dest: str,
    image_size: int | None = None,
    *,
    image_format: str = "png",
    quality: int = 90,
    shard_mb: float = 192,
    row_group_rows: int = 2048,
    shuffle_seed: int | None = None,
    progress: bool = False,
) -> int:
    """``jigclu data convert SRC DEST``: convert the dataset spec ``src`` to shards at ``dest``.

    Returns the number of rows written. Prints only the progress asked for (the CLI reports).
    """
    return write_parquet(
        src, dest, image_size=image_size, image_format=image_format, quality=quality, shard_mb=shard_mb,
        row_group_rows=row_group_rows, shuffle_seed=shuffle_seed, progress=progress,
    )


class _SourceFailed(Exception):
    """Carries (as ``__cause__``) an error of the data source raised while a shard was written,
    past :func:`storage.write_atomic_with`, which would report it as a failed write."""


def _write_shard(rows: EncodedRows, schema: pa.Schema, max_bytes: float, cap: float, group_rows: int,
                 report: _Progress, written: list[int], tmp: str) -> None:
    """Stream rows into the Parquet file ``tmp`` until it holds ``max_bytes`` or ``cap`` rows or
    the split ends, one row group in memory at a time; ``written`` gets ``[rows, bytes]``."""
    count = 0
    with pa.OSFile(tmp, "wb") as sink, pq.ParquetWriter(sink, schema, **_WRITER_OPTIONS) as writer:
        while count < cap and sink.tell() < max_bytes:
            try:
                if rows.exhausted:
                    break
                group = rows.take(int(min(group_rows, cap - count)), max_bytes - sink.tell())
            except Exception as exc:
                raise _SourceFailed() from exc
            writer.write_table(_table(group, rows.ds.split, schema), row_group_size=group_rows)
            count += len(group.ids)
            report.advance(len(group.ids))
    written[:] = [count, os.path.getsize(tmp)]


def _table(rows: Rows, split: str, schema: pa.Schema) -> pa.Table:
    return pa.table(
        {
            "image": pa.array(rows.images, type=pa.binary()),
            "label": pa.array(rows.labels, type=pa.int64()),
            "split": pa.array([split] * len(rows.ids), type=pa.string()),
            "id": pa.array(rows.ids, type=pa.int64()),
        },
        schema=schema,
    )


def _check_options(rows_per_shard: int | None, shard_mb: float, row_group_rows: int, seed: int | None) -> None:
    """Refuse impossible sizes and seeds before anything is read or written."""
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if rows_per_shard is not None and (not is_int(rows_per_shard) or rows_per_shard < 1):
        raise DataError(f"rows_per_shard must be at least 1, got {rows_per_shard!r}")
    if isinstance(shard_mb, bool) or not isinstance(shard_mb, (int, float)) or not 0 < shard_mb < math.inf:
        raise DataError(f"shard size must be a positive number of MB, got {shard_mb!r}")
    if not is_int(row_group_rows) or row_group_rows < 1:
        raise DataError(f"row group size must be at least 1 row, got {row_group_rows!r}")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise DataError(f"shuffle seed must be a non-negative integer, got {seed!r}")


def _order(n: int, split: str, seed: int | None) -> np.ndarray:
    """The order a split's rows are written in: as is, or a permutation seeded by (seed, split)."""
    if seed is None:
        return np.arange(n)
    return np.random.default_rng([seed, zlib.crc32(split.encode())]).permutation(n)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} img/s" if task.speed else "-", style="cyan")


class _Progress:
    """A rich bar on a terminal; else (``progress`` on) one plain line per finished shard."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar: Progress | None = None
        if enabled and sys.stdout.isatty():
            self._bar = Progress(TextColumn("[bold]convert"), BarColumn(), MofNCompleteColumn(), _Rate(),
                                 TextColumn("eta"), TimeRemainingColumn())
            self._task = self._bar.add_task("convert", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.update(self._task, advance=rows)

    def shard_done(self, name: str, rows: int, nbytes: int) -> None:
        line = f"convert: wrote {name} ({rows:,} rows, {nbytes / MB:.1f} MB), {self.done:,}/{self.total:,} rows"
        if self._bar is not None:
            self._bar.console.print(line)
        elif self.enabled:
            print(line, flush=True)


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


def _schema(datasets: list[ImageDataset], source: ImageDataset | str, image_format: str) -> pa.Schema:
    """Column types plus the metadata that lets the reader restore classes, channels and size."""
    first = datasets[0]
    meta = {
        META_CLASSES: json.dumps(first.classes).encode(),
        # If splits disagree (a lazy source may see colour only in one), decode all as colour.
        META_CHANNELS: str(max(ds.channels for ds in datasets)).encode(),
        META_SOURCE: (source if isinstance(source, str) else first.name).encode(),
        META_IMAGE_FORMAT: image_format.encode(),
    }
    if all(ds.image_size == first.image_size for ds in datasets):
        meta[META_IMAGE_SIZE] = f"{first.image_size[0]},{first.image_size[1]}".encode()
    return pa.schema(
        [("image", pa.binary()), ("label", pa.int64()), ("split", pa.string()), ("id", pa.int64())],
        metadata=meta,
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
