"""Quantization plans: which tensors are constrained to which level set (the counterpart of a sparsity Plan)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn

from prunus.constraints.levels import LevelSet, QuantScheme
from prunus.errors import ConfigError
from prunus.plan.layout import Layout
from prunus.plan.recipe import prunable_weights


# -- plans: the same shape as a pruning plan, so SLR and ADMM project onto levels -------------------------------
@dataclass(frozen=True)
class QuantTarget:
    """One quantized tensor; ``mask`` (pruned = False) keeps a pruned model's zeros."""

    name: str
    scheme: QuantScheme
    mask: torch.Tensor | None = field(default=None, compare=False)

    @property
    def constraint(self) -> LevelSet:
        return LevelSet(self.scheme, self.mask)


class QuantPlan:
    """Quantize the weights of every Conv2d/Linear (or the named ones) with one scheme.

    ``masks``: pruning masks to keep (a weight with a mask is quantized on its mask
    only). Use :meth:`for_pruned` to take them from the zeros of a pruned model.
    """

    def __init__(self, scheme: QuantScheme | str | int, names: Sequence[str] | None = None,
                 masks: dict[str, torch.Tensor] | None = None, per_channel: bool = False):
        self.scheme = QuantScheme.parse(scheme, per_channel)
        self.names = list(names) if names is not None else None
        self.masks = dict(masks or {})
        self.source = f"quantization {self.scheme}"

    @classmethod
    def for_pruned(cls, model: nn.Module, scheme: QuantScheme | str | int, per_channel: bool = False) -> "QuantPlan":
        """Every Conv2d/Linear weight; entries that are exactly 0 now stay 0."""
        masks = {n: p.detach() != 0 for n, p in prunable_weights(model)}
        return cls(scheme, [n for n, _ in prunable_weights(model)], masks, per_channel)

    def resolve(self, model: nn.Module) -> list[QuantTarget]:
        params = dict(model.named_parameters())
        names = self.names if self.names is not None else [n for n, _ in prunable_weights(model)]
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"{self.source}: the model has no parameter {missing[0]}")
        return [QuantTarget(n, self.scheme, self.masks.get(n)) for n in names]

    def layout(self, model: nn.Module) -> Layout:
        """This plan resolved against ``model`` once (levels are per tensor: no channel sets, no global ratio)."""
        return Layout(tuple(self.resolve(model)), source=self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"quantize": {"scheme": str(self.scheme), "tensors": self.names}}
