"""How many filters each coupled group keeps, chosen by measured latency rather than one ratio for all.

Fewer MACs is not the same as less time. A uniform filter ratio thins every layer alike,
and on a CPU a thin layer (8-16 channels at full resolution, say) runs its kernel at a
fraction of the efficiency of a wide one, so on a narrow network such as the CIFAR ResNets
2x fewer MACs buys far less than 2x speed. :func:`latency_aware_plan` spends the same MAC
budget where the time goes: starting from the dense model, each step tries removing
``round_to`` more channels from every coupled group (:mod:`prunus.plan.coupling`: a residual
stream is one group), times every candidate on this machine in the form it would be deployed
(:func:`prunus.deploy.latency.for_inference`, all candidates interleaved in one
:func:`prunus.deploy.latency.compare_latency`), and keeps the one that saves the most time per MAC
removed, until the MACs have fallen ``target`` times. It is the greedy, measured search of
NetAdapt (Yang et al., ECCV 2018) without its per-step fine-tuning: the plan it returns is an
ordinary filter :class:`~prunus.plan.recipe.Plan`, pruned and retrained like any other.

Only shapes matter for speed, so candidates are built from the model's own weights by
zeroing trailing channels and removing them (:func:`prunus.deploy.surgery.remove_pruned_channels`);
which channels a method later removes is its own choice. Timings are noisy: a step's choice
can be off by the noise, the MAC count never is. The steps are recorded so a run can show
how its allocation came about.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from prunus.constraints.structures import Structure
from prunus.deploy.latency import compare_latency, for_inference
from prunus.deploy.surgery import remove_pruned_channels
from prunus.errors import ConfigError
from prunus.harden.stats import count_macs
from prunus.plan.coupling import CoupledGroup, coupled_groups, project_coupled
from prunus.plan.recipe import Plan, Rule
from prunus.plan.search import smallest_ratio

__all__ = ["Allocation", "AllocationStep", "latency_aware_plan", "plan_from_widths", "shrink_to_widths",
           "uniform_filter_plan_for_macs", "pruned_copy"]


@dataclass(frozen=True)
class AllocationStep:
    """One accepted step: ``group`` (its root module) went down to ``kept`` channels."""

    group: str
    kept: int
    macs: int
    latency_ms: float


@dataclass
class Allocation:
    """What :func:`latency_aware_plan` found: channels kept per group (by root module), the plan, the path."""

    plan: Plan
    kept: dict[str, int]
    channels: dict[str, int]
    macs_dense: int
    macs: int
    latency_dense_ms: float
    latency_ms: float
    steps: list[AllocationStep] = field(default_factory=list)

    @property
    def fewer_macs(self) -> float:
        return self.macs_dense / self.macs


def _prunable(groups: list[CoupledGroup]) -> list[CoupledGroup]:
    return [g for g in groups if not g.protected and g.producers]


def plan_from_widths(model: nn.Module, example_input: torch.Tensor, kept: dict[str, int],
                     groups: list[CoupledGroup] | None = None) -> Plan:
    """The filter plan that leaves group ``root`` with ``kept[root]`` channels (groups not named stay whole)."""
    groups = _prunable(groups if groups is not None else coupled_groups(model, example_input))
    by_root = {g.root: g for g in groups}
    unknown = sorted(set(kept) - set(by_root))
    if unknown:
        raise ConfigError(f"no prunable coupled group has root {', '.join(unknown)} (roots: {', '.join(by_root)})")
    structure = Structure.parse("filter")
    rules = []
    for root, k in kept.items():
        g = by_root[root]
        if not 1 <= k <= g.channels:
            raise ConfigError(f"group {root} has {g.channels} channels; cannot keep {k}")
        if k < g.channels:
            rules += [Rule(f"{p}.weight", structure, (g.channels - k) / g.channels) for p in g.producers]
    if not rules:
        raise ConfigError("the widths prune nothing: every group keeps all its channels")
    kept_text = ", ".join(f"{r} {k}/{by_root[r].channels}" for r, k in kept.items() if k < by_root[r].channels)
    return Plan(rules, source=f"filter plan by width ({kept_text})")


@torch.no_grad()
def shrink_to_widths(model: nn.Module, example_input: torch.Tensor, kept: dict[str, int],
                     groups: list[CoupledGroup] | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` whose group ``root`` has ``kept[root]`` channels (its first ones).

    For timing and counting only: which channels survive does not change the shapes.
    """
    groups = _prunable(groups if groups is not None else coupled_groups(model, example_input))
    work = copy.deepcopy(model)
    params = dict(work.named_parameters())
    for g in groups:
        k = kept.get(g.root, g.channels)
        if k < g.channels:
            for name in g.parameters:
                if name in params:
                    params[name][k:] = 0
    return remove_pruned_channels(work, example_input, check=False).model


