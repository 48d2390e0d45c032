"""A streaming plan of a ``parquet:`` source: which row groups to read, made from metadata alone.

The in-memory readers (:mod:`jigclu.data.parquet`) read every image of a split into every
process, which is impossible at ImageNet scale on a cluster. A :class:`StreamPlan` instead lists
the source's Parquet *row groups* (:class:`Unit`) with their row counts and, where the
``split`` column's statistics tell it, their split; nothing but file footers is read to make it
(a row group that mixes splits has its small ``split`` column read). The plan is what Ray Data
reads and decodes, unit by unit, in its own tasks (:mod:`jigclu.ray_data`), and what a worker
reads a bounded sample from for the kNN monitor (:func:`jigclu.data.decode.read_rows`).

A plan is made once per run: a process keeps the plans it made (keyed by the source's listing, so
a rewritten source is planned again), the driver hands its plan to the Ray Train workers in their
loop config, and the run saves it (``stream_plan.json``) so a ``--resume`` reads the very rows the
run started with (:func:`jigclu.data.stream_runs.run_plan`).

Every row has a *key*: the unit's ``offset`` plus its row number inside the unit, unique over
the plan, so a test (or a user) can check that an epoch saw every image exactly once.

The validation split (``data.val_size``) is carved class-balanced and seeded, as for in-memory
sources, but from a seeded *sample of row groups* holding about ``4 x`` its size, so only their
``label`` column is read; its rows are skipped by the stream (``Unit.skip``).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from jigclu import storage
from jigclu.data.encoded import probe_image
from jigclu.data.images import ImageSize
from jigclu.data.splits import VAL_SALT, stratified, val_count
from jigclu.data.parquet import HINT, META_CHANNELS, META_CLASSES, META_IMAGE_SIZE, check_parquet_schema
from jigclu.data.decode import read_rows, resolve
from jigclu.errors import DataError

STREAM_NAME = "train"  # the streamed dataset's name in Ray Train (datasets=, get_dataset_shard)
_VAL_POOL_FACTOR = 4  # the validation split is carved from row groups holding ~4x its size
_SAMPLE_SALT = 104729  # seeds the row-group orders of the monitor samples (apart from the val split's)


@dataclass(frozen=True)
class Unit:
    """One Parquet row group to stream: ``rows`` rows, keys ``offset .. offset + rows - 1``."""

    path: str  # on the plan's filesystem
    row_group: int
    rows: int
    offset: int
    skip: tuple[int, ...] = ()  # rows of the group not streamed (another split, the validation split)
    take: tuple[int, ...] | None = None  # only these rows are streamed (a semi run's labeled subset)

    @property
    def kept(self) -> int:
        return len(self.kept_rows())

    def kept_rows(self) -> np.ndarray:
        """The row numbers streamed, ascending."""
        rows = np.arange(self.rows) if self.take is None else np.asarray(self.take, dtype=np.int64)
        return np.setdiff1d(rows, np.asarray(self.skip, dtype=np.int64))


@dataclass(frozen=True)
class StreamPlan:
    """What to stream: the train units, the held-out sample's units, and how to decode."""

    location: str  # the source URI or path, as the user wrote it (without ``parquet:``)
    units: list[Unit]  # the training rows
    channels: int
    image_size: ImageSize
    classes: list[str]
    val_units: list[Unit] = field(default_factory=list)  # rows of the validation split (as ``skip``'s complement)
    test_units: list[Unit] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(u.kept for u in self.units)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    labeled: list[int] | None = None  # a semi run's labeled subset: positions among the source's train rows
    unlabeled: int = 0  # rows whose label is null (the label statistics of every row group, all splits)

    def to_json(self) -> dict[str, Any]:
        def unit(u: Unit) -> list[Any]:
            return [u.path, u.row_group, u.rows, u.offset, list(u.skip), None if u.take is None else list(u.take)]

        return {"location": self.location, "channels": self.channels, "image_size": list(self.image_size),
                "classes": self.classes, "labeled": self.labeled, "unlabeled": self.unlabeled,
                **{name: [unit(u) for u in units] for name, units in (
                    ("units", self.units), ("val_units", self.val_units), ("test_units", self.test_units))}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StreamPlan":
        def unit(p: str, g: int, r: int, o: int, skip: list[int], take: list[int] | None = None) -> Unit:
            return Unit(p, int(g), int(r), int(o), tuple(int(i) for i in skip),
                        None if take is None else tuple(int(i) for i in take))

        units = {name: [unit(*u) for u in data[name]] for name in ("units", "val_units", "test_units")}
        h, w = data["image_size"]
        return cls(data["location"], units["units"], int(data["channels"]), (int(h), int(w)),
                   [str(c) for c in data["classes"]], val_units=units["val_units"], test_units=units["test_units"],
                   labeled=data.get("labeled"), unlabeled=int(data.get("unlabeled") or 0))


def _listing(location: str) -> tuple[pafs.FileSystem, list[pafs.FileInfo], str]:
    """The source's Parquet shards (one LIST on an object store), with their sizes and mtimes."""
    fs, path = resolve(location)
    where = storage.display(fs, path)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"parquet: {where} does not exist; {HINT}")
        if info.type == pafs.FileType.File:
            files = [info]
        else:  # shards, not the _SUCCESS markers, READMEs or hidden staging files beside them
            files = sorted((f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                            and not f.base_name.startswith((".", "_")) and "/." not in f.path[len(path):]),
                           key=lambda f: f.path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"parquet: cannot read {where}: {str(exc).splitlines()[0]}") from exc
    if not files:
        raise DataError(f"parquet: no .parquet files in {where}; {HINT}")
    return fs, files, where


