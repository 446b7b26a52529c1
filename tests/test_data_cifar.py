"""CIFAR pickles: exact pixels from fixtures in the official format, refusal of hostile files, archives."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from prunus.data import DATASETS, load_dataset
from prunus.data.cifar import load_batch, load_pickle
from prunus.errors import DataError


class Py2Pickler(pickle._Pickler):
    """Write pickles the way Python 2's cPickle wrote the official files: str/bytes as BINSTRING."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2 era numpy lived in numpy.core; numpy 2 writes numpy._core
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def py3_dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def make_batches(rng, n_batches: int, per_batch: int, num_classes: int):
    return [(rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             [int(v) for v in rng.integers(0, num_classes, per_batch)]) for _ in range(n_batches)]


def write_cifar10(root: Path, dumps=py2_dumps, seed: int = 0) -> tuple[list, list]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train, test = make_batches(rng, 5, 4, 10), make_batches(rng, 1, 4, 10)
    for i, (data, labels) in enumerate(train, 1):
        (d / f"data_batch_{i}").write_bytes(dumps({b"batch_label": b"training batch %d of 5" % i, b"labels": labels,
                                                   b"data": data, b"filenames": [b"f%d.png" % j for j in range(4)]}))
    (d / "test_batch").write_bytes(dumps({b"batch_label": b"testing batch 1 of 1", b"labels": test[0][1],
                                          b"data": test[0][0], b"filenames": [b"t.png"] * 4}))
    (d / "batches.meta").write_bytes(dumps({b"num_cases_per_batch": 4, b"label_names": [b"airplane"] * 10,
                                            b"num_vis": 3072}))
    return train, test


