"""Readers for every supported source, behind one entry point: :func:`load_dataset`.

A source is named by a *spec* string, ``KIND`` or ``KIND:LOCATION``:

=========================  ===================================================================
``digits``                 scikit-learn's bundled 8x8 digits (1,797 images; always available)
``fashion_mnist[:DIR]``    Fashion-MNIST IDX files; default DIR is Debian's
                           ``/usr/share/datasets/fashion-mnist`` (``dataset-fashion-mnist``)
``mnist:DIR``              MNIST IDX files
``cifar10:DIR``            CIFAR-10, python-pickle layout (``data_batch_1..5``, ``test_batch``)
``cifar100:DIR``           CIFAR-100, python-pickle layout (``train``, ``test``)
``folder:DIR``             ImageFolder tree (one subfolder per class), optionally split into
                           ``DIR/train`` and ``DIR/val`` (or ``DIR/test``)
``parquet:DIR|URI``        Parquet shards with ``image`` (encoded bytes) and ``label`` columns
                           and an optional ``split`` column; local or ``s3://`` / ``gs://``
=========================  ===================================================================

Every problem the user can fix (missing files, a wrong magic number, an unknown kind) raises
:class:`~jigclu.errors.DataError` with one line saying what was wrong, where we looked and how
to get the data.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch

from jigclu.data import storage
from jigclu.data.images import (
    EncodedImageDataset,
    FileBlobs,
    ImageDataset,
    ImageSize,
    TensorImageDataset,
    as_size,
    check_on_corrupt,
    probe_image,
    resize_uint8,
    verify_blobs,
)
from jigclu.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX ``.gz`` files."""

SPLITS = ("train", "test")
_SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test"}

# Metadata keys written by jigclu.data.convert.write_parquet and honoured when reading back,
# so that a converted dataset keeps its class names, channel count and image size exactly.
META_CLASSES = b"jigclu.classes"
META_CHANNELS = b"jigclu.channels"
META_IMAGE_SIZE = b"jigclu.image_size"
META_SOURCE = b"jigclu.source"


class MissingSplitError(DataError):
    """The source exists but has no such split (e.g. a flat ImageFolder asked for ``test``)."""


def normalize_split(split: str) -> str:
    """``"train"`` or ``"test"`` (``"val"`` is an alias of ``"test"``)."""
    try:
        return _SPLIT_ALIASES[split]
    except (KeyError, TypeError):
        raise DataError(f"split must be 'train' or 'test' (or 'val'), got {split!r}") from None


@dataclass(frozen=True)
class _Request:
    """One :func:`load_dataset` call, as every reader receives it."""

    spec: str  # as the user wrote it, used as the dataset's name
    kind: str
    location: str  # "" when the spec has no ':LOCATION' part
    split: str  # "train" or "test"
    image_size: ImageSize | None
    on_corrupt: str


Reader = Callable[[_Request], ImageDataset]


def load_dataset(
    spec: str,
    split: str = "train",
    image_size: int | tuple[int, int] | None = None,
    on_corrupt: str = "skip",
) -> ImageDataset:
    """Load one split of the dataset named by ``spec`` (see the module docstring for the forms).

    Args:
        spec: ``KIND`` or ``KIND:LOCATION``, e.g. ``"digits"``, ``"cifar10:~/data/cifar"``,
            ``"parquet:s3://bucket/fmnist"``.
        split: ``"train"`` or ``"test"`` (``"val"`` means ``"test"``).
        image_size: side (or ``(H, W)``) every item is resized to. In-memory sources are resized
            once at load time; lazy sources (folder, parquet) resize on access and, when this is
            ``None``, use the size of the first train image.
        on_corrupt: ``"skip"`` leaves undecodable images out (one :class:`CorruptDataWarning`
            with the count) or ``"fail"`` raises :class:`DataError` naming the first one.

    Raises:
        DataError: unknown kind, missing or malformed files, no such split, bad arguments.
    """
    check_on_corrupt(on_corrupt)
    kind, location = parse_spec(spec)
    request = _Request(
        spec=spec,
        kind=kind,
        location=location,
        split=normalize_split(split),
        image_size=as_size(image_size),
        on_corrupt=on_corrupt,
    )
    return _READERS[kind](request)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``KIND[:LOCATION]`` into its kind (validated) and location (``~`` not yet expanded)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec must be a non-empty string like 'digits' or 'cifar10:/data'; got {spec!r}")
    kind, _, location = spec.strip().partition(":")
    kind = _KIND_ALIASES.get(kind.lower(), kind.lower())
    if kind not in _READERS:
        raise DataError(f"unknown dataset kind {kind!r} in {spec!r}; known kinds: {', '.join(KNOWN_KINDS)}")
    return kind, location.strip()


