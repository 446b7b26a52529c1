"""CIFAR-10 / CIFAR-100 reader for the official "python version" pickles.

The official files are Python-2 protocol-2 pickles of dicts with bytes keys.
Unpickling runs code named by the file, so a plain ``pickle.load`` of a file
from the internet is remote code execution.  :class:`RestrictedUnpickler`
therefore resolves only the handful of globals that this format contains
(numpy's array/dtype reconstructors, and ``_codecs.encode`` which Python 3
emits for bytes at protocol 2) and refuses everything else.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from prunus.errors import DataError

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, whatever module it lives in
_SCALAR = np.int64(0).__reduce__()[0]  # numpy's scalar(), for labels stored as numpy ints

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy < 2 and Python-2 era files
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy >= 2
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}

# dataset name -> (folder inside the archive, archive name, {split: files}, labels key)
LAYOUTS: dict[str, tuple[str, str, dict[str, tuple[str, ...]], str]] = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}, "labels"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz",
                 {"train": ("train",), "test": ("test",)}, "fine_labels"),
}

_PIXELS = 3 * 32 * 32


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays and plain containers."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"CIFAR file {self.path} refers to {module}.{name}, which a CIFAR pickle never contains, "
                            f"so it was not loaded; replace it with the official file.") from None


def load_pickle(path: str | Path) -> Any:
    """Unpickle a CIFAR file with :class:`RestrictedUnpickler`; corruption -> DataError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read CIFAR file {path} ({exc.strerror or exc}); "
                        f"check the path and its permissions.") from exc
    except Exception as exc:  # truncated/corrupt pickles raise many types (EOFError, UnpicklingError, ValueError...)
        raise DataError(f"CIFAR file {path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                        f"re-extract it from the official archive.") from exc


def _field(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):  # official files have bytes keys; accept str keys from re-pickled copies
        if k in batch:
            return batch[k]
    raise DataError(f"CIFAR file {path} has no {key!r} entry; check that it is the right file.")


def load_batch(path: str | Path, labels_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Load one batch file as (uint8 images N x 3 x 32 x 32, int64 labels N)."""
    path = Path(path)
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR file {path} holds a {type(batch).__name__}, not a dict; "
                        f"check that it is the right file.")
    data, labels = _field(batch, "data", path), _field(batch, labels_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", None)
        raise DataError(f"CIFAR file {path} has 'data' of shape {shape}, expected a uint8 N x {_PIXELS} array; "
                        f"re-extract it from the official archive.")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"CIFAR file {path} has non-integer {labels_key!r}; "
                        f"re-extract it from the official archive.") from exc
    if labels.shape != (len(data),):
        raise DataError(f"CIFAR file {path} has {labels.size} {labels_key!r} for {len(data)} images; "
                        f"re-extract it from the official archive.")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"CIFAR file {path} has a label outside 0..{num_classes - 1}; check that it is the right file.")
    # rows are 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar_split(directory: str | Path, name: str, split: str,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Load and concatenate every batch file of one split of an extracted CIFAR folder."""
    directory = Path(directory)
    _, _, files, labels_key = LAYOUTS[name]
    parts = [load_batch(directory / f, labels_key, num_classes) for f in files[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
