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
from prunus.bcnn.models import ComplexNIN
from prunus.constraints.structures import Structure
from prunus.errors import ConfigError
from prunus.plan.coupling import project_coupled
from prunus.plan.recipe import Plan, Rule, prunable_weights
from prunus.plan.search import smallest_on_grid

#: the ratios tried by :func:`prune_to_live_compression`: 0.005 .. 0.975 in steps of 0.005 (2x live weights is
#: reached near 0.3; the live count falls monotonically with the ratio, so the bisection finds the smallest one)
RATIO_GRID = tuple(round(0.005 * i, 3) for i in range(1, 196))


def filter_plan(model: nn.Module, ratio: float) -> Plan:
    """Whole complex filters at ``ratio`` in every conv but the full-precision head; the stem too for NIN.

    NIN's 96@5x5 full-precision stem is a large share of its weights and of the engine's time, so
    its filters are pruned with the rest; ResNet's stem is small and stays whole.
    """
    plan = Plan.uniform(model, ratio, "filter")  # every conv/linear but the first and the last
    if isinstance(model, ComplexNIN):
        plan.rules.insert(0, Rule("stem.conv.conv.weight", Structure.parse("filter"), ratio))
    return plan


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

    def reaches(ratio: float) -> bool:
        try:
            return attempt(ratio)[1]["compression"] >= target
        except ConfigError:  # a layer would lose every filter: past every ratio that can be used
            return True

    try:
        ratio = smallest_on_grid(reaches, grid)
    except ValueError:
        raise ConfigError(f"{target:g}x fewer live weights is out of reach for this model: even filter ratio "
                          f"{max(grid)} leaves more live weights") from None
    try:
        pruned, counts = attempt(ratio)
    except ConfigError as e:
        raise ConfigError(f"{target:g}x fewer live weights is out of reach for this model: {e}") from None
    return pruned, {**counts, "ratio": ratio}
