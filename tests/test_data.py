"""Tests for jigclu.data: every reader on real data written by the test, Parquet round trips,
corrupt-data policies, user-facing errors and the world-size-independent sampler.

All data is real and needs no download: scikit-learn's digits, IDX / CIFAR-pickle / PNG / Parquet
files written here from those digits, and Fashion-MNIST when Debian's package is installed.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jigclu.data import (
    FASHION_MNIST_DIR,
    CorruptDataWarning,
    ImageDataset,
    MissingSplitError,
    ShardSampler,
    balanced_subset_indices,
    collate_uint8,
    convert_main,
    load_dataset,
    make_loader,
    write_parquet,
)
from jigclu.errors import DataError

# --------------------------------------------------------------------------------------------
# Fixtures: real digits, written out in every supported on-disk format
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as uint8 [N, 8, 8] (0..255) and int64 labels, computed independently."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.rint(bunch.images * 255 / 16).astype(np.uint8), bunch.target.astype(np.int64)


def write_idx(path: Path, array: np.ndarray, *, gz: bool, magic: int | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file: 0x0000 08 ndim, big-endian uint32 dims, payload."""
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory: pytest.TempPathFactory, digits_arrays) -> Path:
    """MNIST-style files from digits: train gzipped, t10k raw (both forms must work)."""
    images, labels = digits_arrays
    d = tmp_path_factory.mktemp("idx")
    write_idx(d / "train-images-idx3-ubyte", images[:1500], gz=True)
    write_idx(d / "train-labels-idx1-ubyte", labels[:1500].astype(np.uint8), gz=True)
    write_idx(d / "t10k-images-idx3-ubyte", images[1500:], gz=False)
    write_idx(d / "t10k-labels-idx1-ubyte", labels[1500:].astype(np.uint8), gz=False)
    return d


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
# IDX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mnist", "fashion_mnist"])
def test_idx_reads_gz_and_raw(idx_dir: Path, digits_arrays, kind: str) -> None:
    images, labels = digits_arrays
    train = load_dataset(f"{kind}:{idx_dir}")  # gzipped files
    test = load_dataset(f"{kind}:{idx_dir}", split="test")  # raw files
    assert (len(train), len(test)) == (1500, 297)
    assert torch.equal(train.images[:, 0], torch.from_numpy(images[:1500]))
    assert torch.equal(test.images[:, 0], torch.from_numpy(images[1500:]))
    assert torch.equal(test.labels, torch.from_numpy(labels[1500:]))
    assert train.num_classes == 10 and train.channels == 1
    if kind == "fashion_mnist":
        assert train.classes[9] == "Ankle boot"


def test_idx_wrong_magic_is_a_data_error(tmp_path: Path, digits_arrays) -> None:
    images, labels = digits_arrays
    write_idx(tmp_path / "train-images-idx3-ubyte", images[:10], gz=False, magic=0x00000801)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:10].astype(np.uint8), gz=False)
    with pytest.raises(DataError, match=r"magic number 0x00000801, expected 0x00000803"):
        load_dataset(f"mnist:{tmp_path}")


def test_idx_truncated_file_is_a_data_error(tmp_path: Path, digits_arrays) -> None:
    images, labels = digits_arrays
    write_idx(tmp_path / "train-images-idx3-ubyte", images[:10], gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:10].astype(np.uint8), gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(f"mnist:{tmp_path}")


def test_idx_count_mismatch_is_a_data_error(tmp_path: Path, digits_arrays) -> None:
    images, labels = digits_arrays
    write_idx(tmp_path / "train-images-idx3-ubyte", images[:10], gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:9].astype(np.uint8), gz=False)
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        load_dataset(f"mnist:{tmp_path}")


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "fmnist"
    with pytest.raises(DataError) as info:
        load_dataset(f"fashion_mnist:{missing}")
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "\n" not in message
    for spec in (f"cifar10:{missing}", f"folder:{missing}", f"parquet:{missing}", f"mnist:{missing}"):
        with pytest.raises(DataError, match=str(missing)):
            load_dataset(spec)


