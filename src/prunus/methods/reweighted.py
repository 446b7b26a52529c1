"""Reweighted group regularization bounded by the plan (Ma et al., arXiv 2004.05531).

One framework for every sparsity structure: the plan's structure says what a
*group* is (an entry, a filter, a channel, a column, a block, a 3x3 kernel) and
the penalty

    lambda * sum_g P_g * ||W_g||^2,     P_g = 1 / (||W_g||^2 + eps)      (reweighted every T steps)

approximates lambda times the *number* of nonzero groups: right after a
reweighting each penalised group contributes ~1, whatever its size, so small
groups are pushed as hard as large ones (a plain group lasso shrinks large groups
most, the reweighting corrects that).  ``||P_g o W_g||^2`` in the paper's notation
is read with P_g entering once; squared, the penalty would grow like 1/||W_g||^2
and blow up on the groups it is meant to remove.

Bounded by the designated constraint: at each reweighting the plan's projection
decides which entries the final hard-prune would remove *now* (the exact
projection of the current weights onto the structure at the plan's ratio).
Only those entries are penalised; the kept groups get P_g = 0 and train freely.
For structures that remove whole groups the removed part of a group is the group;
for ``pattern`` it is the part of a kernel outside its best pattern (or the whole
kernel when the kernel is pruned), so P_g = 1 / (||removed part of g||^2 + eps).
As the weights move, the selection is re-made every round, so a group the data
needs can come back; the ones that stay selected decay toward zero and the final
hard-prune (which removes exactly the selected set) costs almost nothing.

``eps`` is relative: eps_i = eps * (mean group energy of tensor i) at each
reweighting, so the same default works for layers and models of any weight scale.
``lam`` (lambda) is the one main knob. Given ``rounds`` (the run's number of rounds, as
``prunus prune`` does), lambda grows by the same budget schedule as SLR's and ADMM's rho
(:class:`~prunus.methods.schedule.BudgetSchedule`): whenever the removed part is behind a
geometric path to ``tol`` at the last round, so the hard-prune removes almost nothing the
model still uses; without ``rounds`` lambda stays fixed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from prunus.constraints.sparsity import group_sums
from prunus.methods.base import Closure, PruningMethod
from prunus.methods.schedule import Budgeted, BudgetSchedule
from prunus.plan.recipe import Plan


class Reweighted(Budgeted, PruningMethod):
    scalars = ("rounds", "lam", "eps", "schedule_first")

    def __init__(
        self,
        model: nn.Module,
        plan: Plan,
        *,
        lam: float = 1e-2,
        eps: float = 0.01,
        rounds: int | None = None,
        tol: float = 1e-3,
        max_growth: float = 10.0,
        update_every: int | None = None,
        closure: Closure | None = None,
    ):
        super().__init__(model, plan, update_every=update_every, closure=closure)
        if not lam > 0 or not eps > 0:
            raise ValueError(f"reweighted needs lam > 0 and eps > 0, got lam={lam}, eps={eps}")
        self.lam, self.eps = lam, eps
        self.schedule = BudgetSchedule(rounds, tol, max_growth) if rounds is not None else None
        self._reweight()

    @torch.no_grad()
    def _reweight(self) -> dict[str, int]:
        """Select the entries to remove (the plan's projection) and set their P_g; returns churn counts."""
        w = self.weights()
        projected = self.project(w)  # one call: a global plan ranks all tensors together
        changed = removed = 0
        for names, energies, groups in self._groups(w, projected):
            sq = [w[n].square() for n in names]
            # relative eps: a fraction of the group's mean energy (total energy / number of groups)
            eps = max(self.eps * sum(float(q.sum()) for q in sq) / max(groups, 1.0), torch.finfo(sq[0].dtype).tiny)
            for n, energy in zip(names, energies):
                drop = ~projected[n][1]
                old = self.state[n].get("drop")
                if old is not None:
                    changed += int((old != drop).sum())
                removed += int(drop.sum())
                self.state[n] = {"drop": drop, "P": drop / (energy + eps)}
        return {"removed": removed, "changed": changed}

    def _groups(self, w: dict[str, torch.Tensor], projected: dict[str, tuple]):
        """(names, removed energy of each entry's group per name, number of groups) per unit of the plan.

        A channel set is one unit whose groups are its channels, summed over all its parameters
        (a filter's conv weights, bias and BatchNorm gamma/beta weigh as one group); every other
        target is its own unit with its structure's groups.
        """
        in_sets = set()
        for channels in self.layout.channel_sets:
            names = [n for n in channels.params if n in w]
            in_sets.update(names)
            removed = sum((w[n].square() * ~projected[n][1]).reshape(w[n].shape[0], -1).sum(1) for n in names)
            yield names, [removed.reshape((-1,) + (1,) * (w[n].dim() - 1)).expand(w[n].shape) for n in names], \
                w[names[0]].shape[0]
        for t in self.targets:
            if t.name not in in_sets:
                sq = w[t.name].square()
                groups = float((1.0 / group_sums(torch.ones_like(sq), t.structure)).sum())
                yield [t.name], [group_sums(sq * ~projected[t.name][1], t.structure)], groups

    def penalty(self) -> torch.Tensor:
        """lambda * sum_i sum(P_i * W_i^2): only the entries the plan would remove are weighed."""
        return self.lam * sum((self.state[n]["P"] * p.square()).sum() for n, p in self.params.items())

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> dict[str, Any]:
        before = float(self.penalty())
        churn = self._reweight()
        self.rounds += 1
        w = self.weights()
        removed_norm = sum(float((w[n].square() * s["drop"]).sum()) for n, s in self.state.items()) ** 0.5
        record = self.record_round({"round": self.rounds, "penalty_before": before, "penalty": float(self.penalty()),
                                    "residual": removed_norm, "lam": self.lam, **churn})
        if self.schedule is not None:  # lambda for the next round, by the budget
            self.lam *= self.schedule.factor(self.rounds, record["distance"])
        return record

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for s in self.state.values():
            s["drop"] = s["drop"].bool()