def _local_dir(req: _Request, default: str | None = None) -> str:
    """The request's location as an absolute local directory; errors if missing."""
    location = req.location or default
    if not location:
        raise DataError(f"{req.kind} needs a directory: {req.kind}:/path/to/data ({_HINTS[req.kind]})")
    if storage.is_uri(location):
        raise DataError(f"{req.kind} reads local directories only, got {location}; use parquet:URI for cloud data")
    path = os.path.abspath(os.path.expanduser(location))
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DataError(f"{req.kind}: {path} {what}; {_HINTS[req.kind]}")
    return path


def _finish_in_memory(req: _Request, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> ImageDataset:
    """Wrap decoded ``uint8 [N, C, H, W]`` arrays, resizing once if ``image_size`` asks for it."""
    if not images.flags.writeable:  # e.g. np.frombuffer over file bytes; torch wants to own it
        images = images.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if req.image_size is not None:
        tensor = resize_uint8(tensor, req.image_size)
    return TensorImageDataset(
        tensor,
        torch.from_numpy(labels.astype(np.int64)),
        name=req.spec,
        split=req.split,
        classes=classes,
    )


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _load_digits(req: _Request) -> ImageDataset:
    """sklearn's 8x8 digits, 0..16 scaled to 0..255, class-stratified 80/20 split (fixed seed)."""
    if req.location:
        raise DataError(f"digits takes no location (it ships inside scikit-learn); use 'digits', not {req.spec!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    # Sorted: keep the original (deterministic) order inside each split.
    idx = np.sort(train_idx if req.split == "train" else test_idx)
    return _finish_in_memory(req, images[idx], labels[idx], [str(c) for c in range(10)])


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_UBYTE = 0x08  # the only element type MNIST-style files use


def _idx_names(prefix: str, what: str) -> list[str]:
    """File names an IDX file may have (``train-images-idx3-ubyte`` or Kaggle's ``train-images.idx3-ubyte``)."""
    ndim = 3 if what == "images" else 1
    return [f"{prefix}-{what}-idx{ndim}-ubyte", f"{prefix}-{what}.idx{ndim}-ubyte"]


def _find_idx(root: str, prefix: str, what: str) -> str | None:
    """Path of an IDX file under ``root`` (also torchvision's ``MNIST/raw`` layout), raw or ``.gz``."""
    dirs = [root] + [os.path.join(root, *sub, "raw") for sub in ((), ("MNIST",), ("FashionMNIST",))]
    for d in dirs:
        for base in _idx_names(prefix, what):
            for ext in ("", ".gz"):  # raw first: no decompression needed
                path = os.path.join(d, base + ext)
                if os.path.isfile(path):
                    return path
    return None


def read_idx(path: str, ndim: int, kind: str = "idx") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped or not) into an array of ``ndim`` dims.

    The header is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian uint32 sizes; the
    payload must hold exactly their product of bytes.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # sniff gzip instead of trusting the file name
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"{kind}: cannot read {path}: {exc}") from exc
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
        found = f"0x{magic:08x}" if magic is not None else f"a {len(raw)}-byte file"
        raise DataError(
            f"{kind}: {path} is not an IDX file of {ndim}-d unsigned bytes "
            f"(magic number {found}, expected 0x{expected_magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{kind}: {path} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise DataError(
            f"{kind}: {path} holds {len(raw) - header} data bytes but its IDX header "
            f"promises {'x'.join(map(str, dims))} = {size}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _load_idx(req: _Request) -> ImageDataset:
    """MNIST-style IDX files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    root = _local_dir(req, default=FASHION_MNIST_DIR if req.kind == "fashion_mnist" else None)
    prefix = _IDX_PREFIX[req.split]
    paths = {}
    for what in ("images", "labels"):
        path = _find_idx(root, prefix, what)
        if path is None:
            looked = f"{_idx_names(prefix, what)[0]}[.gz]"
            raise DataError(f"{req.kind}: no IDX {what} file in {root} (looked for {looked}); {_HINTS[req.kind]}")
        paths[what] = path
    images = read_idx(paths["images"], 3, req.kind)
    labels = read_idx(paths["labels"], 1, req.kind).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"{req.kind}: {paths['images']} has {len(images)} images but {paths['labels']} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= 10:
        raise DataError(f"{req.kind}: {paths['labels']} has label {labels.max()}; MNIST-style labels are 0..9")
    classes = FASHION_MNIST_CLASSES if req.kind == "fashion_mnist" else [str(c) for c in range(10)]
    return _finish_in_memory(req, images[:, None], labels, list(classes))


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle layout)
# --------------------------------------------------------------------------------------------

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@dataclass(frozen=True)
class _CifarLayout:
    subdir: str
    files: dict[str, list[str]]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int


_CIFAR = {
    "cifar10": _CifarLayout(
        subdir="cifar-10-batches-py",
        files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        label_key="labels",
        meta_file="batches.meta",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": _CifarLayout(
        subdir="cifar-100-python",
        files={"train": ["train"], "test": ["test"]},
        label_key="fine_labels",
        meta_file="meta",
        names_key="fine_label_names",
        num_classes=100,
    ),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays, lists and strings, and nothing else.

    The CIFAR batches are pickles, and ``pickle.load`` on a file someone handed you runs
    arbitrary code. These files only ever need numpy's array reconstruction, so we allow exactly
    that (for files written by numpy 1.x and 2.x, Python 2 and 3) and refuse every other global.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 spell bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 renamed it
        return super().find_class(module, name)


def _unpickle_dict(path: str, kind: str) -> dict[str, object]:
    """Load one CIFAR pickle (Python 2 or 3) as a dict with ``str`` keys."""
    try:
        with open(path, "rb") as f:
            # latin1 is what torchvision uses: Python 2 byte strings come back as str unchanged.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{kind}: cannot read {path} as a CIFAR python pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{kind}: {path} holds a {type(obj).__name__}, expected the CIFAR batch dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _find_cifar_root(req: _Request, layout: _CifarLayout) -> str:
    """The directory holding the batch files: the given one or its ``cifar-*-py*`` child."""
    root = _local_dir(req)
    first = layout.files["train"][0]
    for candidate in (root, os.path.join(root, layout.subdir)):
        if os.path.isfile(os.path.join(candidate, first)) or os.path.isfile(
            os.path.join(candidate, layout.files["test"][0])
        ):
            return candidate
    raise DataError(
        f"{req.kind}: no CIFAR batches in {root} (looked for {first} there and in {layout.subdir}/); {_HINTS[req.kind]}"
    )


def _load_cifar(req: _Request) -> ImageDataset:
    """CIFAR-10/100 from the python-pickle batches torchvision also reads."""
    layout = _CIFAR[req.kind]
    root = _find_cifar_root(req, layout)
    images, labels = [], []
    for name in layout.files[req.split]:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise DataError(f"{req.kind}: {path} is missing (the {req.split} split needs it); {_HINTS[req.kind]}")
        batch = _unpickle_dict(path, req.kind)
        if "data" not in batch or layout.label_key not in batch:
            raise DataError(
                f"{req.kind}: {path} lacks 'data' or '{layout.label_key}' (has {sorted(batch)}); "
                f"is this a {req.kind} batch?"
            )
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim not in (2, 4) or data[0].size != 3 * 32 * 32:
            raise DataError(f"{req.kind}: {path} 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
        lab = np.asarray(batch[layout.label_key], dtype=np.int64).reshape(-1)
        if len(lab) != len(data):
            raise DataError(f"{req.kind}: {path} has {len(data)} images but {len(lab)} labels")
        if len(lab) and (lab.min() < 0 or lab.max() >= layout.num_classes):
            raise DataError(f"{req.kind}: {path} has labels outside 0..{layout.num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane
        labels.append(lab)
    classes = _cifar_classes(root, layout, req.kind)
    return _finish_in_memory(req, np.concatenate(images), np.concatenate(labels), classes)


def _cifar_classes(root: str, layout: _CifarLayout, kind: str) -> list[str]:
    """Class names from the meta file when present, else the known CIFAR-10 names / indices."""
    path = os.path.join(root, layout.meta_file)
    if os.path.isfile(path):
        names = _unpickle_dict(path, kind).get(layout.names_key)
        if isinstance(names, list) and len(names) == layout.num_classes:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if kind == "cifar10":
        return list(CIFAR10_CLASSES)
    return [str(c) for c in range(layout.num_classes)]


# --------------------------------------------------------------------------------------------
# ImageFolder trees
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _folder_layout(root: str) -> dict[str, str]:
    """Map split -> directory: ``root/train`` + ``root/val`` (or ``test``), or the whole tree as train.

    A tree is split only when ``train/`` exists and every top-level folder is ``train``, ``val``
    or ``test``, so a dataset that happens to have a class called "train" is not misread.
    """
    top = _subdirs(root)
    if "train" in top and set(top) <= {"train", "val", "test"}:
        layout = {"train": os.path.join(root, "train")}
        for name in ("val", "test"):  # val first: ImageNet's labelled held-out split
            if name in top:
                layout["test"] = os.path.join(root, name)
                break
        return layout
    return {"train": root}


def _image_files(class_dir: str) -> list[str]:
    """Image files under ``class_dir`` (recursively, like torchvision), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def _load_folder(req: _Request) -> ImageDataset:
    """An ImageFolder tree: class subfolders in sorted order give labels 0..K-1."""
    root = _local_dir(req)
    layout = _folder_layout(root)
    if req.split not in layout:
        raise MissingSplitError(
            f"folder: {root} has train/ but no val/ or test/ subfolder, so it has no test split; "
            f"add {os.path.join(root, 'val')} with the same class subfolders"
        )
    # Classes from every split, so that label k means the same class in train and test.
    classes = sorted({c for d in layout.values() for c in _subdirs(d)})
    if not classes:
        raise DataError(f"folder: no class subfolders in {layout[req.split]}; {_HINTS['folder']}")
    split_dir = layout[req.split]
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        class_dir = os.path.join(split_dir, cls)
        if os.path.isdir(class_dir):
            files = _image_files(class_dir)
            paths.extend(files)
            labels.extend([label] * len(files))
    if not paths:
        raise DataError(
            f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under the class folders of {split_dir}; "
            f"{_HINTS['folder']}"
        )
    name = f"{req.spec} ({req.split})"
    blobs = FileBlobs(paths)
    checked = verify_blobs(blobs, name=name, on_corrupt=req.on_corrupt)
    size = req.image_size
    if size is None:
        # The first *train* image fixes the size of both splits, so they batch alike.
        size = checked.first_size if req.split == "train" else _first_train_size(layout["train"], classes)
    assert size is not None
    return EncodedImageDataset(
        blobs.take(checked.keep),
        torch.tensor(labels, dtype=torch.long)[torch.from_numpy(checked.keep)],
        name=req.spec,
        split=req.split,
        classes=classes,
        channels=1 if checked.grayscale else 3,
        image_size=size,
        num_corrupt=checked.num_corrupt,
    )


def _first_train_size(train_dir: str, classes: list[str]) -> ImageSize:
    """Size of the first decodable image of the train split (opened lazily, usually just one)."""
    for cls in classes:
        class_dir = os.path.join(train_dir, cls)
        if not os.path.isdir(class_dir):
            continue
        for path in _image_files(class_dir):
            with open(path, "rb") as f:
                probe = probe_image(f.read())
            if probe.ok:
                return probe.size
    raise DataError(f"folder: no decodable train image in {train_dir} to take the image size from; pass image_size")


# --------------------------------------------------------------------------------------------
# Parquet shards (local or cloud)
# --------------------------------------------------------------------------------------------


class ArrowBlobs:
    """Encoded images held in one Arrow binary array (the ``image`` column of Parquet shards)."""

    def __init__(self, images: pa.Array, files: list[str], file_index: np.ndarray, rows: np.ndarray) -> None:
        self.images = images  # large_binary, one chunk: O(1) indexing
        self.files = files  # shard paths, for error messages
        self.file_index = file_index  # shard of each item
        self.rows = rows  # row of each item inside its shard

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> bytes | None:
        value: bytes | None = self.images[index].as_py()
        return value

    def describe(self, index: int) -> str:
        return f"{self.files[int(self.file_index[index])]} row {int(self.rows[index])}"

    def take(self, indices: np.ndarray) -> ArrowBlobs:
        return ArrowBlobs(
            self.images.take(pa.array(indices, type=pa.int64())),
            self.files,
            self.file_index[indices],
            self.rows[indices],
        )


def _load_parquet(req: _Request) -> ImageDataset:
    """Parquet shards with ``image`` (PNG/JPEG bytes), ``label`` (int) and optional ``split`` columns."""
    if not req.location:
        raise DataError(f"parquet needs a location: parquet:/dir or parquet:s3://bucket/prefix; {_HINTS['parquet']}")
    fs, path = storage.resolve(req.location)
    where = storage.display(fs, path)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"parquet: {where} does not exist; {_HINTS['parquet']}")
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        fragments = list(dataset.get_fragments())
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"parquet: cannot read {where}: {exc}") from exc
    if not fragments:
        raise DataError(f"parquet: no .parquet files in {where}; {_HINTS['parquet']}")
    schema = dataset.schema
    _check_parquet_schema(schema, where)
    has_split = "split" in schema.names
    if not has_split and req.split == "test":
        # Returning the training rows as "test" would silently evaluate on training data.
        raise MissingSplitError(
            f"parquet: {where} has no 'split' column, so all its rows form the train split; "
            f"write it with a split column ('train'/'test') to get a test split"
        )
    wanted = pa.array(["train"] if req.split == "train" else ["test", "val"])

    all_labels: list[pa.Array] = []  # of every split: train and test must agree on the classes
    split_labels: list[np.ndarray] = []
    chunks: list[pa.Array] = []
    file_index: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    try:
        for k, frag in enumerate(fragments):
            # Read the small columns first, then only the wanted rows' image bytes.
            small = frag.to_table(schema=schema, columns=["label", "split"] if has_split else ["label"])
            all_labels.extend(small["label"].chunks)
            if has_split:
                mask = pc.fill_null(pc.is_in(small["split"], value_set=wanted), False)
                keep = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
                filt = pc.field("split").isin(wanted)
            else:
                keep, filt = np.arange(small.num_rows), None
            if len(keep) == 0:
                continue
            table = frag.to_table(schema=schema, columns=["image"], filter=filt)
            if table.num_rows != len(keep):  # pragma: no cover - would be a pyarrow bug
                raise DataError(f"parquet: {frag.path} changed while it was being read")
            chunks.extend(c.cast(pa.large_binary()) for c in table["image"].chunks)
            split_labels.append(small["label"].to_numpy().astype(np.int64)[keep])
            file_index.append(np.full(len(keep), k, dtype=np.int32))
            rows.append(keep)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"parquet: cannot read {where}: {exc}") from exc

    labels_all = pa.chunked_array(all_labels, type=schema.field("label").type)
    if labels_all.null_count:
        raise DataError(f"parquet: {where} has {labels_all.null_count} null labels")
    if not chunks:
        raise MissingSplitError(f"parquet: {where} has no rows whose split is {' or '.join(wanted.to_pylist())}")

    labels = np.concatenate(split_labels)
    meta = schema.metadata or {}
    classes = _parquet_classes(meta, labels_all, where)
    blobs = ArrowBlobs(
        pa.chunked_array(chunks, type=pa.large_binary()).combine_chunks(),
        [storage.display(fs, f.path) for f in fragments],
        np.concatenate(file_index),
        np.concatenate(rows),
    )
    name = f"{req.spec} ({req.split})"
    checked = verify_blobs(blobs, name=name, on_corrupt=req.on_corrupt)
    channels = int(meta[META_CHANNELS]) if META_CHANNELS in meta else (1 if checked.grayscale else 3)
    size = req.image_size
    if size is None and META_IMAGE_SIZE in meta:
        h, w = (int(v) for v in meta[META_IMAGE_SIZE].decode().split(","))
        size = (h, w)
    if size is None:
        size = checked.first_size
    assert size is not None
    return EncodedImageDataset(
        blobs.take(checked.keep),
        torch.from_numpy(labels[checked.keep]),
        name=req.spec,
        split=req.split,
        classes=classes,
        channels=channels,
        image_size=size,
        num_corrupt=checked.num_corrupt,
    )


