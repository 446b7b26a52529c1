"""A BCNN structurally pruned to a target compression of its *live* weights (those the engine still runs).

Filter pruning zeroes whole output channels; the engine then drops the channels that read only
zeros too, so the live-weight count falls faster than the nonzero count. Both are reported:
``compression`` is dense weights / live weights (the seed paper's "20x"), ``nonzero`` the plain count.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn as nn

from prunus.bcnn.engine import compile_engine
from prunus.plan.coupling import project_coupled
from prunus.plan.recipe import Plan, prunable_weights
from prunus.plan.search import smallest_on_grid

#: the ratios tried by :func:`prune_to_live_compression`: 0.5 .. 0.975 in steps of 0.005
RATIO_GRID = tuple(round(0.5 + 0.005 * i, 3) for i in range(96))


def weight_counts(model: nn.Module, engine: Any) -> dict[str, Any]:
    """Dense, nonzero and live weights of ``model`` (live: as ``engine`` runs it), and the live compression."""
    dense = sum(p.numel() for _, p in prunable_weights(model))
    nonzero = sum(int((p != 0).sum()) for _, p in prunable_weights(model))
    live = engine.live_weights()
    return {"dense_weights": dense, "nonzero_weights": nonzero, "live_weights": sum(live.values()),
            "live_per_layer": live, "compression": dense / sum(live.values())}


def prune_to_live_compression(model: nn.Module, plan_at: Callable[[float], Plan], target: float,
                              example_input: torch.Tensor, *, grid: tuple[float, ...] = RATIO_GRID,
                              prepare: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A pruned copy of ``model`` with at least ``target`` times fewer live weights, at the smallest such ratio.

    ``plan_at(ratio)`` gives the filter plan of a ratio; each try hard-prunes a copy per coupled
    channel set (:func:`~prunus.plan.coupling.project_coupled`), lets ``prepare`` adjust it (e.g.
    BatchNorm statistics), and counts the live weights with the float engine. Returns the model
    and its :func:`weight_counts` with the ``ratio``.
    """
    size = example_input.shape[-1]

    def attempt(ratio: float) -> tuple[nn.Module, dict[str, Any]]:
        pruned = copy.deepcopy(model)
        project_coupled(pruned, plan_at(ratio), example_input)
        if prepare is not None:
            prepare(pruned)
        return pruned, weight_counts(pruned, compile_engine(pruned, size, backend="fp32"))

    ratio = smallest_on_grid(lambda r: attempt(r)[1]["compression"] >= target, grid)
    pruned, counts = attempt(ratio)
    return pruned, {**counts, "ratio": ratio}
