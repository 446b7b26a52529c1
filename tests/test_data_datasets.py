"""Registry, lookup order, downloads (no network), digits, ArrayDataset and RandomCropFlip."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import re
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from prunus.data import DATASETS, ArrayDataset, RandomCropFlip, default_augmentation, digits, load_dataset, locate
from prunus.errors import DataError


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.tobytes())


def write_fashion_test(d: Path, n: int) -> None:
    """A tiny IDX test split with ``n`` images whose pixels all equal ``n``, so the winner is identifiable."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(idx_gz(np.full((n, 28, 28), n, np.uint8)))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_gz(np.arange(n, dtype=np.uint8)))


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Four empty roots wired to data_dir / $PRUNUS_DATA / $XDG_CACHE_HOME / the system root."""
    r = {k: tmp_path / k for k in ("arg", "env", "xdg", "system")}
    monkeypatch.setenv("PRUNUS_DATA", str(r["env"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(r["xdg"]))
    monkeypatch.setattr(locate, "SYSTEM_ROOT", r["system"])
    monkeypatch.setattr(locate, "open_url", _no_network)
    return r


def _no_network(url):
    raise AssertionError(f"test tried to open {url}")


def test_lookup_order(roots):
    write_fashion_test(roots["arg"], 1)  # <root>/files directly
    write_fashion_test(roots["env"] / "fashion-mnist", 2)  # <root>/<name>/files
    write_fashion_test(roots["xdg"] / "prunus" / "fashion-mnist", 3)
    write_fashion_test(roots["system"] / "fashion-mnist", 4)
    found = [len(load_dataset("fashion-mnist", "test", data_dir=roots["arg"])),
             len(load_dataset("fashion-mnist", "test"))]
    for gone in (roots["env"] / "fashion-mnist", roots["xdg"] / "prunus" / "fashion-mnist"):
        for f in gone.iterdir():
            f.unlink()
        found.append(len(load_dataset("fashion-mnist", "test")))
    assert found == [1, 2, 3, 4]
    ds = load_dataset("fashion-mnist", "test")
    assert ds.images.unique().tolist() == [pytest.approx((4 / 255 - 0.2860) / 0.3530, abs=1e-6)]


def test_home_cache_when_xdg_unset(roots, monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_fashion_test(tmp_path / "home" / ".cache" / "prunus" / "fashion-mnist", 5)
    write_fashion_test(roots["system"] / "fashion-mnist", 4)
    assert len(load_dataset("fashion-mnist", "test")) == 5


def test_root_named_after_another_dataset_is_not_used(roots, monkeypatch, tmp_path):
    write_fashion_test(tmp_path / "mnist", 3)  # MNIST files have the very same names
    monkeypatch.setenv("PRUNUS_DATA", str(tmp_path / "mnist"))
    assert len(load_dataset("mnist", "test")) == 3
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load_dataset("fashion-mnist", "test")


def test_missing_everywhere_says_how_to_fix(roots):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "train", data_dir=roots["arg"])
    msg = str(err.value)
    assert msg == (f"Fashion-MNIST not found (looked in: {roots['arg']}, {roots['env']}, {roots['xdg'] / 'prunus'}, "
                   f"{roots['system']}); install it with `apt install dataset-fashion-mnist`, put the IDX files "
                   f"(train-images-idx3-ubyte and train-labels-idx1-ubyte, optionally .gz) in --data-dir or "
                   f"$PRUNUS_DATA, or pass --download.")
    with pytest.raises(DataError, match="MNIST not found") as err:
        load_dataset("mnist", "test")
    assert "apt" not in str(err.value) and "\n" not in str(err.value)


def test_half_a_split_is_not_found(roots):
    write_fashion_test(roots["env"], 2)
    (roots["env"] / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not found"):
        load_dataset("fashion-mnist", "test")


# --- downloads, without a network -------------------------------------------------------------------------------

class FakeResponse(io.BytesIO):
    """A urlopen() result that serves ``data`` and then, optionally, fails mid-stream."""

    def __init__(self, data: bytes, fail_after: bool = False):
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, n=-1):
        chunk = super().read(n)
        if not chunk and self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return chunk


def test_fetch_file_url_with_md5(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3_000_000)
    dest = tmp_path / "out" / "file.bin"
    locate.fetch_url(src.as_uri(), dest, md5=hashlib.md5(src.read_bytes()).hexdigest())
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]


def test_fetch_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "open_url", lambda url: FakeResponse(b"partial data", fail_after=True))
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(DataError, match=r"download of http://x/file\.gz failed \(connection reset by peer\)"):
        locate.fetch_url("http://x/file.gz", dest)
    assert list(dest.parent.iterdir()) == []


def test_fetch_md5_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "open_url", lambda url: FakeResponse(b"tampered"))
    dest = tmp_path / "file.gz"
    with pytest.raises(DataError, match="has MD5 .*, expected 0123"):
        locate.fetch_url("http://x/file.gz", dest, md5="0123")
    assert list(tmp_path.iterdir()) == []


def test_load_with_download_writes_the_cache(roots, monkeypatch):
    spec = DATASETS["mnist"]
    files = {url: idx_gz(np.full((2, 28, 28), 7, np.uint8)) if "images" in url else idx_gz(np.array([3, 1], np.uint8))
             for url, _ in spec.urls}
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(
        spec, urls=tuple((url, hashlib.md5(files[url]).hexdigest()) for url, _ in spec.urls)))
    with pytest.raises(DataError, match="MNIST not found"):  # no download unless asked
        load_dataset("mnist", "test")
    opened = []
    monkeypatch.setattr(locate, "open_url", lambda url: opened.append(url) or FakeResponse(files[url]))
    ds = load_dataset("mnist", "test", download=True)
    assert ds.labels.tolist() == [3, 1]
    assert opened == [url for url, _ in spec.urls]
    assert opened[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    cache = roots["xdg"] / "prunus" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(url.rsplit("/", 1)[1] for url, _ in spec.urls)
    monkeypatch.setattr(locate, "open_url", _no_network)
    assert len(load_dataset("mnist", "train", download=True)) == 2  # found in the cache, not fetched again


def test_download_network_error(roots, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(locate, "open_url", offline)
    with pytest.raises(DataError, match="download of http://fashion-mnist.* failed .*name resolution"):
        load_dataset("fashion-mnist", download=True)
    assert not list((roots["xdg"] / "prunus" / "fashion-mnist").iterdir())


# --- registry and ArrayDataset ----------------------------------------------------------------------------------

def test_registry():
    assert list(DATASETS) == ["fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "modulation"]
    shape = {n: (s.in_channels, s.image_size, s.num_classes, len(s.mean), len(s.std)) for n, s in DATASETS.items()}
    assert shape == {"fashion-mnist": (1, 28, 10, 1, 1), "mnist": (1, 28, 10, 1, 1), "cifar10": (3, 32, 10, 3, 3),
                     "cifar100": (3, 32, 100, 3, 3), "digits": (1, 28, 10, 1, 1), "modulation": (2, 32, 11, 2, 2)}
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["cifar100"].std == (0.2673, 0.2564, 0.2762)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["mnist"].num_classes = 11


def test_unknown_names():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; choose one of: fashion-mnist, mnist, cifar10, "
                                        "cifar100, digits, modulation"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        default_augmentation("cifar")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("digits", "val")


def test_default_augmentation():
    for name in ("cifar10", "cifar100"):
        aug = default_augmentation(name)
        assert isinstance(aug, RandomCropFlip) and (aug.padding, aug.p_flip) == (4, 0.5)
    assert [default_augmentation(n) for n in ("fashion-mnist", "mnist", "digits")] == [None, None, None]


def test_array_dataset_protocol():
    images, labels = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 1, 0])
    ds = ArrayDataset(images, labels, name="toy", split="train", num_classes=3, mean=(0.0, 0.0), std=(1.0, 1.0))
    assert (len(ds), ds.in_channels, ds.image_size) == (5, 2, 4)
    x, y = ds[3]
    assert torch.equal(x, images[3]) and y == 1 and type(y) is int
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert torch.equal(xb, images) and torch.equal(yb, labels)
    with pytest.raises(ValueError, match=r"labels must be int64 of shape \(5,\)"):
        ArrayDataset(images, labels[:4], name="toy", split="train", num_classes=3, mean=(0.0, 0.0), std=(1.0, 1.0))


# --- digits -----------------------------------------------------------------------------------------------------

def test_digits_split_and_sizes():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    split = digits._split_indices(bunch.target)
    train, test = split["train"], split["test"]
    assert (len(train), len(test)) == (1438, 359)
    assert np.intersect1d(train, test).size == 0 and np.union1d(train, test).tolist() == list(range(1797))
    for c in range(10):  # stratified: every class is 20% test, to the nearest sample
        n_c = int((bunch.target == c).sum())
        assert int((bunch.target[test] == c).sum()) == round(0.2 * n_c)
    assert np.array_equal(digits._split_indices(bunch.target)["test"], test)  # deterministic

    tr, te = load_dataset("digits"), load_dataset("digits", "test")
    assert tr.images.shape == (1438, 1, 28, 28) and te.images.shape == (359, 1, 28, 28)
    native = load_dataset("digits", "test", image_size=8)
    assert native.images.shape == (359, 1, 8, 8)
    expected = (bunch.data[test].reshape(-1, 1, 8, 8) / 16 - 0.3055) / 0.3761
    torch.testing.assert_close(native.images, torch.tensor(expected, dtype=torch.float32))
    assert native.labels.tolist() == bunch.target[test].tolist()
    assert load_dataset("digits", image_size=32).image_size == 32
    with pytest.raises(DataError, match=re.escape("image_size=4 is smaller than digits's native 8x8")):
        load_dataset("digits", image_size=4)


def test_digits_constants_are_the_train_statistics():
    x, _ = digits.load_digits_split("train")
    x = x.astype(np.float64)
    assert (round(x.mean(), 4), round(x.std(), 4)) == (DATASETS["digits"].mean[0], DATASETS["digits"].std[0])


# --- RandomCropFlip ---------------------------------------------------------------------------------------------

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_flip_reproducible_and_seed_dependent():
    x = torch.randn(64, 3, 8, 8)
    aug = RandomCropFlip(padding=2)
    a, b, c = aug(x, _gen(0)), aug(x, _gen(0)), aug(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(123)  # the global RNG is irrelevant
    assert torch.equal(aug(x, _gen(0)), a)


def test_crop_flip_outputs_are_crops_of_the_padded_input_or_their_flips():
    n, p = 200, 2
    x = torch.randn(n, 3, 6, 6)  # continuous values: matches cannot happen by accident
    out = RandomCropFlip(padding=p)(x, _gen(7))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    found = []
    for i in range(n):
        crops = {(dy, dx): padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(2 * p + 1) for dx in range(2 * p + 1)}
        matches = [(dy, dx, flip) for (dy, dx), crop in crops.items() for flip in (False, True)
                   if torch.equal(out[i], crop.flip(-1) if flip else crop)]
        assert len(matches) == 1, f"sample {i} is not a (flipped) crop of its own padded image"
        found.append(matches[0])
    assert {(dy, dx) for dy, dx, _ in found} == {(dy, dx) for dy in range(5) for dx in range(5)}  # every offset
    assert 0.4 * n < sum(f for _, _, f in found) < 0.6 * n  # flips with p = 0.5


def test_crop_flip_extremes():
    x = torch.randn(10, 1, 5, 5)
    assert torch.equal(RandomCropFlip(padding=0, p_flip=0.0)(x, _gen(0)), x)
    assert torch.equal(RandomCropFlip(padding=0, p_flip=1.0)(x, _gen(0)), x.flip(-1))
    flipped = RandomCropFlip(padding=0, p_flip=0.5)(x, _gen(3))
    is_flip = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(10)]
    is_same = [torch.equal(flipped[i], x[i]) for i in range(10)]
    assert all(a != b for a, b in zip(is_flip, is_same)) and 0 < sum(is_flip) < 10
    single = RandomCropFlip(padding=1)(x[0], _gen(0))
    assert single.shape == x[0].shape and torch.equal(single, RandomCropFlip(padding=1)(x[:1], _gen(0))[0])
    with pytest.raises(ValueError, match="need padding >= 0"):
        RandomCropFlip(padding=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crop_flip_on_cuda_matches_cpu():
    x = torch.randn(32, 3, 32, 32)
    aug = RandomCropFlip()
    out = aug(x.cuda(), _gen(5))
    assert out.device.type == "cuda" and torch.equal(out.cpu(), aug(x, _gen(5)))