def _check_parquet_schema(schema: pa.Schema, where: str) -> None:
    """The columns we need exist with usable types."""
    problems = []
    if "image" not in schema.names or not (
        pa.types.is_binary(schema.field("image").type) or pa.types.is_large_binary(schema.field("image").type)
    ):
        problems.append("a binary 'image' column (encoded PNG/JPEG bytes)")
    if "label" not in schema.names or not pa.types.is_integer(schema.field("label").type):
        problems.append("an integer 'label' column")
    if "split" in schema.names and not (
        pa.types.is_string(schema.field("split").type) or pa.types.is_large_string(schema.field("split").type)
    ):
        problems.append("a string 'split' column (when present)")
    if problems:
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise DataError(f"parquet: {where} needs {' and '.join(problems)}; found columns {found}")


def _parquet_classes(meta: dict[bytes, bytes], labels_all: pa.ChunkedArray, where: str) -> list[str]:
    """Class names from jigclu's metadata, else ``"0".."K-1"`` with K = max label + 1 over all splits."""
    # Called after the null check and with at least one row, so min/max are integers.
    min_label, max_label = int(pc.min(labels_all).as_py()), int(pc.max(labels_all).as_py())
    if min_label < 0:
        raise DataError(f"parquet: {where} has negative label {min_label}")
    if META_CLASSES in meta:
        classes = [str(c) for c in json.loads(meta[META_CLASSES])]
        if max_label >= len(classes):
            raise DataError(f"parquet: {where} has label {max_label} but its metadata names {len(classes)} classes")
        return classes
    return [str(c) for c in range(max_label + 1)]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_READERS: dict[str, Reader] = {
    "digits": _load_digits,
    "fashion_mnist": _load_idx,
    "mnist": _load_idx,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "folder": _load_folder,
    "parquet": _load_parquet,
}
_KIND_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "imagefolder": "folder"}
KNOWN_KINDS = (
    "digits", "fashion_mnist[:DIR]", "mnist:DIR", "cifar10:DIR", "cifar100:DIR", "folder:DIR", "parquet:DIR|URI",
)  # fmt: skip

_HINTS = {
    "fashion_mnist": "install with 'apt-get install dataset-fashion-mnist' or pass fashion_mnist:/path",
    "mnist": (
        "put the MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-..., .gz or not) "
        "in one directory and pass mnist:/path"
    ),
    "cifar10": (
        "unpack cifar-10-python.tar.gz (the python version from the CIFAR site, or torchvision's "
        "download) and pass cifar10:/path"
    ),
    "cifar100": (
        "unpack cifar-100-python.tar.gz (the python version from the CIFAR site, or torchvision's "
        "download) and pass cifar100:/path"
    ),
    "folder": "pass folder:/path to a tree with one subfolder of images per class (optionally under train/ and val/)",
    "parquet": "create shards with 'jigclu data convert SRC DEST', then pass parquet:DEST",
    "digits": "use 'digits'",
}