def raw_pixels(ds) -> np.ndarray:
    """Undo the normalisation: back to the uint8 values on disk."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return ((ds.images * std + mean) * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("dumps", [py2_dumps, py3_dumps], ids=["py2-official", "py3-protocol2"])
def test_cifar10_exact_pixels_and_layout(tmp_path, dumps):
    train, test = write_cifar10(tmp_path, dumps)
    ds = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.float32
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.mean) == (10, 3, 32, DATASETS["cifar10"].mean)
    assert ds.labels.tolist() == [label for _, labels in train for label in labels]  # batches 1..5 in order
    pixels = raw_pixels(ds)
    all_data = np.concatenate([data for data, _ in train])
    # row layout: 1024 red (row-major 32x32), 1024 green, 1024 blue
    assert pixels[6, 1, 2, 5] == all_data[6, 1024 + 2 * 32 + 5]
    assert pixels[19, 2, 31, 0] == all_data[19, 2048 + 31 * 32]
    np.testing.assert_array_equal(pixels, all_data.reshape(20, 3, 32, 32))

    ts = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert ts.labels.tolist() == test[0][1]
    np.testing.assert_array_equal(raw_pixels(ts), test[0][0].reshape(4, 3, 32, 32))


def test_cifar100_fine_labels(tmp_path):
    d = tmp_path / "cifar100" / "cifar-100-python"  # <root>/<name>/<folder> layout
    d.mkdir(parents=True)
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    fine, coarse = [0, 99, 42, 7, 99, 1], [0, 19, 3, 4, 19, 1]
    (d / "train").write_bytes(py2_dumps({b"data": data, b"fine_labels": fine, b"coarse_labels": coarse,
                                         b"filenames": [b"x"] * 6, b"batch_label": b"training batch 1 of 1"}))
    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.labels.tolist() == fine
    np.testing.assert_array_equal(raw_pixels(ds), data.reshape(6, 3, 32, 32))
    with pytest.raises(DataError, match="CIFAR-100 not found"):  # the test file is missing
        load_dataset("cifar100", "test", data_dir=tmp_path)


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: {b"data": e, b"labels": [0]}], ids=["bare", "in-dict"])
def test_malicious_pickle_is_refused_not_run(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(wrap(Evil(marker)), protocol=2))
    assert b"system" in path.read_bytes()
    with pytest.raises(DataError, match=re.escape(str(path)) + r" refers to (posix|os)\.system"):
        load_pickle(path)
    assert not marker.exists()
    # sanity check of the fixture itself: a plain unpickler would run it
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen"),
                                          ("copyreg", "_reconstructor"), ("numpy.core.multiarray", "frombuffer")])
def test_other_globals_are_refused(tmp_path, module, name):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(DataError, match=re.escape(f"{path} refers to {module}.{name}")):
        load_pickle(path)


@pytest.mark.parametrize("keep", [1, 40, 200, 2000, -1])
def test_truncated_pickle(tmp_path, keep):
    full = py2_dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]})
    path = tmp_path / "data_batch_1"
    path.write_bytes(full[:keep])
    with pytest.raises(DataError, match=re.escape(str(path)) + " is truncated or corrupt"):
        load_pickle(path)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 0]}, r"shape \(2, 3071\), expected a uint8 N x 3072"),
        ({b"data": np.zeros((2, 3072), np.int16), b"labels": [0, 0]}, "expected a uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"1 'labels' for 2 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"label outside 0\.\.9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, r"label outside 0\.\.9"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
        ([1, 2], "holds a list, not a dict"),
    ],
    ids=["width", "dtype", "count", "high", "negative", "key", "type"],
)
def test_bad_batch_contents(tmp_path, batch, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_dumps(batch))
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + message):
        load_batch(path, "labels", 10)


def make_tarball(src_root: Path, tar_path: Path) -> None:
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")


def test_official_tarball_is_extracted_into_the_cache(tmp_path, monkeypatch):
    train, _ = write_cifar10(tmp_path / "src")
    data_dir = tmp_path / "downloads"
    data_dir.mkdir()
    make_tarball(tmp_path / "src", data_dir / "cifar-10-python.tar.gz")
    monkeypatch.delenv("PRUNUS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ds = load_dataset("cifar10", data_dir=data_dir)
    np.testing.assert_array_equal(raw_pixels(ds), np.concatenate([d for d, _ in train]).reshape(20, 3, 32, 32))
    extracted = tmp_path / "cache" / "prunus" / "cifar10" / "cifar-10-batches-py"
    assert sorted(p.name for p in extracted.iterdir()) == sorted(p.name for p in (tmp_path / "src" /
                                                                                  "cifar-10-batches-py").iterdir())
    assert [p.name for p in extracted.parent.iterdir()] == ["cifar-10-batches-py"]  # no temp dirs left
    (data_dir / "cifar-10-python.tar.gz").unlink()
    assert load_dataset("cifar10", data_dir=data_dir).labels.tolist() == ds.labels.tolist()  # now from the cache


def test_hostile_tarball_is_refused(tmp_path, monkeypatch):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="cannot extract archive " + re.escape(str(data_dir))):
        load_dataset("cifar10", data_dir=data_dir)
    assert not list(tmp_path.rglob("escaped"))


def test_tarball_without_the_folder_or_truncated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("other.txt"), io.BytesIO(b""))
    with pytest.raises(DataError, match="has no cifar-10-batches-py/ folder"):
        load_dataset("cifar10", data_dir=data_dir)
    write_cifar10(tmp_path / "src")
    make_tarball(tmp_path / "src", tmp_path / "good.tar.gz")
    (data_dir / "cifar-10-python.tar.gz").write_bytes((tmp_path / "good.tar.gz").read_bytes()[:3000])
    with pytest.raises(DataError, match="cannot extract archive"):
        load_dataset("cifar10", data_dir=data_dir)
    assert not (tmp_path / "cache" / "prunus" / "cifar10" / "cifar-10-batches-py").exists()


def test_data_dir_may_be_the_extracted_folder_itself(tmp_path):
    _, test = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    assert ds.labels.tolist() == list(test[0][1])
