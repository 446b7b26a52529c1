"""A plan resolved against one model, once: every constrained tensor, its set, and the groups across tensors.

:meth:`prunus.plan.recipe.Plan.layout` and :meth:`prunus.plan.quant.QuantPlan.layout` build it; the
methods, the hard-prune and the keepers take it and never resolve the plan again or ask which
kind of plan it came from. Each target's ``constraint`` follows
:class:`prunus.constraints.base.Constraint`; two kinds of group span several tensors:

* channel sets (:class:`ChannelSet`): the rows of all their parameters are
  projected as one filter tensor, so the same channels go in every conv, bias and BatchNorm;
* a global unstructured ratio: one magnitude threshold across all targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from prunus.constraints.base import Constraint
from prunus.constraints.sparsity import project, project_global


@dataclass(frozen=True)
class ChannelSet:
    """Parameters whose dim 0 is one set of channels, pruned as one filter group at ``ratio``.

    A conv's weight and bias, the BatchNorm after it (gamma and beta: else a pruned filter still
    emits BN's constant, and BN's scale invariance lets the conv weight shrink to zero while the
    channel's output stays the same), every conv added into the same residual stream, a
    depthwise conv on an expansion. The same channels are zeroed in all of them.
    """

    params: tuple[str, ...]
    ratio: float


class LayoutTarget(Protocol):
    """One constrained tensor: its parameter name and its set."""

    name: str

    @property
    def constraint(self) -> Constraint: ...


@dataclass(frozen=True)
class Layout:
    """Every constrained tensor of one model and how the projection groups them."""

    targets: tuple[LayoutTarget, ...]
    channel_sets: tuple[ChannelSet, ...] = ()
    global_ratio: float | None = None  # global unstructured: one threshold across the targets at this ratio
    source: str = "plan"

    @property
    def names(self) -> list[str]:
        """Every parameter the layout constrains: the targets, then the other members of their channel sets."""
        own = [t.name for t in self.targets]
        extra = [n for c in self.channel_sets for n in c.params if n not in own]
        return own + list(dict.fromkeys(extra))

    @property
    def kept_entries_free(self) -> bool:
        """True when only removed entries are constrained (sparsity); False when any set pins every entry."""
        return all(t.constraint.kept_entries_free for t in self.targets)

    def project(self, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (Pi(W), mask)}`` for each of ``tensors`` the layout constrains (members not given are left out).

        A channel set is projected as one filter tensor: the rows (dim 0) of all its parameters
        side by side, channels ranked by their summed energy, the same channels zeroed in every
        member; that is the exact Euclidean projection of the stacked parameters onto "at most k
        channels alive".
        """
        if self.global_ratio is not None:
            names = [t.name for t in self.targets]
            return dict(zip(names, project_global([tensors[n] for n in names], self.global_ratio)))
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for channels in self.channel_sets:
            out.update(_project_channel_set(channels, tensors))
        for t in self.targets:
            if t.name not in out and t.name in tensors:
                out[t.name] = t.constraint.project(tensors[t.name])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"targets": [t.name for t in self.targets], "channel_sets": [list(c.params) for c in self.channel_sets],
                "global_ratio": self.global_ratio, "source": self.source}


def _project_channel_set(channels: ChannelSet, tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    members: Sequence[str] = [n for n in channels.params if n in tensors]
    if not members:
        return {}
    rows = torch.cat([tensors[n].detach().reshape(tensors[n].shape[0], -1) for n in members], 1)
    keep = project(rows, "filter", channels.ratio)[1][:, 0]
    out = {}
    for n in members:
        w = tensors[n]
        mask = keep.reshape((-1,) + (1,) * (w.dim() - 1)).expand(w.shape).contiguous()
        out[n] = (torch.where(mask, w.detach(), torch.zeros((), dtype=w.dtype, device=w.device)), mask)
    return out