def _footers(fs: pafs.FileSystem, files: list[str], where: str) -> list[pq.FileMetaData]:
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:  # one footer read per file; object stores: in parallel
            return list(pool.map(lambda f: _footer(fs, f), files))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"parquet: cannot read {where}: {str(exc).splitlines()[0]}") from exc


def _footer(fs: pafs.FileSystem, path: str) -> pq.FileMetaData:
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata


def _group_split(meta: pq.FileMetaData, group: int, column: int | None) -> str | None:
    """The split of every row of a row group, from its ``split`` statistics; None if mixed or unknown."""
    if column is None:  # no split column: every row is a training row
        return "train"
    stats = meta.row_group(group).column(column).statistics
    if stats is None or not stats.has_min_max or stats.null_count:
        return None
    low, high = stats.min, stats.max
    low, high = (v.decode() if isinstance(v, bytes) else v for v in (low, high))
    return low if low == high else None


def _split_rows(fs: pafs.FileSystem, unit: Unit) -> np.ndarray:
    """The ``split`` value of every row of a mixed row group (only that small column is read)."""
    with fs.open_input_file(unit.path) as handle:
        column = pq.ParquetFile(handle).read_row_group(unit.row_group, columns=["split"])["split"]
    return np.asarray(column.to_pylist(), dtype=object)


def _wanted(split: str) -> tuple[str, ...]:
    return ("train",) if split == "train" else ("test", "val")


def _units_of(fs: pafs.FileSystem, files: list[str], footers: list[pq.FileMetaData], schema: pa.Schema,
              split: str) -> list[Unit]:
    """Every row group of ``files`` holding rows of ``split``, rows of other splits skipped."""
    units, offset = [], 0
    for path, meta in zip(files, footers):
        names = meta.schema.to_arrow_schema().names
        column = names.index("split") if "split" in schema.names and "split" in names else None
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            unit = Unit(path, group, rows, offset)
            offset += rows
            whole = _group_split(meta, group, column)
            if whole is not None:
                if whole in _wanted(split) and rows:
                    units.append(unit)
                continue
            values = _split_rows(fs, unit)
            skip = tuple(int(i) for i in np.flatnonzero(~np.isin(values, _wanted(split))))
            if len(skip) < rows:
                units.append(replace(unit, skip=skip))
    return units


def _decode_settings(fs: pafs.FileSystem, schema: pa.Schema, units: list[Unit],
                     image_size: int | None) -> tuple[int, ImageSize]:
    """Channels and size from jigclu's metadata, else from the first image (one row group read)."""
    meta = schema.metadata or {}
    channels = int(meta[META_CHANNELS]) if META_CHANNELS in meta else None
    size: ImageSize | None = (image_size, image_size) if image_size else None
    if size is None and META_IMAGE_SIZE in meta:
        h, w = (int(v) for v in meta[META_IMAGE_SIZE].decode().split(","))
        size = (h, w)
    if channels is None or size is None:  # the first decodable image of the first unit decides
        unit = units[0]
        rows = unit.kept_rows()
        probes = [probe_image(b) for b in read_rows(fs, unit, rows, columns=("image",))["image"]]
        good = [p for p in probes if p.ok]
        if not good:
            raise DataError(f"parquet: none of the images of {unit.path} row group {unit.row_group} could be "
                            f"decoded ({probes[0].error}); is the image column encoded PNG/JPEG?")
        channels = channels or (1 if good[0].mode in ("1", "L", "LA", "La") else 3)
        size = size or good[0].size
    return channels, size


def _classes(schema: pa.Schema, files: list[str], footers: list[pq.FileMetaData]) -> list[str]:
    """Class names from jigclu's metadata, else ``"0".."K-1"`` with K from the label statistics."""
    meta = schema.metadata or {}
    if META_CLASSES in meta:
        return [str(c) for c in json.loads(meta[META_CLASSES])]
    high = -1
    for path, footer in zip(files, footers):
        column = footer.schema.to_arrow_schema().get_field_index("label")
        for group in range(footer.num_row_groups):
            stats = footer.row_group(group).column(column).statistics
            if stats is None or not stats.has_min_max:
                raise DataError(f"parquet: {path} has no label statistics and no jigclu class metadata; "
                                f"write it with 'jigclu data convert' to stream it")
            high = max(high, int(stats.max))
    return [str(c) for c in range(high + 1)]


