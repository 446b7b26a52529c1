"""Magnitude-pruning baselines, so SLR and ADMM can be compared with the usual practice.

* one-shot: project onto the constraint set once, at the start, then train with
  the mask fixed (prune + fine-tune). ``norm="l1"`` ranks groups by their L1 norm
  instead of their energy (Li et al. 2017, "Pruning filters for efficient ConvNets");
  it is the energy ranking of ``sqrt(|w|)``, so every structure supports it;
* gradual (Zhu & Gupta 2017): the ratio of every target follows the cubic ramp
  ``ratio_k = ratio * (1 - (1 - k/n)^3)`` over ``n`` rounds; each round re-projects
  by magnitude and the mask is held between rounds.

Both keep the current mask through every optimizer step (like masked retraining),
so they need no penalty.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from prunus.constraints.sparsity import project, project_global
from prunus.harden.keepers import MaskKeeper
from prunus.methods.base import Closure, PruningMethod
from prunus.plan.recipe import Plan, Target


def cubic_ratio(final: float, k: int, n: int) -> float:
    """Zhu & Gupta's schedule: 0 at k=0, ``final`` at k=n, fastest early."""
    return final * (1 - (1 - min(k, n) / n) ** 3)


class Magnitude(PruningMethod):
    scalars = ("rounds",)

    def __init__(
        self,
        model: nn.Module,
        plan: Plan,
        *,
        gradual: bool = False,
        rounds: int | None = None,
        norm: str = "l2",
        update_every: int | None = None,
        closure: Closure | None = None,
    ):
        super().__init__(model, plan, update_every=update_every, closure=closure)
        if gradual and (rounds is None or rounds < 1):
            raise ValueError("gradual magnitude pruning needs rounds >= 1 (the number of step() calls of the ramp)")
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        if norm == "l1" and (gradual or self.layout.global_ratio is not None):
            raise ValueError("norm='l1' is for one-shot per-tensor pruning "
                             "(unstructured |w| ranks the same either way)")
        self.gradual = gradual
        self.n_rounds = rounds
        self.norm = norm
        if gradual:
            masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}
        elif norm == "l1":
            masks = self._prune_l1()
        else:
            masks = self.hard_prune()
        self.keeper = MaskKeeper(model, masks)
        self._sync_state()

    @torch.no_grad()
    def _prune_l1(self):
        """Zero the groups of smallest L1 norm: the energy of sqrt|w| per group is its L1 norm.

        A channel set (a conv with its BatchNorm, the convs of a residual stream) ranks its
        channels by their L1 norm summed over all its parameters.
        """
        masks = {}
        for name, (_, mask) in self.project({n: p.detach().abs().sqrt() for n, p in self.params.items()}).items():
            self.params[name].mul_(mask)
            masks[name] = mask
        return masks

    def _sync_state(self) -> None:
        for n, m in self.keeper.masks.items():
            self.state.setdefault(n, {})["mask"] = m

    def _ratio_now(self, t: Target) -> float | None:
        """The ratio of ``t`` at the current round; None while the structure cannot express it yet."""
        if not self.gradual or self.rounds >= self.n_rounds:
            return t.ratio
        if t.structure.fixed_ratio() is not None:
            return None
        ratio = cubic_ratio(t.ratio, self.rounds, self.n_rounds)
        return ratio if ratio >= t.structure.min_ratio(self.params[t.name].shape) else None

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> dict[str, Any]:
        self.rounds += 1
        if self.gradual:
            if self.layout.global_ratio is not None:
                self._prune_global()
            else:
                for t in self.targets:
                    ratio = self._ratio_now(t)
                    if ratio is not None and ratio > 0:
                        _, mask = project(self.params[t.name].detach(), t.structure, ratio)
                        self.keeper.masks[t.name].copy_(mask)
            self.keeper.apply()
            self._sync_state()
        sparsity = {n: 1 - float(m.float().mean()) for n, m in self.keeper.masks.items()}
        record = {"round": self.rounds, "sparsity": sparsity}
        self.history.append(record)
        return record

    def _prune_global(self) -> None:
        ratio = self._ratio_now(self.targets[0])
        if not ratio:
            return
        names = [t.name for t in self.targets]
        for n, (_, mask) in zip(names, project_global([self.params[n].detach() for n in names], ratio)):
            self.keeper.masks[n].copy_(mask)

    def after_optimizer_step(self) -> None:
        self.keeper.apply()
        super().after_optimizer_step()

    def hard_prune(self):
        masks = super().hard_prune()
        if hasattr(self, "keeper"):  # not during __init__
            self.keeper.remove()
            self.keeper = MaskKeeper(self.model, masks)
            self._sync_state()
        return masks

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.keeper.remove()
        self.keeper = MaskKeeper(self.model, {n: s["mask"] for n, s in self.state.items()})
        self._sync_state()
