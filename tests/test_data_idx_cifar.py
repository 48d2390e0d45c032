"""Tests for jigclu.data's readers of the published datasets' own formats: MNIST-style IDX files
(gzipped or raw) and CIFAR-10/100 pickles (loaded without running code), and the real
Fashion-MNIST from Debian's dataset-fashion-mnist when installed.

All data is real and needs no download: IDX files written here from scikit-learn's digits
(tests/conftest.py's ``digits_arrays``), CIFAR batches of random bytes pickled here.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from jigclu.data import FASHION_MNIST_DIR, load_dataset
from jigclu.errors import DataError

# --------------------------------------------------------------------------------------------
# Fixtures: real digits written out as IDX files
# --------------------------------------------------------------------------------------------


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