def _unlabeled(footers: list[pq.FileMetaData]) -> int:
    """Rows whose label is null, from the label statistics (a row group without them counts none)."""
    nulls = 0
    for footer in footers:
        column = footer.schema.to_arrow_schema().get_field_index("label")
        for group in range(footer.num_row_groups):
            stats = footer.row_group(group).column(column).statistics
            nulls += stats.null_count if stats is not None and stats.has_null_count else 0
    return nulls


_PLANS: dict[tuple[Any, ...], StreamPlan] = {}  # this process's plans (see the module docstring)
_PLANS_KEPT = 8


def plan_stream(location: str, *, image_size: int | None = None, val_size: float | None = None,
                val_seed: int = 0, limit: int | None = None) -> StreamPlan:
    """The :class:`StreamPlan` of ``parquet:location`` (made from metadata; see the module docstring).
    Made once per process for a source whose shards are unchanged (same paths, sizes and mtimes)."""
    fs, listing, where = _listing(location)
    key = (location, image_size, val_size, val_seed, limit,
           tuple((f.path, f.size, f.mtime_ns) for f in listing))
    if key not in _PLANS:
        _PLANS[key] = _make_plan(location, fs, [f.path for f in listing], where, image_size, val_size, val_seed, limit)
        while len(_PLANS) > _PLANS_KEPT:
            _PLANS.pop(next(iter(_PLANS)))
    return _PLANS[key]


def _make_plan(location: str, fs: pafs.FileSystem, files: list[str], where: str, image_size: int | None,
               val_size: float | None, val_seed: int, limit: int | None) -> StreamPlan:
    footers = _footers(fs, files, where)
    schema = footers[0].schema.to_arrow_schema()  # the first shard's, as a dataset of the shards infers it
    check_parquet_schema(schema, where)
    units = _units_of(fs, files, footers, schema, "train")
    if not units:
        raise DataError(f"parquet: {where} has no rows whose split is train")
    test_units = _units_of(fs, files, footers, schema, "test") if "split" in schema.names else []
    channels, size = _decode_settings(fs, schema, units, image_size)
    plan = StreamPlan(location, units, channels, size, _classes(schema, files, footers), test_units=test_units,
                      unlabeled=_unlabeled(footers))
    if val_size is not None:
        plan = _carve_validation(plan, fs, val_size, val_seed, where)
    if limit is not None:
        plan = replace(plan, units=_first_rows(plan.units, limit))
    return plan


def _first_rows(units: list[Unit], limit: int) -> list[Unit]:
    """The units holding the first ``limit`` kept rows (the last one cut short with ``skip``)."""
    out, left = [], limit
    for unit in units:
        if left <= 0:
            break
        if unit.kept > left:
            keep = set(unit.kept_rows()[:left].tolist())
            unit = replace(unit, skip=tuple(r for r in range(unit.rows) if r not in keep))
        out.append(unit)
        left -= unit.kept
    return out


def _carve_validation(plan: StreamPlan, fs: pafs.FileSystem, val_size: float, seed: int, where: str) -> StreamPlan:
    """Hold out a class-balanced, seeded validation split from a seeded sample of the train units."""
    total = plan.num_rows
    count = val_count(val_size, total, None, where)  # the classes are known once the labels are read
    order = np.random.default_rng(seed + VAL_SALT).permutation(len(plan.units))
    pool, rows = [], 0
    for i in order:
        pool.append(int(i))
        rows += plan.units[i].kept
        if rows >= min(total, _VAL_POOL_FACTOR * count):
            break
    candidates: list[tuple[int, int]] = []  # (unit index, row)
    labels: list[int] = []
    for i in pool:
        unit = plan.units[i]
        keep = unit.kept_rows()
        labels.extend(read_rows(fs, unit, keep, columns=("label",))["label"])
        candidates.extend((i, int(r)) for r in keep)
    val_count(val_size, total, len(set(labels)), where)
    chosen = stratified(torch.as_tensor(labels), count, seed + VAL_SALT).tolist()
    held: dict[int, list[int]] = {}
    for c in chosen:
        i, row = candidates[c]
        held.setdefault(i, []).append(row)
    units, val_units = [], []
    for i, unit in enumerate(plan.units):
        if i in held:
            val_rows = set(held[i])
            val_units.append(replace(unit, skip=tuple(r for r in range(unit.rows) if r not in val_rows)))
            unit = replace(unit, skip=tuple(sorted(set(unit.skip) | val_rows)))
        if unit.kept:
            units.append(unit)
    return replace(plan, units=units, val_units=val_units)


def sample_units(units: list[Unit], limit: int | None, seed: int) -> list[tuple[Unit, np.ndarray]]:
    """A bounded, seeded sample of ``limit`` kept rows: whole row groups in a seeded order, so only
    the few groups that hold the sample are read."""
    order = np.random.default_rng(seed + _SAMPLE_SALT).permutation(len(units))
    out, left = [], limit if limit is not None else sum(u.kept for u in units)
    for i in order:
        if left <= 0:
            break
        unit = units[int(i)]
        keep = unit.kept_rows()[:left]
        if len(keep):
            out.append((unit, keep))
            left -= len(keep)
    return out


__all__ = ["STREAM_NAME", "StreamPlan", "Unit", "plan_stream", "sample_units"]
