"""CIFAR-10 / CIFAR-100 in the python-pickle layout (``cifar10:DIR``, ``cifar100:DIR``).

The batches are pickles, read with a restricted unpickler that only rebuilds numpy arrays.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from jigclu.data.images import ImageDataset
from jigclu.data.request import Request, in_memory, local_dir
from jigclu.errors import DataError


def _hint(kind: str, archive: str) -> str:
    return f"unpack {archive} (the python version from the CIFAR site, or torchvision's download) and pass {kind}:/path"


HINTS = {
    "cifar10": _hint("cifar10", "cifar-10-python.tar.gz"),
    "cifar100": _hint("cifar100", "cifar-100-python.tar.gz"),
}

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


def _find_cifar_root(req: Request, layout: _CifarLayout) -> str:
    """The directory holding the batch files: the given one or its ``cifar-*-py*`` child."""
    root = local_dir(req)
    first = layout.files["train"][0]
    for candidate in (root, os.path.join(root, layout.subdir)):
        if os.path.isfile(os.path.join(candidate, first)) or os.path.isfile(
            os.path.join(candidate, layout.files["test"][0])
        ):
            return candidate
    raise DataError(
        f"{req.kind}: no CIFAR batches in {root} (looked for {first} there and in {layout.subdir}/); {req.hint}"
    )


def load_cifar(req: Request) -> ImageDataset:
    """CIFAR-10/100 from the python-pickle batches torchvision also reads."""
    layout = _CIFAR[req.kind]
    root = _find_cifar_root(req, layout)
    images, labels = [], []
    for name in layout.files[req.split]:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise DataError(f"{req.kind}: {path} is missing (the {req.split} split needs it); {req.hint}")
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
    return in_memory(req, np.concatenate(images), np.concatenate(labels), classes)


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
