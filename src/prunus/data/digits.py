"""scikit-learn's bundled 8x8 digits: a real dataset that needs no files or network.

It makes every example and test runnable anywhere.  sklearn ships no
train/test split, so we define one: per class, shuffle that class's indices with
``numpy.random.default_rng(SPLIT_SEED)`` and put the first ``round(0.2 * n_c)``
into test; the rest is train (1438 train / 359 test).  Changing the seed or the
rule changes every reported digits number, so do not.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

SPLIT_SEED = 0
TEST_FRACTION = 0.2
MAX_VALUE = 16.0  # sklearn's digits pixels are counts 0..16


def _split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: round(TEST_FRACTION * len(idx))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)  # sorted
    return {"train": train_idx, "test": test_idx}


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 images N x 1 x 8 x 8 scaled to [0, 1], int64 labels N) for one split."""
    bunch = load_digits()
    images = (np.asarray(bunch.data, dtype=np.float32) / MAX_VALUE).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    idx = _split_indices(labels)[split]
    return images[idx], labels[idx]
