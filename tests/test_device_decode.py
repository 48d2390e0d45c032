"""``data.decode=device``: Ray Data tasks read the bytes, each worker decodes its batches on its device.

On this CPU suite the decoder runs on the CPU: the same code a GPU worker runs with ``device=cuda``
(``make gpu-check`` times it there)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jigclu.config import load_config
from jigclu.data.decode import DecodeUnits
from jigclu.data.device_decode import DeviceDecoder
from jigclu.data.stream import plan_stream
from jigclu.data.stream_loader import StreamLoader, device_decoder
from stream_data import CLASSES, image_of, write_source
from test_stream import UnitShard


def jpeg_source(root: Path, n: int = 96, side: int = 48, corrupt: tuple[int, ...] = (), png: tuple[int, ...] = (),
                gray: tuple[int, ...] = ()) -> Path:
    """``n`` JPEG rows (``png``: PNG rows instead, ``gray``: grayscale JPEGs, ``corrupt``: truncated JPEGs)."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        arr = np.array(Image.open(io.BytesIO(image_of(i % CLASSES, rng, side))).convert("RGB"))
        img = Image.fromarray(arr).convert("L") if i in gray else Image.fromarray(arr)
        buf = io.BytesIO()
        img.save(buf, format="PNG" if i in png else "JPEG", quality=92)
        data = buf.getvalue()
        images.append(data[: len(data) // 3] if i in corrupt else data)
    root.mkdir(parents=True)
    table = pa.table({"image": pa.array(images, pa.binary()), "label": np.arange(n) % CLASSES,
                      "split": ["train"] * n})
    pq.write_table(table, root / "part-00000.parquet", row_group_size=32)
    return root


@pytest.mark.parametrize("size", [None, 32])  # native 48 px, or resized to 32 on the device
def test_device_decode_matches_the_cpu_tasks_and_marks_bad_rows(tmp_path, size):
    """Fails if the device path decodes other pixels than the tasks' PIL decode (beyond JPEG/resize
    rounding), loses a PNG or grayscale row, or lets a corrupt row through unmarked."""
    src = jpeg_source(tmp_path / "pq", corrupt=(5,), png=(7, 40), gray=(9,))
    plan = plan_stream(str(src), image_size=size)
    tasks, raw = DecodeUnits(plan), DecodeUnits(plan, raw=True)
    decoder = DeviceDecoder(plan.channels, plan.image_size, "cpu")
    for index in range(len(tasks.parts)):
        for want, chunk in zip(tasks.decode_unit(index), raw.decode_unit(index)):
            assert "image" not in chunk and isinstance(chunk["data"][0], bytes)
            got = decoder(chunk)
            assert got["image"].dtype == torch.uint8 and tuple(got["image"].shape[1:]) == (3, *plan.image_size)
            assert np.array_equal(got["ok"], want["ok"]) and np.array_equal(got["key"], want["key"])
            good = want["ok"]
            diff = (got["image"].numpy()[good].astype(int) - want["image"][good].astype(int)).__abs__()
            assert diff.mean() < (0.5 if size is None else 1.0), diff.mean()  # measured: 0 and 0.16 (max 1)
            for error in got["error"][~good]:
                assert "part-00000.parquet row 5" in error
    assert sum((~c["ok"]).sum() for i in range(len(raw.parts)) for c in map(decoder, raw.decode_unit(i))) == 1


def test_stream_loader_decodes_raw_rows_into_exact_batches(tmp_path):
    """The worker side: exact batches of decoded images from raw rows, the corrupt row counted and left
    out, each image with its own label; the config picks the decoder only for data.decode=device."""
    src = jpeg_source(tmp_path / "pq", corrupt=(5,))
    plan = plan_stream(str(src))
    cfg = load_config(None, [f"data.dataset=parquet:{src}", "data.decode=device"])
    loader = StreamLoader(UnitShard(plan, raw=True), 16, shuffle_buffer=32,
                          decoder=device_decoder(cfg, plan, torch.device("cpu")))
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [16] * (95 // 16) and loader.corrupt == 1
    keys = torch.cat([b[2] for b in batches])
    assert 5 not in keys.tolist() and torch.equal(torch.cat([b[1] for b in batches]), keys % CLASSES)
    assert device_decoder(load_config(None, [f"data.dataset=parquet:{src}"]), plan, torch.device("cpu")) is None


def test_a_null_image_is_marked_without_decoding(tmp_path):
    src = write_source(tmp_path / "pq", train=8, test=0, files=1, row_group=8)
    table = pq.read_table(src / "part-00000.parquet")
    images = table["image"].to_pylist()
    images[3] = None
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())), src / "part-00000.parquet")
    plan = plan_stream(str(src))
    chunk = next(DecodeUnits(plan, raw=True).decode_unit(0))
    out = DeviceDecoder(plan.channels, plan.image_size)(chunk)
    assert out["ok"].tolist() == [i != 3 for i in range(8)] and "image is null" in out["error"][3]