def latency_aware_plan(
    model: nn.Module,
    example_input: torch.Tensor,
    target: float,
    *,
    round_to: int = 8,
    min_keep: float = 0.25,
    batch_size: int = 64,
    repeats: int = 10,
    deploy: bool = True,
    log=None,
) -> Allocation:
    """Greedy measured search for the filter widths with ``target`` times fewer MACs and the lowest latency.

    Each group keeps a multiple of ``round_to`` channels (or all of them) and at least ``min_keep`` of
    them (so no layer collapses to a sliver that training cannot recover from). Latency is the median
    of ``repeats`` interleaved runs at ``batch_size`` on ``example_input``'s device, of the deployed
    form when ``deploy``. ``log(step)``, if given, sees every accepted :class:`AllocationStep`.
    """
    if not target > 1.0:
        raise ConfigError(f"target must be a MAC reduction above 1 (e.g. 2 for 2x fewer MACs), got {target!r}")
    if round_to < 1 or not 0.0 < min_keep <= 1.0:
        raise ConfigError(f"round_to must be >= 1 and min_keep in (0, 1], got {round_to!r} and {min_keep!r}")
    search = _WidthSearch(copy.deepcopy(model).eval(), example_input, batch_size, repeats, deploy)
    channels = {g.root: g.channels for g in search.groups}
    floor = {r: max(round_to, -(-int(c * min_keep) // round_to) * round_to) for r, c in channels.items()}
    kept = dict(channels)
    current, macs = search.build(kept)
    dense, macs_dense = current, macs
    steps: list[AllocationStep] = []
    while macs_dense / macs < target:
        candidates = {}
        for root, k in kept.items():
            nxt = (k - 1) // round_to * round_to  # the next multiple of round_to below k
            if nxt >= floor[root]:
                widths = {**kept, root: nxt}
                candidates[root] = (widths, *search.build(widths))
        if not candidates:
            raise ConfigError(f"{target:g}x fewer MACs is out of reach keeping at least {min_keep:g} of every group "
                              f"in multiples of {round_to} (reached {macs_dense / macs:.2f}x)")
        times = search.time_all({"current": current, **{root: c[1] for root, c in candidates.items()}})
        # time saved per MAC removed, against the current model timed in the same interleaved rounds
        saving = {root: (times["current"] - times[root]) / max(macs - c[2], 1) for root, c in candidates.items()}
        best = max(saving, key=saving.__getitem__)
        kept, current, macs = candidates[best]
        steps.append(AllocationStep(best, kept[best], macs, times[best]))
        if log is not None:
            log(steps[-1])
    final = search.time_all({"dense": dense, "small": current})
    plan = plan_from_widths(search.model, example_input, kept, search.groups)
    return Allocation(plan, kept, channels, macs_dense, macs, final["dense"], final["small"], steps)


class _WidthSearch:
    """Builds a model at given widths (deployed form, its MACs) and times candidates in interleaved rounds."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, batch_size: int, repeats: int, deploy: bool):
        self.model, self.example, self.batch_size, self.repeats, self.deploy = model, example_input, batch_size, \
            repeats, deploy
        self.groups = _prunable(coupled_groups(model, example_input))
        if not self.groups:
            raise ConfigError("the model has no coupled group of filters that can be removed")
        probe = example_input[:1]
        self.probe = probe.contiguous(memory_format=torch.channels_last) if deploy and probe.dim() == 4 else probe

    def build(self, widths: dict[str, int]) -> tuple[nn.Module, int]:
        small = shrink_to_widths(self.model, self.example, widths, self.groups)
        macs = count_macs(small, self.example[:1]).dense
        return (for_inference(small) if self.deploy else small.eval()), macs

    def time_all(self, models: dict[str, nn.Module]) -> dict[str, float]:
        lat = compare_latency(models, self.probe, (self.batch_size,), repeats=self.repeats, warmup=2)
        return {name: lat[name][self.batch_size].median_ms for name in models}


def pruned_copy(model: nn.Module, plan: Plan, example_input: torch.Tensor) -> nn.Module:
    """The physically smaller copy ``plan`` makes of ``model`` (coupled hard-prune, then surgery); ``model`` is
    untouched."""
    work = copy.deepcopy(model)
    project_coupled(work, plan, example_input)
    return remove_pruned_channels(work, example_input).model


def plan_for_macs(model: nn.Module, example_input: torch.Tensor, target: float, plan_at: Callable[[float], Plan],
                  *, steps: int = 14) -> tuple[Plan, float]:
    """The plan of the family ``plan_at(ratio)`` with the smallest ratio whose pruned model has ``target`` times
    fewer MACs.

    The MACs are counted on the physically smaller model (:func:`pruned_copy`), so coupled channels
    count once. Bisection on the ratio to ``2**-steps``; returns the plan and its ratio. A target the
    family cannot reach is one ConfigError naming the best it gets.
    """
    if not target >= 1:
        raise ConfigError(f"a MAC target is a reduction factor >= 1 (2 for 2x fewer MACs), got {target}")
    dense = count_macs(model, example_input).dense

    def fewer(ratio: float) -> float:
        return dense / count_macs(pruned_copy(model, plan_at(ratio), example_input), example_input).dense

    try:
        ratio = smallest_ratio(lambda r: fewer(r) >= target, steps=steps)
    except ValueError:
        raise ConfigError(f"{target:g}x fewer MACs is out of reach: the plan at ratio 0.99 ({plan_at(0.99).source}) "
                          f"gives {fewer(0.99):.2f}x") from None
    return plan_at(ratio), ratio


def uniform_filter_plan_for_macs(model: nn.Module, example_input: torch.Tensor, target: float, *, round_to: int = 1,
                                 skip_first: bool = False, steps: int = 14) -> tuple[Plan, float]:
    """The uniform filter plan with the smallest ratio whose pruned model has ``target`` times fewer MACs.

    Every Conv2d/Linear but the classifier is filter-pruned at one ratio (``skip_first``: the
    first conv too unless asked), each keeping a multiple of ``round_to`` filters.
    """
    def plan_at(ratio: float) -> Plan:
        return Plan.uniform(model, ratio, "filter", skip_first=skip_first, round_to=round_to)

    return plan_for_macs(model, example_input, target, plan_at, steps=steps)
