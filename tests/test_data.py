"""Tests for jigclu.data: the digits split, ImageFolder trees and Parquet (readers on real data
written by the test, round trips), corrupt-data policies and user-facing errors.

All data is real and needs no download: scikit-learn's digits (tests/conftest.py's ``digits_arrays``)
and PNG / Parquet files written here from those digits. The IDX and CIFAR readers are in
tests/test_data_idx_cifar.py, the sampler, collate and loaders in tests/test_data_loading.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jigclu.data import (
    CorruptDataWarning,
    ImageDataset,
    MissingSplitError,
    collate_uint8,
    convert_main,
    load_dataset,
    write_parquet,
)
from jigclu.errors import DataError

# --------------------------------------------------------------------------------------------
# Fixtures: real digits (tests/conftest.py's ``digits_arrays``) written out as an ImageFolder tree
# --------------------------------------------------------------------------------------------


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def folder_split(tmp_path_factory: pytest.TempPathFactory, digits_arrays) -> tuple[Path, np.ndarray]:
    """An ImageFolder tree with train/ and val/ of grayscale digit PNGs; returns (root, n_train)."""
    images, labels = digits_arrays
    root = tmp_path_factory.mktemp("folder_split")
    for i in range(300):
        split = "train" if i < 200 else "val"
        save_png(root / split / f"class_{labels[i]}" / f"{i:04d}.png", images[i])
    (root / "train" / "README.txt").write_text("not an image and not a class")
    return root, np.arange(300)


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_split_is_stratified_deterministic_and_scaled(digits_arrays) -> None:
    images, labels = digits_arrays
    train = load_dataset("digits")
    test = load_dataset("digits", split="val")  # "val" is an alias of "test"
    assert (len(train), len(test)) == (1437, 360)
    assert train.split == "train" and test.split == "test"
    assert (train.channels, train.image_size, train.num_classes) == (1, (8, 8), 10)
    assert train.images is not None and train.images.dtype == torch.uint8
    assert train.images.shape == (1437, 1, 8, 8)
    assert int(train.images.max()) == 255  # 16 -> 255
    # Stratified: every class keeps ~80% of its members in train.
    for c in range(10):
        n_c = int((labels == c).sum())
        assert abs(int((train.labels == c).sum()) - 0.8 * n_c) <= 1
    # Every train item is the digits image it claims to be (match by pixels).
    lookup = {images[i].tobytes(): labels[i] for i in range(len(labels))}
    for i in (0, 100, 1436):
        img, label = train[i]
        assert img.shape == (1, 8, 8) and isinstance(label, int)
        assert lookup[img[0].numpy().tobytes()] == label
    # Deterministic, and train/test disjoint and complete.
    assert torch.equal(load_dataset("digits").labels, train.labels)
    joined = torch.cat([train.images, test.images]).reshape(-1, 64)
    assert len({row.numpy().tobytes() for row in joined}) == len({im.tobytes() for im in images})


def test_in_memory_resize_is_done_once_at_load() -> None:
    ds = load_dataset("digits", image_size=16)
    assert ds.image_size == (16, 16) and ds.images is not None and ds.images.shape[-2:] == (16, 16)
    img, _ = ds[0]
    assert img.shape == (1, 16, 16) and img.dtype == torch.uint8
    # Items are copies: writing into one must not change the dataset.
    img.zero_()
    assert ds[0][0].sum() > 0


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def test_folder_with_train_and_val(folder_split, digits_arrays) -> None:
    root, _ = folder_split
    images, labels = digits_arrays
    train = load_dataset(f"folder:{root}")
    test = load_dataset(f"folder:{root}", split="test")
    assert train.images is None  # lazy
    assert (len(train), len(test)) == (200, 100)
    assert train.classes == [f"class_{c}" for c in range(10)] == test.classes
    assert (train.channels, train.image_size) == (1, (8, 8))  # all PNGs are L
    # Files are sorted by class then name, so we know which digit each item is.
    order = sorted(range(200), key=lambda i: (labels[i], i))
    for pos in (0, 57, 199):
        img, label = train[pos]
        assert label == labels[order[pos]]
        assert torch.equal(img[0], torch.from_numpy(images[order[pos]]))


def test_flat_folder_is_train_only_and_rgb_resized(tmp_path: Path, digits_arrays) -> None:
    images, labels = digits_arrays
    for i in range(12):
        rgb = np.stack([images[i], images[i] // 2, 255 - images[i]], axis=-1)
        size = (8, 8) if i == 0 else (10 + i, 9)  # mixed sizes: first image fixes the size
        class_dir = tmp_path / "ab"[i // 6]
        class_dir.mkdir(exist_ok=True)
        Image.fromarray(rgb).resize(size).save(class_dir / f"{i:02d}.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert (len(ds), ds.classes, ds.channels, ds.image_size) == (12, ["a", "b"], 3, (8, 8))
    batch, batch_labels = collate_uint8([ds[i] for i in range(len(ds))])
    assert batch.shape == (12, 3, 8, 8) and batch.dtype == torch.uint8
    assert batch_labels.tolist() == [0] * 6 + [1] * 6
    assert load_dataset(f"folder:{tmp_path}", image_size=(5, 7))[3][0].shape == (3, 5, 7)
    with pytest.raises(MissingSplitError, match="no test split"):
        load_dataset(f"folder:{tmp_path}", split="test")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_png_skip_counts_and_fail_raises(tmp_path: Path, digits_arrays, damage: str) -> None:
    images, _ = digits_arrays
    for i in range(6):
        save_png(tmp_path / f"c{i % 2}" / f"{i}.png", images[i])
    bad = tmp_path / "c1" / "bad.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not a png at all")
    else:
        good = (tmp_path / "c1" / "1.png").read_bytes()
        bad.write_bytes(good[: len(good) // 2])

    with pytest.warns(CorruptDataWarning, match="skipped 1 corrupt image"):
        ds = load_dataset(f"folder:{tmp_path}")
    assert ds.num_corrupt == 1 and len(ds) == 6
    assert all(ds[i][0].shape == (1, 8, 8) for i in range(len(ds)))

    with pytest.raises(DataError, match=r"corrupt image .*bad\.png"):
        load_dataset(f"folder:{tmp_path}", on_corrupt="fail")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_dataset(f"folder:{tmp_path}")


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------


def test_parquet_round_trip_is_lossless(tmp_path: Path) -> None:
    dest = tmp_path / "digits-parquet"
    rows = write_parquet("digits", str(dest), rows_per_shard=500)
    assert rows == 1797
    shards = sorted(p.name for p in dest.iterdir())
    assert shards == [f"part-{i:05d}.parquet" for i in range(4)]  # 1437 -> 3 shards, 360 -> 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir renamed away
    table = pq.read_table(dest / "part-00000.parquet")
    assert table.schema.field("image").type == pa.binary() and table.schema.field("label").type == pa.int64()

    for split in ("train", "test"):
        original = load_dataset("digits", split=split)
        back = load_dataset(f"parquet:{dest}", split=split)
        assert torch.equal(back.labels, original.labels)
        assert (back.channels, back.image_size, back.classes) == (1, (8, 8), original.classes)
        decoded = collate_uint8([back[i] for i in range(len(back))])[0]
        assert torch.equal(decoded, original.images)


def test_parquet_round_trip_rgb_folder_via_file_uri(folder_split, tmp_path: Path) -> None:
    root, _ = folder_split
    original = load_dataset(f"folder:{root}", split="test", image_size=6)
    dest = tmp_path / "out"
    assert write_parquet(original, str(dest)) == 100  # a loaded dataset: written as its split
    back = load_dataset(f"parquet:file://{dest}", split="val")
    assert back.classes == original.classes and back.image_size == (6, 6)
    assert torch.equal(back.labels, original.labels)
    assert all(torch.equal(back[i][0], original[i][0]) for i in range(0, 100, 7))
    with pytest.raises(MissingSplitError, match="no rows whose split is train"):
        load_dataset(f"parquet:{dest}")


def test_write_parquet_refuses_non_empty_destination_and_accepts_empty(tmp_path: Path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match=r"refusing to overwrite .*taken"):
        write_parquet("digits", str(dest))
    assert (dest / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert_main("digits", str(empty), image_size=4) == 1797
    assert load_dataset(f"parquet:{empty}").image_size == (4, 4)


def test_write_parquet_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    class Exploding(ImageDataset):
        """Fails on its 700th item, after the first shard has been written."""

        def __init__(self) -> None:
            super().__init__(
                name="exploding", split="train", classes=["x"], labels=torch.zeros(1000, dtype=torch.long),
                channels=1, image_size=(4, 4),
            )  # fmt: skip

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            if index == 700:
                raise RuntimeError("disk on fire")
            return torch.zeros(1, 4, 4, dtype=torch.uint8), 0

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_parquet(Exploding(), str(tmp_path / "out"), rows_per_shard=500)
    assert list(tmp_path.iterdir()) == []


def _foreign_parquet(path: Path, images: list[bytes | None], labels: list[int], split: list[str] | None) -> None:
    columns = {"image": pa.array(images, type=pa.binary()), "label": pa.array(labels, type=pa.int64())}
    if split is not None:
        columns["split"] = pa.array(split)
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path / "data.parquet")


def _png(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_written_elsewhere_without_split_column(tmp_path: Path, digits_arrays) -> None:
    images, labels = digits_arrays
    blobs: list[bytes | None] = [_png(images[i]) for i in range(10)]
    blobs[3] = b"\x89PNG\r\n\x1a\n broken"
    blobs[5] = None
    _foreign_parquet(tmp_path / "p", blobs, labels[:10].tolist(), split=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"parquet:{tmp_path / 'p'}")
    assert sum(issubclass(w.category, CorruptDataWarning) for w in caught) == 1
    assert (ds.num_corrupt, len(ds), ds.channels) == (2, 8, 1)
    assert ds.classes == [str(c) for c in range(int(labels[:10].max()) + 1)]
    assert ds.labels.tolist() == [labels[i] for i in range(10) if i not in (3, 5)]
    assert torch.equal(ds[3][0][0], torch.from_numpy(images[4]))  # item 3 is row 4 after the skip
    with pytest.raises(DataError, match=r"data\.parquet row 3"):
        load_dataset(f"parquet:{tmp_path / 'p'}", on_corrupt="fail")
    with pytest.raises(MissingSplitError, match="no 'split' column"):
        load_dataset(f"parquet:{tmp_path / 'p'}", split="test")


def test_parquet_with_wrong_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.mkdir()
    pq.write_table(pa.table({"img": pa.array([b"x"]), "label": pa.array(["cat"])}), path / "x.parquet")
    with pytest.raises(DataError, match="needs a binary 'image' column .* and an integer 'label' column"):
        load_dataset(f"parquet:{path}")


# --------------------------------------------------------------------------------------------
# Specs and arguments
# --------------------------------------------------------------------------------------------


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("imagenet:/data")
    message = str(info.value)
    assert "'imagenet'" in message
    for kind in ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "folder", "parquet"):
        assert kind in message


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"spec": "digits", "split": "validation"}, "split must be"),
        ({"spec": "digits", "on_corrupt": "ignore"}, "on_corrupt must be"),
        ({"spec": "digits", "image_size": 0}, "image_size must be"),
        ({"spec": "digits:/somewhere"}, "digits takes no location"),
        ({"spec": "cifar10"}, "cifar10 needs a directory"),
        ({"spec": "parquet:"}, "parquet needs a location"),
    ],
)
def test_bad_arguments_are_data_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_dataset(**kwargs)
