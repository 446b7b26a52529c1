"""Seeded mini-batches over an in-memory dataset, split across data-parallel ranks.

Why not ``DataLoader`` + ``DistributedSampler``: the datasets prunus trains on fit
in memory as tensors, so batches are one indexing operation (no per-sample
Python), and the shuffling must be a pure function of ``(seed, epoch)`` so that a
run resumed from a checkpoint replays exactly the batches of an uninterrupted one.

Under data parallelism every *global* batch is the same as in a single-process
run; rank ``r`` takes elements ``r, r + W, r + 2W, ...`` of it. Together with
:func:`global_mean_scale` this makes a W-process run follow the single-process
trajectory (up to float summation order).
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch


class TensorDataset(Protocol):
    images: torch.Tensor
    labels: torch.Tensor


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, stream)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63))
    return g


class Batches:
    """Iterate ``(x, y, global_batch_size)`` for one epoch at a time (call :meth:`set_epoch`)."""

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: Augment | None = None,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[torch.Tensor]:
        n = len(self.dataset.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        # A final batch smaller than the world size would leave a rank empty: drop it.
        return [b for b in order.split(self.batch_size) if len(b) >= self.world_size]

    def __len__(self) -> int:
        return len(self._global_batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        aug_gen = epoch_generator(self.seed, self.epoch, stream=1 + self.rank)
        for idx in self._global_batches():
            local = idx[self.rank :: self.world_size]
            x, y = self.dataset.images[local], self.dataset.labels[local]
            if self.augment is not None:
                x = self.augment(x, aug_gen)
            yield x, y, len(idx)


class PoissonBatches:
    """Poisson-sampled batches (each example in each step with probability ``sample_rate``), as DP-SGD's
    accounting assumes; ``round(1 / sample_rate)`` steps per epoch, a pure function of ``(seed, epoch)``.

    A step may draw an empty batch; it is yielded as such (the Trainer skips it: no update is made).
    """

    def __init__(self, dataset: TensorDataset, sample_rate: float, *, seed: int = 0):
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.dataset, self.sample_rate, self.seed, self.epoch = dataset, sample_rate, seed, 0
        self.steps = max(round(1 / sample_rate), 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        gen = epoch_generator(self.seed, self.epoch, stream=1_000)
        n = len(self.dataset.labels)
        for _ in range(self.steps):
            idx = (torch.rand(n, generator=gen) < self.sample_rate).nonzero().flatten()
            yield self.dataset.images[idx], self.dataset.labels[idx], len(idx)


def global_mean_scale(local_size: int, global_size: int, world_size: int) -> float:
    """Factor for a rank's mean loss so that DDP's gradient *average* equals the global-batch mean."""
    return local_size * world_size / global_size
