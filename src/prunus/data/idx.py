"""IDX reader for MNIST and Fashion-MNIST.

The IDX format is a 4-byte magic (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the raw big-endian
payload.  Files are often gzipped; gzip is recognised by its magic bytes, not
by the file name, because mirrors rename files freely.  Every check is strict
(exact payload length, no trailing bytes) so that a truncated download fails
loudly instead of training on garbage.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from prunus.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
IDX_TYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

# split -> (images file, labels file), each also accepted with a ".gz" suffix.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_FIX = "re-download it or reinstall the dataset"


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a native-endian numpy array."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path} ({exc.strerror or exc}); "
                        f"check the path and its permissions.") from exc
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise DataError(f"IDX file {path} is a truncated or corrupt gzip stream ({exc}); {_FIX}.") from exc
    if len(data) < 4 or data[0:2] != b"\x00\x00":
        raise DataError(f"{path} is not an IDX file (its first two bytes must be zero); {_FIX}.")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise DataError(f"IDX file {path} has unknown type code 0x{code:02X} (expected one of "
                        f"{', '.join(f'0x{c:02X}' for c in IDX_TYPES)}); {_FIX}.")
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions; {_FIX}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(data)} bytes, need {header}); {_FIX}.")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "followed by trailing bytes"
        raise DataError(f"IDX file {path} is {what}: shape {dims} needs {expected} payload bytes "
                        f"but it has {got}; {_FIX}.")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)  # native order, writable


def find_idx_file(directory: Path, name: str) -> Path | None:
    """Return ``directory/name`` or ``directory/name.gz``, whichever exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_split(directory: str | Path, split: str, *, num_classes: int,
                   image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as (uint8 images N x H x W, int64 labels N), cross-checked."""
    directory = Path(directory)
    images_name, labels_name = SPLIT_FILES[split]
    paths = []
    for name in (images_name, labels_name):
        found = find_idx_file(directory, name)
        if found is None:
            raise DataError(f"{directory / name}(.gz) is missing; put the IDX files of the {split} split there.")
        paths.append(found)
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (image_size, image_size):
        raise DataError(f"IDX file {images_path} holds {images.dtype} data of shape {images.shape}, expected uint8 "
                        f"N x {image_size} x {image_size} images; check that it is the right file.")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"IDX file {labels_path} holds {labels.dtype} data of shape {labels.shape}, expected a "
                        f"1-D uint8 label vector; check that it is the right file.")
    if len(images) != len(labels):
        raise DataError(f"IDX files {images_path} and {labels_path} disagree: {len(images)} images but "
                        f"{len(labels)} labels; re-download the pair.")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"IDX file {labels_path} has label {int(labels.max())}, outside 0..{num_classes - 1}; "
                        f"check that it is the right file.")
    return images, labels.astype(np.int64)
