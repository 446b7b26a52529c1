"""IDX reader: exact round trips, every corruption, and the real Fashion-MNIST from Debian."""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from prunus.data import load_dataset, read_idx
from prunus.data.idx import load_idx_split
from prunus.errors import DataError

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, code: int | None = None) -> bytes:
    """Encode ``array`` as IDX (big-endian), independently of the reader under test."""
    code = CODES[array.dtype.type] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def raises_naming(path: Path, *extra: str):
    return pytest.raises(DataError, match=re.escape(str(path)) + ".*" + ".*".join(extra))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", list(CODES))
def test_round_trip_every_type(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(dtype)
    else:
        array = (rng.standard_normal((3, 4, 5)) * 1e3).astype(dtype)
    # names deliberately lie about compression: gzip is detected by magic bytes
    path = write(tmp_path / ("data.raw" if gz else "data.gz"), idx_bytes(array), gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 0  # writable copy, safe for torch.from_numpy


def test_known_big_endian_values(tmp_path):
    raw = bytes([0, 0, 0x0B, 1, 0, 0, 0, 3]) + bytes([0x01, 0x02, 0xFF, 0xFE, 0x80, 0x00])
    out = read_idx(write(tmp_path / "x", raw))
    assert out.tolist() == [0x0102, -2, -32768]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01" + b[1:], "first two bytes must be zero"),
        (lambda b: b[:2] + b"\x0a" + b[3:], "unknown type code 0x0A"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: b[:3] + b"\x04" + b[4:], "truncated|trailing"),  # ndim 4 but 3 dims + payload
        (lambda b: b[:3] + b"\x02" + b[4:], "trailing bytes"),  # ndim 2: third dim read as payload
        (lambda b: b[:-1], "truncated: shape \\(2, 3, 4\\) needs 24 payload bytes but it has 23"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b[:10], "truncated inside its header"),
        (lambda b: b"", "first two bytes must be zero"),
    ],
    ids=["magic", "type", "ndim0", "ndim4", "ndim2", "truncated", "trailing", "header", "empty"],
)
def test_corruption_is_reported_with_the_file(tmp_path, mutate, message, gz):
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = write(tmp_path / "images-idx3-ubyte.gz", mutate(good), gz)
    with raises_naming(path, message):
        read_idx(path)


@pytest.mark.parametrize("cut", [5, 20, -4], ids=["in-header", "in-stream", "in-trailer"])
def test_truncated_gzip(tmp_path, cut):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = write(tmp_path / "labels.gz", data[:cut])
    with raises_naming(path, "truncated or corrupt gzip"):
        read_idx(path)


def test_corrupt_gzip_crc(tmp_path):
    data = bytearray(gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32))))
    data[-6] ^= 0xFF  # CRC32 of the trailer
    path = write(tmp_path / "labels.gz", bytes(data))
    with raises_naming(path, "gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read IDX file " + re.escape(str(tmp_path / "nope"))):
        read_idx(tmp_path / "nope")


def write_split(d: Path, images: np.ndarray, labels: np.ndarray, gz: bool = True, split: str = "train") -> None:
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write(d / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
    write(d / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)


def test_split_loads_raw_or_gz_names(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    write_split(tmp_path, images, labels, gz=False, split="test")
    x, y = load_idx_split(tmp_path, "test", num_classes=10, image_size=28)
    np.testing.assert_array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == [9, 0, 4]


def test_split_count_mismatch(tmp_path):
    write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8))
    with raises_naming(tmp_path / "train-images-idx3-ubyte.gz", "3 images but 2 labels"):
        load_idx_split(tmp_path, "train", num_classes=10, image_size=28)


def test_split_label_out_of_range(tmp_path):
    write_split(tmp_path, np.zeros((2, 28, 28), np.uint8), np.array([3, 10], np.uint8))
    with raises_naming(tmp_path / "train-labels-idx1-ubyte.gz", "label 10, outside 0..9"):
        load_idx_split(tmp_path, "train", num_classes=10, image_size=28)


@pytest.mark.parametrize("images", [np.zeros((2, 28, 28), np.int16), np.zeros((2, 784), np.uint8),
                                    np.zeros((2, 32, 32), np.uint8)], ids=["dtype", "ndim", "size"])
def test_split_wrong_image_layout(tmp_path, images):
    write_split(tmp_path, images, np.zeros(2, np.uint8))
    with raises_naming(tmp_path / "train-images-idx3-ubyte.gz", "expected uint8 N x 28 x 28"):
        load_idx_split(tmp_path, "train", num_classes=10, image_size=28)


def test_split_wrong_labels_layout(tmp_path):
    write_split(tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1), np.uint8))
    with raises_naming(tmp_path / "train-labels-idx1-ubyte.gz", "1-D uint8 label vector"):
        load_idx_split(tmp_path, "train", num_classes=10, image_size=28)


# --- the real Fashion-MNIST installed by Debian's dataset-fashion-mnist --------------------------------------

def _require_fashion() -> None:
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        message = f"{FASHION} is missing: apt install dataset-fashion-mnist"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


@pytest.fixture(scope="module")
def fashion_train():
    _require_fashion()
    return load_dataset("fashion-mnist", "train", data_dir=FASHION)


def test_fashion_mnist_train(fashion_train):
    ds = fashion_train
    assert len(ds) == 60000 and ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert (ds.name, ds.split, ds.num_classes, ds.in_channels, ds.image_size) == ("fashion-mnist", "train", 10, 1, 28)
    assert ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels).tolist() == [6000] * 10
    assert abs(ds.images.mean().item()) < 0.01 and abs(ds.images.std().item() - 1) < 0.01
    # raw pixels are k/255 exactly: undo the normalisation and check the grid
    raw = ds.images[:100] * 0.3530 + 0.2860
    torch.testing.assert_close(raw * 255, (raw * 255).round(), atol=1e-3, rtol=0)
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and isinstance(label, int) and label == int(ds.labels[0])


def test_fashion_mnist_test_split_found_by_default_lookup(monkeypatch, tmp_path):
    _require_fashion()
    monkeypatch.delenv("PRUNUS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # empty cache: the Debian path must be used
    ds = load_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


def test_fashion_mnist_padded_to_32(fashion_train):
    ds = load_dataset("fashion-mnist", "test", data_dir=FASHION, image_size=32)
    assert ds.images.shape == (10000, 1, 32, 32) and ds.image_size == 32
    raw = ds.images * 0.3530 + 0.2860  # back to raw pixel units
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert raw[:, :, border].abs().max().item() < 1e-6  # black border, 2 px each side
    native = load_dataset("fashion-mnist", "test", data_dir=FASHION)
    torch.testing.assert_close(ds.images[:, :, 2:30, 2:30], native.images)
