"""Parquet sources for the streaming tests, written by the test (no download): class-dependent
images (a bright square whose place and size depend on the label, plus noise), PNG-encoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CLASSES = 4


def image_of(label: int, rng: np.random.Generator, side: int = 32) -> bytes:
    arr = rng.integers(0, 60, size=(side, side, 3), dtype=np.uint8)  # noise: PNG cannot shrink it much
    cell = side // 4
    r, c = divmod(label, 2)
    arr[r * 2 * cell:(r * 2 + 1 + label % 2) * cell + cell, c * 2 * cell:(c * 2 + 2) * cell, label % 3] = 230
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_source(root: Path, *, train: int = 320, test: int = 80, files: int = 3, row_group: int = 40,
                 corrupt: tuple[int, ...] = (), seed: int = 0, columns: tuple[str, ...] = ("image", "label", "split"),
                 side: int = 32) -> Path:
    """``train + test`` rows over ``files`` shards (rows in order: train first, so one row group mixes
    splits when the sizes do not line up), ``corrupt`` row numbers holding garbage bytes, images of
    ``side`` pixels (about ``3 * side**2`` bytes each as PNG)."""
    rng = np.random.default_rng(seed)
    n = train + test
    labels = np.arange(n) % CLASSES
    images = [b"not an image at all" if i in corrupt else image_of(int(labels[i]), rng, side) for i in range(n)]
    split = np.where(np.arange(n) < train, "train", "test")
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, files + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        table = pa.table({"image": pa.array(images[lo:hi], pa.binary()), "label": labels[lo:hi].astype(np.int64),
                          "split": split[lo:hi], "id": np.arange(lo, hi, dtype=np.int64)})
        pq.write_table(table.select(list(columns)), root / f"part-{k:05d}.parquet", row_group_size=row_group)
    return root
