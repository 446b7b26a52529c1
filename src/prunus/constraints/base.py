"""The one protocol every constraint set follows: an exact Euclidean projection and what it leaves free.

A sparsity set (:class:`~prunus.constraints.sparsity.SparsitySet`) and a quantization level set
(:class:`~prunus.constraints.levels.LevelSet`) both implement it, so the methods, the hard-prune
and the statistics treat them alike and never ask which one they hold.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Constraint(Protocol):
    """A set ``S`` a tensor must lie in after compression."""

    #: True when only the removed entries are constrained (a sparsity set: the kept ones may take any
    #: value); False when every entry is pinned (a level set). SLR/ADMM's penalize="removed" relies on it.
    kept_entries_free: bool
    #: True when the set zeroes whole output channels (filters): their biases then go with them
    removes_filters: bool

    def project(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Pi_S(w), mask)``: the nearest point of the set and its support (False = forced to zero)."""
        ...
