"""scikit-learn's bundled 8x8 digits (``digits``): always available, no download."""

from __future__ import annotations

import numpy as np

from jigclu.data.images import ImageDataset
from jigclu.data.request import Request, in_memory
from jigclu.errors import DataError

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load_digits(req: Request) -> ImageDataset:
    """sklearn's 8x8 digits, 0..16 scaled to 0..255, class-stratified 80/20 split (fixed seed)."""
    if req.location:
        raise DataError(f"digits takes no location (it ships inside scikit-learn); use 'digits', not {req.spec!r}")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
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
    return in_memory(req, images[idx], labels[idx], [str(c) for c in range(10)])
