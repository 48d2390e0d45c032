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

Each kind's reader lives in its own module (:mod:`~jigclu.data.digits`, :mod:`~jigclu.data.idx`,
:mod:`~jigclu.data.cifar`, :mod:`~jigclu.data.folder`, :mod:`~jigclu.data.parquet`), all taking
one :class:`~jigclu.data.request.Request`; this module parses the spec and dispatches.

Every problem the user can fix (missing files, a wrong magic number, an unknown kind) raises
:class:`~jigclu.errors.DataError` with one line saying what was wrong, where we looked and how
to get the data.
"""

from __future__ import annotations

from jigclu.data import cifar, folder, idx, parquet
from jigclu.data.digits import load_digits
from jigclu.data.encoded import check_on_corrupt
from jigclu.data.images import ImageDataset, as_size
from jigclu.data.request import Reader, Request, normalize_split
from jigclu.errors import DataError


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
    request = Request(
        spec=spec,
        kind=kind,
        location=location,
        split=normalize_split(split),
        image_size=as_size(image_size),
        on_corrupt=on_corrupt,
        hint=_HINTS.get(kind, ""),
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


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_READERS: dict[str, Reader] = {
    "digits": load_digits,
    "fashion_mnist": idx.load_idx,
    "mnist": idx.load_idx,
    "cifar10": cifar.load_cifar,
    "cifar100": cifar.load_cifar,
    "folder": folder.load_folder,
    "parquet": parquet.load_parquet,
}
_KIND_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "imagefolder": "folder"}
KNOWN_KINDS = (
    "digits", "fashion_mnist[:DIR]", "mnist:DIR", "cifar10:DIR", "cifar100:DIR", "folder:DIR", "parquet:DIR|URI",
)  # fmt: skip

# How to get each kind of data, quoted by the readers' error messages.
_HINTS = {**idx.HINTS, **cifar.HINTS, "folder": folder.HINT, "parquet": parquet.HINT}
