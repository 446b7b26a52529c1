"""Dataset registry and the in-memory tensor dataset every loader returns.

All supported datasets fit in memory, so a split is loaded once into a single
normalised float tensor: batches are then plain slices (fast, no workers) and
augmentation is done per batch on the training device
(:mod:`prunus.data.transforms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from prunus.data.cifar import load_cifar_split
from prunus.data.digits import load_digits_split
from prunus.data.idx import load_idx_split
from prunus.data.locate import locate_dataset
from prunus.data.transforms import RandomCropFlip
from prunus.errors import DataError

SPLITS = ("train", "test")
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class DatasetSpec:
    """What prunus knows about a dataset before loading it."""

    name: str
    title: str  # human name used in messages
    format: str  # "idx" | "cifar" | "bundled"
    in_channels: int
    image_size: int  # default output size (square)
    native_size: int  # size stored on disk
    num_classes: int
    mean: tuple[float, ...]  # per channel, on pixels scaled to [0, 1]
    std: tuple[float, ...]
    crop_flip: bool = False  # standard pad-4 random crop + flip augmentation applies
    urls: tuple[tuple[str, str], ...] = ()  # (canonical URL, MD5) for --download
    apt_package: str | None = None  # Debian package that installs it under /usr/share/datasets


def _idx_urls(base: str, md5s: tuple[str, str, str, str]) -> tuple[tuple[str, str], ...]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple((base + n, m) for n, m in zip(names, md5s))


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "Fashion-MNIST", "idx", 1, 28, 28, 10, (0.2860,), (0.3530,),
        urls=_idx_urls(_FASHION_URL, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                      "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        apt_package="dataset-fashion-mnist"),
    # Debian has no MNIST package (checked with apt-cache), hence no apt hint.
    "mnist": DatasetSpec(
        "mnist", "MNIST", "idx", 1, 28, 28, 10, (0.1307,), (0.3081,),
        urls=_idx_urls(_MNIST_URL, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                    "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10", "cifar", 3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        crop_flip=True, urls=((_CIFAR_URL + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),)),
    "cifar100": DatasetSpec(
        "cifar100", "CIFAR-100", "cifar", 3, 32, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        crop_flip=True, urls=((_CIFAR_URL + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),)),
    # mean/std: mean and population std of all pixels of the 1438-image train split at native 8x8,
    # pixels scaled by 1/16 (computed once with float64: 0.30548, 0.37611).  Default size 28 (bilinear
    # upsampling) so that every model, LeNet-5 included, runs on it.
    "digits": DatasetSpec("digits", "digits", "bundled", 1, 28, 8, 10, (0.3055,), (0.3761,)),
}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; unknown names -> DataError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}.") from None


class ArrayDataset(Dataset):
    """A whole split held as tensors: ``images`` (N,C,H,W float32, normalised) and ``labels`` (N int64)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, name: str, split: str, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if images.dim() != 4 or images.shape[2] != images.shape[3] or images.dtype != torch.float32:
            raise ValueError(f"images must be float32 N,C,H,W with H == W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],) or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 of shape ({images.shape[0]},), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need one value per channel ({images.shape[1]})")
        self.images, self.labels = images, labels
        self.name, self.split, self.num_classes = name, split, num_classes
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (f"ArrayDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])}, classes={self.num_classes})")


def _load_raw(spec: DatasetSpec, split: str, data_dir: str | Path | None,
              download: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Float32 images N,C,h,w scaled to [0, 1] at native size, and int64 labels."""
    if spec.format == "bundled":
        images, labels = load_digits_split(split)
        return torch.from_numpy(images), labels
    others = [n for n in DATASETS if n != spec.name]
    directory = locate_dataset(spec, split, data_dir, download, other_names=others)
    if spec.format == "idx":
        images, labels = load_idx_split(directory, split, num_classes=spec.num_classes, image_size=spec.native_size)
        images = images[:, None]
    else:
        images, labels = load_cifar_split(directory, spec.name, split, spec.num_classes)
    return torch.from_numpy(images).float().div_(255.0), labels


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, download: bool = False,
                 image_size: int | None = None) -> ArrayDataset:
    """Load one split of a registered dataset, resized to ``image_size`` and normalised.

    Larger-than-native sizes zero-pad the raw image (black border) centred,
    e.g. Fashion-MNIST 28 -> 32; digits is instead upsampled bilinearly (its
    8x8 images are too small to pad).  ``download`` fetches missing files into
    the cache; see :mod:`prunus.data.locate` for where files are looked up.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {spec.title}; use 'train' or 'test'.")
    size = spec.image_size if image_size is None else int(image_size)
    if size < spec.native_size:
        raise DataError(f"image_size={size} is smaller than {spec.title}'s native {spec.native_size}x"
                        f"{spec.native_size}; use image_size >= {spec.native_size}.")
    images, labels = _load_raw(spec, split, data_dir, download)
    if size != spec.native_size:
        if spec.format == "bundled":
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        else:
            before = (size - spec.native_size) // 2
            after = size - spec.native_size - before
            images = F.pad(images, (before, after, before, after))
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    images = images.sub_(mean).div_(std).contiguous()
    return ArrayDataset(images, torch.from_numpy(labels).to(torch.int64), name=spec.name, split=split,
                        num_classes=spec.num_classes, mean=spec.mean, std=spec.std)


def default_augmentation(name: str) -> RandomCropFlip | None:
    """The standard training augmentation for ``name``: pad-4 crop + flip for CIFAR, else None."""
    return RandomCropFlip(padding=4) if get_spec(name).crop_flip else None