def test_directory_without_idx_files_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(f"fashion_mnist:{tmp_path}")
    message = str(info.value)
    assert str(tmp_path) in message
    assert "looked for train-images-idx3-ubyte[.gz]" in message
    assert "apt-get install dataset-fashion-mnist" in message


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label_key: str, bytes_keys: bool) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    batch = {"data": data, label_key: labels, "batch_label": "testing"}
    if bytes_keys:  # what Python 2 pickles look like once loaded without latin1
        batch = {k.encode(): v for k, v in batch.items()}
    return batch


def _dump(path: Path, obj: object, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def test_cifar10_from_batches_dir_and_from_parent(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(rng, 6, 10, "labels", bytes_keys=i % 2 == 0)
        _dump(d / name, batches[name], protocol=[2, 4, 5][i % 3])  # several pickle protocols
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(d / "batches.meta", {"label_names": names}, protocol=2)

    for root in (d, tmp_path):  # the batches dir itself, or its parent
        train = load_dataset(f"cifar10:{root}")
        test = load_dataset(f"cifar10:{root}", split="test")
        assert (len(train), len(test)) == (30, 6)
        assert (train.channels, train.image_size, train.classes) == (3, (32, 32), names)
        # Rows are the R, G, B planes in order: pixel (y, x) of channel c is data[c*1024 + y*32 + x].
        first = batches["data_batch_1"]
        data = first[b"data"]
        img, label = train[0]
        assert label == first[b"labels"][0]
        assert int(img[1, 2, 3]) == int(data[0, 1024 + 2 * 32 + 3])
        assert torch.equal(test.images.reshape(6, -1), torch.from_numpy(batches["test_batch"]["data"]))


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    train = _cifar_batch(rng, 8, 100, "fine_labels", bytes_keys=False)
    train["coarse_labels"] = [0] * 8
    _dump(d / "train", train, protocol=4)
    _dump(d / "test", _cifar_batch(rng, 4, 100, "fine_labels", bytes_keys=False), protocol=4)
    ds = load_dataset(f"cifar100:{tmp_path}", image_size=16)
    assert ds.num_classes == 100 and ds.image_size == (16, 16)
    assert ds.labels.tolist() == train["fine_labels"]


def test_cifar_refuses_pickles_that_would_run_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # would call os.system("...") on a plain pickle.load
            return (os.system, ("echo pwned",))

    _dump(tmp_path / "test_batch", {"data": Evil(), "labels": []}, protocol=4)
    with pytest.raises(DataError, match="refusing to load global"):
        load_dataset(f"cifar10:{tmp_path}", split="test")


def test_cifar_missing_batches(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no CIFAR batches in .*data_batch_1"):
        load_dataset(f"cifar10:{tmp_path}")


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


# --------------------------------------------------------------------------------------------
# Sampler, collate, loader
# --------------------------------------------------------------------------------------------


def _interleave(per_rank: list[list[int]]) -> list[int]:
    """Global order back from the ranks: position j * R + r is rank r's j-th index."""
    return [idx for step in zip(*per_rank, strict=True) for idx in step]


@pytest.mark.parametrize("n", [0, 1, 12, 100, 101])
def test_shard_sampler_is_world_size_independent(n: int) -> None:
    epoch_order = {}
    for world in (1, 2, 3):
        samplers = [ShardSampler(n, num_replicas=world, rank=r, seed=7) for r in range(world)]
        for s in samplers:
            s.set_epoch(4)
        per_rank = [list(s) for s in samplers]
        assert all(len(p) == len(s) == n // world for p, s in zip(per_rank, samplers, strict=True))
        order = _interleave(per_rank)
        # Union over ranks is exactly the epoch permutation, truncated to a multiple of world.
        generator = torch.Generator()
        generator.manual_seed(7 + 4)
        perm = torch.randperm(n, generator=generator).tolist()
        assert order == perm[: n - n % world]
        assert len(set(order)) == len(order)
        epoch_order[world] = order
    # Same global order for every world size (up to the truncated tail).
    common = min(len(o) for o in epoch_order.values())
    assert epoch_order[1][:common] == epoch_order[2][:common] == epoch_order[3][:common]


def test_shard_sampler_epochs_differ_and_resume_mid_epoch() -> None:
    s = ShardSampler(50, seed=0)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert first != second and sorted(first) == sorted(second) == list(range(50))
    # Resuming after 20 global samples at a new world size continues the same order.
    resumed = [ShardSampler(50, num_replicas=3, rank=r, seed=0) for r in range(3)]
    for r in resumed:
        r.set_epoch(1, start=20)
    assert _interleave([list(r) for r in resumed]) == second[20:50][:30]


def test_shard_sampler_without_drop_last_pads_and_without_shuffle_is_ordered() -> None:
    ranks = [ShardSampler(5, num_replicas=4, rank=r, shuffle=False, drop_last=False) for r in range(4)]
    per_rank = [list(r) for r in ranks]
    assert [len(p) for p in per_rank] == [2, 2, 2, 2]
    assert _interleave(per_rank) == [0, 1, 2, 3, 4, 0, 1, 2]
    with pytest.raises(ValueError):
        ShardSampler(10, num_replicas=2, rank=2)


def test_collate_uint8_and_make_loader() -> None:
    ds = load_dataset("digits", split="test")
    loader, sampler = make_loader(ds, batch_size=32, num_replicas=2, rank=1, seed=3)
    sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 180 // 32  # rank 1 holds 180 items; last partial batch dropped
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (32, 1, 8, 8)
    assert labels.dtype == torch.long and labels.shape == (32,)
    expected = list(sampler)[:32]
    assert torch.equal(labels, ds.labels[expected])
    assert torch.equal(images, ds.images[expected])
    with pytest.raises(DataError, match="different shapes"):
        collate_uint8([(torch.zeros(1, 2, 2, dtype=torch.uint8), 0), (torch.zeros(1, 3, 3, dtype=torch.uint8), 1)])


def test_balanced_subset_and_dataset_subset() -> None:
    ds = load_dataset("digits")
    idx = balanced_subset_indices(ds.labels, per_class=5, seed=1)
    assert torch.bincount(ds.labels[idx], minlength=10).tolist() == [5] * 10
    assert torch.equal(idx, balanced_subset_indices(ds.labels, per_class=5, seed=1))
    assert not torch.equal(idx, balanced_subset_indices(ds.labels, per_class=5, seed=2))
    frac = balanced_subset_indices(ds.labels, fraction=0.1)
    counts = torch.bincount(ds.labels, minlength=10)
    assert torch.bincount(ds.labels[frac], minlength=10).tolist() == [round(0.1 * int(c)) for c in counts]
    sub = ds.subset(idx)
    assert len(sub) == 50 and sub.classes == ds.classes and sub.images is not None
    assert torch.equal(sub[7][0], ds[int(idx[7])][0])
    view = ImageDataset.subset(ds, idx)  # the generic version any subclass inherits
    assert torch.equal(view.labels, sub.labels) and torch.equal(view[49][0], sub[49][0])


# --------------------------------------------------------------------------------------------
# Real Fashion-MNIST (Debian's dataset-fashion-mnist), when installed
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package() -> None:
    train = load_dataset("fashion_mnist")
    test = load_dataset("fashion_mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    for ds, per_class in ((train, 6000), (test, 1000)):
        assert (ds.num_classes, ds.channels, ds.image_size) == (10, 1, (28, 28))
        assert ds.images is not None and ds.images.shape[1:] == (1, 28, 28)
        assert torch.bincount(ds.labels).tolist() == [per_class] * 10
    assert train.classes[train[0][1]] == "Ankle boot"  # the well-known first training image
