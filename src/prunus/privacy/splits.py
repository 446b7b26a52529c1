"""Who is a member: a seeded, recorded split of a dataset's train split for membership inference.

An honest membership-inference measurement needs three disjoint sets of examples,
all drawn from the *train* split of one dataset (so they come from one distribution):

* ``members``: the only examples the target model is trained on;
* ``nonmembers``: as many examples, never seen by the target, used only to *evaluate*
  the attacks (members and non-members are balanced, so 50% is chance);
* ``pool``: everything else, the attacker's *population* data: shadow models,
  thresholds of the metric attacks and the adversarial-regularization game's
  reference non-members come from here, never from ``nonmembers``.

The split is a permutation drawn from ``numpy.random.default_rng(seed)`` and is
stored *explicitly* (the index arrays), not as a seed, so that a defended model is
audited on exactly the examples it was trained against whatever numpy version
runs the audit.  :class:`SplitRecord` is a :class:`~prunus.hooks.TrainingHook` that
stores the split in every checkpoint of a run (``state.safetensors``, section
``membership_split``); :func:`split_of_checkpoint` reads it back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prunus.data.datasets import ArrayDataset
from prunus.errors import CheckpointError, ConfigError
from prunus.hooks import TrainingHook

SECTION = "membership_split"


@dataclass(frozen=True)
class MembershipSplit:
    """Index arrays into a dataset's train split: target members, evaluation non-members, attacker pool."""

    dataset: str
    total: int  # size of the train split the indices refer to
    seed: int
    members: np.ndarray
    nonmembers: np.ndarray
    pool: np.ndarray

    def __post_init__(self) -> None:
        for name in ("members", "nonmembers", "pool"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        self.check()

    def check(self) -> None:
        """Disjoint, in range, balanced; a violation is a corrupt record (CheckpointError)."""
        parts = np.concatenate([self.members, self.nonmembers, self.pool])
        if len(self.members) != len(self.nonmembers):
            raise CheckpointError(
                f"membership split: {len(self.members)} members but {len(self.nonmembers)} non-members (must be equal)")
        if len(parts) and (parts.min() < 0 or parts.max() >= self.total):
            raise CheckpointError(f"membership split: an index lies outside the {self.total}-example train split")
        if len(np.unique(parts)) != len(parts):
            raise CheckpointError("membership split: members, non-members and pool overlap")

    @property
    def digest(self) -> str:
        """SHA-256 of the three index arrays: a short name for exactly this split."""
        h = hashlib.sha256()
        for a in (self.members, self.nonmembers, self.pool):
            h.update(np.int64(len(a)).tobytes())
            h.update(a.astype("<i8").tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """JSON-able description without the indices (these live in the checkpoint state)."""
        return {"dataset": self.dataset, "total": self.total, "seed": self.seed, "members": len(self.members),
                "nonmembers": len(self.nonmembers), "pool": len(self.pool), "sha256_16": self.digest}

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "total": self.total, "seed": self.seed,
                "members": torch.from_numpy(self.members.copy()),
                "nonmembers": torch.from_numpy(self.nonmembers.copy()),
                "pool": torch.from_numpy(self.pool.copy())}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "MembershipSplit":
        try:
            return cls(str(state["dataset"]), int(state["total"]), int(state["seed"]),
                       _array(state["members"]), _array(state["nonmembers"]), _array(state["pool"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"membership split record is incomplete or malformed ({e})") from None

    # -- datasets -----------------------------------------------------------------------------
    def subset(self, train_set: ArrayDataset, part: str | np.ndarray) -> ArrayDataset:
        """An :class:`ArrayDataset` of ``part`` ("members", "nonmembers", "pool" or an index array)."""
        self.check_dataset(train_set)
        idx = getattr(self, part) if isinstance(part, str) else np.asarray(part, dtype=np.int64)
        return subset(train_set, idx, split=part if isinstance(part, str) else "subset")

    def check_dataset(self, train_set: ArrayDataset) -> None:
        if len(train_set) != self.total or train_set.name != self.dataset:
            raise CheckpointError(
                f"the membership split was drawn from {self.dataset}'s {self.total}-example train split, "
                f"but the data given is {train_set.name} with {len(train_set)} examples")


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.cpu().numpy().astype(np.int64)
    return np.asarray(value, dtype=np.int64)


def subset(dataset: ArrayDataset, idx: np.ndarray, split: str = "subset") -> ArrayDataset:
    """The examples ``idx`` of ``dataset`` as a new in-memory dataset (what :class:`Trainer` trains on)."""
    t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    return ArrayDataset(dataset.images[t].contiguous(), dataset.labels[t].contiguous(), name=dataset.name, split=split,
                        num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std)


def make_split(dataset: str, total: int, members: int, seed: int = 0, pool: int | None = None) -> MembershipSplit:
    """Draw ``members`` members, as many non-members, and a pool of the rest (or of ``pool`` examples).

    One permutation of ``range(total)`` from ``numpy.random.default_rng(seed)``: the first
    ``members`` are members, the next ``members`` non-members, the following ones the pool.
    Each part is stored sorted.
    """
    if members < 1:
        raise ConfigError(f"--members must be at least 1, got {members}")
    available = total - 2 * members
    if available < 0:
        raise ConfigError(f"--members {members}: {dataset}'s train split has {total} examples, fewer than "
                          f"{2 * members} (members plus as many non-members); use at most {total // 2}")
    n_pool = available if pool is None else pool
    if not 0 <= n_pool <= available:
        raise ConfigError(f"pool size {n_pool} must be between 0 and the {available} examples left over")
    perm = np.random.default_rng(seed).permutation(total)
    return MembershipSplit(dataset, total, seed, np.sort(perm[:members]), np.sort(perm[members:2 * members]),
                           np.sort(perm[2 * members:2 * members + n_pool]))


class SplitRecord(TrainingHook):
    """Carries a :class:`MembershipSplit` into every checkpoint a :class:`~prunus.train.trainer.Trainer` writes.

    It does nothing during training; on resume it checks that the run continues with the same split.
    """

    name = SECTION

    def __init__(self, split: MembershipSplit):
        self.split = split

    def state_dict(self) -> dict[str, Any]:
        return self.split.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if MembershipSplit.from_state_dict(state).digest != self.split.digest:
            raise CheckpointError("the checkpoint being resumed was trained on another membership split")


def split_of_checkpoint(ckpt) -> MembershipSplit:
    """The membership split a checkpoint records; a one-line CheckpointError when it has none."""
    if not ckpt.has_state(SECTION):
        raise CheckpointError(
            f"checkpoint {ckpt.path} records no membership split, so its members and non-members are unknown; "
            "train the target with `prunus defend` (e.g. --defense none), which records one")
    return MembershipSplit.from_state_dict(ckpt.state(SECTION))


def balanced_inclusion(n_models: int, n_examples: int, seed: int) -> np.ndarray:
    """A (models, examples) boolean matrix where each example is "in" for exactly half of the models.

    For every example, a random ``n_models // 2`` of the models include it (one more for
    half of the examples when ``n_models`` is odd), as in Carlini et al. (2022): every
    example then has both IN and OUT reference models, and each model trains on about
    half of the examples.
    """
    rng = np.random.default_rng(seed)
    keys = rng.random((n_models, n_examples))
    order = np.argsort(keys, axis=0)  # per example, a random order of the models
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(n_models)[:, None].repeat(n_examples, 1), axis=0)
    k = np.full(n_examples, n_models // 2)
    if n_models % 2:
        k[rng.permutation(n_examples)[: n_examples // 2]] += 1
    return ranks < k[None, :]
