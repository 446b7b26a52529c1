"""Datasets as in-memory tensors: Fashion-MNIST/MNIST (IDX), CIFAR-10/100 (python pickles), digits.

``load_dataset(name, split)`` finds the files (see :mod:`prunus.data.locate`),
validates them strictly and returns an :class:`ArrayDataset` of normalised
images; ``default_augmentation(name)`` gives the batched, seeded augmentation
to apply on the training device.
"""

from prunus.data.datasets import DATASETS, ArrayDataset, DatasetSpec, default_augmentation, load_dataset
from prunus.data.idx import read_idx
from prunus.data.transforms import RandomCropFlip

__all__ = ["DATASETS", "ArrayDataset", "DatasetSpec", "RandomCropFlip", "default_augmentation", "load_dataset",
           "read_idx"]
