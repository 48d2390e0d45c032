"""``jigclu data convert`` writes Parquet sized for streaming: shards by bytes, row groups of N rows,
a dataset-wide ``id``, pure splits, a seeded shuffle, PNG or JPEG, and progress on stdout."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jigclu.cli import main
from jigclu.data import ImageDataset, TensorImageDataset, load_dataset, write_parquet
from jigclu.data.convert import MB
from jigclu.data.parquet import META_IMAGE_FORMAT
from jigclu.errors import DataError

JIGCLU = str(Path(sys.executable).parent / "jigclu")
TARGET_MB = 0.02  # digits' PNGs are ~130 bytes: about 160 rows a shard
GROUP = 64


def _shards(dest: Path) -> list[Path]:
    return sorted(dest.glob("part-*.parquet"))


def _read_all(dest: Path) -> pa.Table:
    """Every shard, in shard order (the order a streaming reader sees)."""
    return pa.concat_tables(pq.read_table(p) for p in _shards(dest))


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("convert") / "digits"
    assert write_parquet("digits", str(dest), shard_mb=TARGET_MB, row_group_rows=GROUP) == 1797
    return dest


def test_shards_reach_the_size_target_in_row_groups_of_the_requested_rows(small_shards: Path) -> None:
    shards = _shards(small_shards)
    assert [p.name for p in shards] == [f"part-{i:05d}.parquet" for i in range(len(shards))]
    assert len(shards) >= 8
    target = TARGET_MB * MB
    full = 0
    for path in shards:
        meta = pq.ParquetFile(path).metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        assert all(g.num_rows == GROUP for g in groups[:-1]) and 0 < groups[-1].num_rows <= GROUP
        largest_group = max(g.total_byte_size for g in groups)
        size = path.stat().st_size
        assert size <= target + largest_group, (path.name, size)
        full += size >= target  # only the last shard of each split may fall short
    assert full >= len(shards) - 2


def test_ids_are_unique_and_complete_and_each_shard_holds_one_split(small_shards: Path) -> None:
    table = _read_all(small_shards)
    assert table.schema.field("id").type == pa.int64()
    assert sorted(table["id"].to_pylist()) == list(range(1797))
    assert table["id"].to_pylist() == list(range(1797))  # no shuffle: ids count up in writing order
    splits_seen = []
    for path in _shards(small_shards):
        meta = pq.ParquetFile(path).metadata
        split_col = pq.read_table(path, columns=["split"])["split"].unique().to_pylist()
        assert len(split_col) == 1
        splits_seen.append(split_col[0])
        for i in range(meta.num_row_groups):  # row-group statistics a streaming reader can prune on
            names = [meta.row_group(i).column(j).path_in_schema for j in range(meta.num_columns)]
            stats = {n: meta.row_group(i).column(j).statistics for j, n in enumerate(names)}
            assert stats["split"].min == stats["split"].max == split_col[0]
            assert 0 <= stats["label"].min <= stats["label"].max <= 9 and stats["id"].has_min_max
    assert splits_seen == sorted(splits_seen, key=["train", "test"].index)  # train shards, then test
    # the reader gives back the source, exactly
    back = load_dataset(f"parquet:{small_shards}", split="test")
    original = load_dataset("digits", split="test")
    assert torch.equal(back.labels, original.labels)
    assert all(torch.equal(back[i][0], original[i][0]) for i in range(0, len(back), 37))


def test_rows_per_shard_still_caps_a_shard(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_parquet("digits", str(dest), rows_per_shard=100, row_group_rows=30, split_names=("test",))
    rows = [pq.ParquetFile(p).metadata.num_rows for p in _shards(dest)]
    assert rows == [100, 100, 100, 60]
    groups = pq.ParquetFile(_shards(dest)[0]).metadata
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == [30, 30, 30, 10]


def test_shuffle_is_seeded_and_no_shuffle_keeps_source_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = load_dataset("digits", split="train").labels.tolist()
    orders = {}
    for name, args in {"a": ["--seed", "7"], "b": ["--seed", "7"], "c": ["--seed", "8"], "plain": ["--no-shuffle"],
                       "default": []}.items():
        assert main(["data", "convert", "digits", str(tmp_path / name), "--row-group-rows", "256", *args]) == 0
        table = _read_all(tmp_path / name)
        train = table.filter(pa.compute.equal(table["split"], "train"))
        orders[name] = (train["label"].to_pylist(), train["image"].to_pylist())
    assert "convert: wrote part-00000.parquet" in capsys.readouterr().out
    assert orders["a"] == orders["b"]
    assert orders["a"][0] != orders["c"][0] and orders["a"][0] != source
    assert sorted(orders["a"][0]) == sorted(source)  # a permutation of the same rows
    assert orders["plain"][0] == source
    assert orders["default"][0] != source  # the CLI shuffles unless told not to
    # shuffled shards still read back as the same images
    back = load_dataset(f"parquet:{tmp_path / 'a'}")
    assert back.labels.tolist() == orders["a"][0]


def _smooth(n: int, channels: int, size: int = 64) -> TensorImageDataset:
    """Smooth, noise-free images (slow waves and rings, different per image): what JPEG compresses well."""
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for k in range(n):
        planes = []
        for c in range(channels):
            r = np.hypot(x - 0.3 - 0.1 * c, y - 0.6 + 0.01 * k)
            wave = np.sin(2 * np.pi * (1.3 + 0.05 * k) * x + c) * np.cos(2 * np.pi * (0.9 + 0.3 * c) * y)
            planes.append(127 + 60 * wave + 50 * np.cos(9 * r + k))
        images.append(np.stack(planes))
    tensor = torch.from_numpy(np.clip(np.stack(images), 0, 255).astype(np.uint8))
    return TensorImageDataset.from_tensors(tensor, [k % 4 for k in range(n)], split="train")


def _total_bytes(dest: Path) -> int:
    return sum(p.stat().st_size for p in _shards(dest))


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_round_trip_is_close_smaller_than_png_and_quality_sets_size(tmp_path: Path, channels: int) -> None:
    original = _smooth(48, channels)
    write_parquet(original, str(tmp_path / "png"))
    for q in (90, 30):
        write_parquet(original, str(tmp_path / f"q{q}"), image_format="jpeg", quality=q)
    assert _total_bytes(tmp_path / "q30") < _total_bytes(tmp_path / "q90") < _total_bytes(tmp_path / "png")

    shard = pq.ParquetFile(_shards(tmp_path / "q90")[0])
    assert shard.schema_arrow.metadata[META_IMAGE_FORMAT] == b"jpeg"
    with Image.open(io.BytesIO(shard.read()["image"][0].as_py())) as img:
        assert (img.format, img.mode) == ("JPEG", "L" if channels == 1 else "RGB")

    back = load_dataset(f"parquet:{tmp_path / 'q90'}")
    assert (back.channels, back.image_size) == (channels, (64, 64))
    assert torch.equal(back.labels, original.labels)
    error = torch.stack([(back[i][0].float() - original[i][0].float()).abs().mean() for i in range(len(back))])
    assert 0 < error.mean() < 3, error.mean()  # close, not equal


def test_source_error_mid_write_is_raised_as_is_and_leaves_nothing(tmp_path: Path) -> None:
    class Exploding(ImageDataset):
        """Fails on its 700th item, after several shards have been written."""

        def __init__(self) -> None:
            super().__init__(name="exploding", split="train", classes=["x"], labels=torch.zeros(1000, dtype=torch.long),
                             channels=1, image_size=(4, 4))

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            if index == 700:
                raise RuntimeError("disk on fire")
            return torch.full((1, 4, 4), index % 256, dtype=torch.uint8), 0

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_parquet(Exploding(), str(tmp_path / "out"), shard_mb=0.005, row_group_rows=50)
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_one_line_per_shard_when_not_a_terminal(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    out = subprocess.run([JIGCLU, "data", "convert", "digits", str(dest), "--shard-mb", "0.05",
                          "--row-group-rows", "128"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "\x1b" not in out.stdout  # no bar, no colour codes in a pipe
    pattern = re.compile(r"convert: wrote (part-\d{5}\.parquet) \(([\d,]+) rows, \d+\.\d MB\), ([\d,]+)/1,797 rows")
    matches = [pattern.fullmatch(line) for line in lines[:-1]]
    assert all(matches), lines
    assert [m.group(1) for m in matches] == [p.name for p in _shards(dest)]
    done = [int(m.group(3).replace(",", "")) for m in matches]
    assert done == list(np.cumsum([int(m.group(2).replace(",", "")) for m in matches])) and done[-1] == 1797
    assert lines[-1] == f"wrote 1797 images to {dest}"


@pytest.mark.parametrize("args", [["--format", "jpeg", "--quality", "0"], ["--quality", "200"], ["--shard-mb", "0"],
                                  ["--row-group-rows", "0"], ["--format", "gif"]])
def test_cli_bad_values_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       args: list[str]) -> None:
    dest = tmp_path / "out"
    assert main(["data", "convert", "digits", str(dest), *args]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("jigclu: error: ")
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_quality_in_a_real_process(tmp_path: Path) -> None:
    out = subprocess.run([JIGCLU, "data", "convert", "digits", str(tmp_path / "out"), "--format", "jpeg",
                          "--quality", "200"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["jigclu: error: JPEG quality must be an integer from 1 to 95, got 200"]
    assert list(tmp_path.iterdir()) == []


def test_python_api_checks_values_and_is_quiet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for kwargs in ({"shard_mb": -1}, {"row_group_rows": 0}, {"shuffle_seed": -3}, {"rows_per_shard": 0},
                   {"image_format": "webp"}, {"quality": 96}):
        with pytest.raises(DataError):
            write_parquet("digits", str(tmp_path / "out"), **kwargs)
    write_parquet("digits", str(tmp_path / "out"), split_names=("test",), image_format="JPG")
    assert capsys.readouterr().out == ""
    assert pq.ParquetFile(_shards(tmp_path / "out")[0]).schema_arrow.metadata[META_IMAGE_FORMAT] == b"jpeg"
