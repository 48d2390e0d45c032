"""Reading and decoding a stream's rows without torch: what a Ray Data decode task imports.

:class:`DecodeUnits` is the function Ray Data maps over a :class:`~jigclu.data.stream.StreamPlan`'s
unit numbers, in its own tasks on any node with CPUs: it reads one row group, decodes and resizes its
images to uint8 and yields them in chunks. A corrupt image is not dropped there but *marked* (``ok``
false, ``error`` naming it), so the training side (:class:`~jigclu.data.stream_loader.StreamLoader`)
can count it exactly and apply ``on_corrupt``.

This module imports numpy, Pillow and pyarrow, never torch (``jigclu.data`` imports its names
lazily), and :class:`DecodeUnits` holds plain values, not the plan: a decode task's worker process
starts in a fraction of a second with about 70 MB, where importing torch cost about 2.4 CPU seconds
and 670 MB per worker (``tests/test_stream.py`` keeps it so).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from jigclu import storage
from jigclu.errors import DataError

CHUNK_ROWS = 256  # rows per decoded block: a few MB at ImageNet sizes


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """:func:`jigclu.storage.resolve` at the data edge: a location that cannot be opened is a
    :class:`DataError`, with the filesystem's own reason."""
    try:
        return storage.resolve(location)
    except storage.StorageError as exc:
        # StorageError hides (from None) but keeps the filesystem's error as its context.
        reason = exc.__context__ if exc.__context__ is not None else exc
        raise DataError(f"cannot open {location}: {reason}") from exc


def decode_array(data: bytes, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode encoded image bytes to a writable ``uint8 [C, H, W]`` array in ``mode`` at ``size`` (H, W)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        out = img if img.mode == mode else img.convert(mode)
        if size is not None and out.size != (size[1], size[0]):
            # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
            out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.array(out, dtype=np.uint8)  # a writable copy
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_rows(fs: pafs.FileSystem, unit: Any, rows: np.ndarray,
              columns: tuple[str, ...] = ("image", "label")) -> dict[str, list[Any]]:
    """``columns`` of the given rows of one unit (anything with ``path`` and ``row_group``: its row
    group is read once, then the rows taken)."""
    with fs.open_input_file(unit.path) as handle:
        table = pq.ParquetFile(handle).read_row_group(unit.row_group, columns=list(columns))
    taken = table.take(pa.array(np.asarray(rows, dtype=np.int64)))
    return {name: taken[name].to_pylist() for name in columns}


class _Part:
    """A unit as a decode task needs it: where its row group is, its key offset and the rows it keeps."""

    __slots__ = ("path", "row_group", "offset", "rows")

    def __init__(self, unit: Any) -> None:
        self.path, self.row_group, self.offset = unit.path, unit.row_group, unit.offset
        self.rows = np.asarray(unit.kept_rows(), dtype=np.int64)

    def __getstate__(self) -> tuple[Any, ...]:
        return self.path, self.row_group, self.offset, self.rows

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.path, self.row_group, self.offset, self.rows = state


class DecodeUnits:
    """Ray Data ``map_batches`` function: unit numbers (``id``) -> decoded chunks of their rows.

    Output columns: ``image`` uint8 ``[n, C, H, W]``, ``label`` int64, ``key`` int64 (unit
    offset + row), ``ok`` bool and ``error`` (``""`` for a good row). ``raw``: no decoding here,
    ``data`` (the encoded bytes) and ``where`` (each row's name) instead of ``image``, and only a
    null image marked (``data.decode=device``: :mod:`jigclu.data.device_decode` decodes them).
    """

    def __init__(self, plan: Any, units: list[Any] | None = None, raw: bool = False) -> None:
        self.location = plan.location
        self.parts = [_Part(u) for u in (plan.units if units is None else units)]
        self.channels, self.size = plan.channels, tuple(plan.image_size)
        self.raw = raw
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}  # filesystems are not always picklable: each task opens its own

    def filesystem(self) -> Any:
        if self._fs is None:
            self._fs = resolve(self.location)[0]
        return self._fs

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for index in np.asarray(batch["id"]).tolist():
            yield from self.decode_unit(int(index))

    def decode_unit(self, index: int) -> Iterator[dict[str, np.ndarray]]:
        """The rows of unit ``index`` (of the units given), decoded, ``CHUNK_ROWS`` at a time."""
        part = self.parts[index]
        rows = part.rows
        data = read_rows(self.filesystem(), part, rows)
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = slice(start, start + CHUNK_ROWS)
            yield self.decode(data["image"][chunk], data["label"][chunk], part.offset + rows[chunk],
                              [f"{part.path} row {r}" for r in rows[chunk].tolist()])

    def decode(self, blobs: list[bytes | None], labels: list[int], keys: np.ndarray,
               where: list[str]) -> dict[str, np.ndarray]:
        if self.raw:
            ok = np.array([b is not None for b in blobs], dtype=bool)
            return {"data": object_array([b or b"" for b in blobs]), "where": object_array(where),
                    "label": np.asarray(labels, dtype=np.int64), "key": np.asarray(keys, np.int64), "ok": ok,
                    "error": object_array(["" if good else f"{w}: ValueError: image is null" for good, w in zip(ok, where)])}
        n, (h, w) = len(blobs), self.size
        images = np.zeros((n, self.channels, h, w), dtype=np.uint8)
        ok = np.ones(n, dtype=bool)
        errors = [""] * n
        mode = "L" if self.channels == 1 else "RGB"
        for i, blob in enumerate(blobs):
            try:
                if blob is None:
                    raise ValueError("image is null")
                images[i] = decode_array(blob, mode, self.size)
            except Exception as exc:  # noqa: BLE001 - PIL signals corruption through many exception types
                ok[i], errors[i] = False, f"{where[i]}: {type(exc).__name__}: {exc}"
        return {"image": images, "label": np.asarray(labels, dtype=np.int64), "key": np.asarray(keys, np.int64),
                "ok": ok, "error": np.asarray(errors, dtype=object)}


def object_array(values: list[Any]) -> np.ndarray:
    """A 1-d object array of ``values`` (bytes stay bytes: ``np.array`` would make them a fixed-width type)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


__all__ = ["CHUNK_ROWS", "DecodeUnits", "decode_array", "object_array", "read_rows", "resolve"]
