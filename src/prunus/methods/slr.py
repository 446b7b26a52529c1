"""SLR: Surrogate Lagrangian Relaxation pruning (Gurevin et al., IJCAI 2021, arXiv 2012.10079).

Same splitting as ADMM (min f(W) s.t. W = Z, Z in S), but the multipliers Lambda
move by a *surrogate subgradient* step whose size shrinks by a rule with
convergence guarantees, and only when the relaxed problem really improved.

Relaxed (augmented) Lagrangian, summed over the planned tensors i::

    L(W, Z, Lambda) = f(W) + sum_i <Lambda_i, W_i - Z_i> + rho/2 ||W_i - Z_i||^2

One round k (``step()``, after a W-step of SGD on ``f + penalty()``):

1. W-step condition: L(W^k, Z^{k-1}, Lambda) < L(W^{k-1}, Z^{k-1}, Lambda),
   with f on both sides evaluated by the same ``closure`` (same data, eval mode).
   If it holds, take a multiplier step  Lambda += s_j (W^k - Z^{k-1}).
2. Z-step: Z^k = Pi_S(W^k + Lambda / rho)  (the exact minimiser of L over Z in S).
3. Z-step condition: L(W^k, Z^k, Lambda) < L(W^k, Z^{k-1}, Lambda); f(W^k) is the
   same on both sides, so it cancels. If it holds, Lambda += s_j (W^k - Z^k).

A step that fails its condition is not taken (Lambda stays as it was). Each
accepted step j (counted over both kinds) uses

    s_j     = alpha_j * s_{j-1} * ||W^{k-1} - Z^{k-1}|| / ||W^k - Z^k||
    alpha_j = 1 - 1 / (M * j^(1 - 1/j^r))

where the numerator is the residual norm at the previous accepted step and the
denominator the residual the step is taken on (norms over all planned tensors).
s_0 = ``s0``. W^{k-1} is a real copy (clone) taken at the start of the W-step, never
an alias of the live parameter. Defaults follow the paper: rho=0.1, s0=0.01,
M=300, r=0.1. rho grows after each round by the budget when ``rounds`` (the run's total
number of rounds) is given, so the weights reach the set by the last round
(:mod:`prunus.methods.schedule`; what ``prunus prune`` uses), or geometrically with
``rho_factor`` (capped at ``rho_max``); else it stays fixed. The multiplier step needs no
separate growth: the rule above makes s_j grow as the residual shrinks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from prunus.methods.base import Closure
from prunus.methods.schedule import GrowingRho
from prunus.plan.recipe import Plan


def alpha(j: int, M: float, r: float) -> float:
    """alpha_j = 1 - 1 / (M * j^(1 - 1/j^r)), j >= 1."""
    return 1.0 - 1.0 / (M * j ** (1.0 - 1.0 / j**r))


class SLR(GrowingRho):
    """SLR pruning: ``s0``, ``M``, ``r`` set the multiplier steps; ``penalty`` takes the options of
    :class:`~prunus.methods.schedule.GrowingRho` (rho and its schedule, ``update_every``, ``closure``)."""

    scalars = ("rounds", "rho", "s", "j", "prev_residual", "schedule_first", "prox_steps", "prox_lr_sum")

    def __init__(self, model: nn.Module, plan: Plan, *, s0: float = 0.01, M: float = 300.0, r: float = 0.1,
                 **penalty: Any):
        if s0 <= 0 or M <= 1 or not 0 < r < 1:
            raise ValueError(f"SLR needs s0 > 0, M > 1, 0 < r < 1; got s0={s0}, M={M}, r={r}")
        self.s, self.M, self.r = s0, M, r
        self.j = 0  # accepted multiplier steps so far
        super().__init__(model, plan, **penalty)

    def init_state(self) -> None:
        w = self.weights()
        for name, (z, keep) in self.project(w).items():
            self.state[name] = {"Z": z, "keep": keep, "Lambda": torch.zeros_like(z), "W_prev": w[name].clone()}
        self.prev_residual = self._residual(w, {n: s["Z"] for n, s in self.state.items()})

    # -- pieces of the Lagrangian ----------------------------------------------------------
    def anchor(self, name: str) -> torch.Tensor:
        """<Lambda, W - Z> + rho/2 ||W - Z||^2 = rho/2 ||W - (Z - Lambda/rho)||^2 - ||Lambda||^2 / (2 rho)."""
        return self.state[name]["Z"] - self.state[name]["Lambda"] / self.rho

    def penalty_constant(self) -> float:
        return -sum(float((s["Lambda"] ** 2).sum()) for s in self.state.values()) / (2 * self.rho)

    def _coupling(self, w: dict[str, torch.Tensor], z: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> float:
        """sum_i <Lambda_i, W_i - Z_i> + rho/2 ||W_i - Z_i||^2 for given W and Z (support ``keep``).

        With penalize="removed", Z is minimised out on the kept entries (Z = W + Lambda/rho
        there), as in the penalty the W-step descends, so each kept entry adds -Lambda^2/(2 rho).
        """
        total = 0.0
        for n, s in self.state.items():
            d = w[n] - z[n]
            if self.penalize == "removed":
                d = torch.where(keep[n], -s["Lambda"] / self.rho, d)
            total += float((s["Lambda"] * d).sum() + 0.5 * self.rho * (d**2).sum())
        return total

    @staticmethod
    def _residual(w: dict[str, torch.Tensor], z: dict[str, torch.Tensor]) -> float:
        return math.sqrt(sum(float(((w[n] - z[n]) ** 2).sum()) for n in w))

    def _multiplier_step(self, w: dict[str, torch.Tensor], z: dict[str, torch.Tensor]) -> float:
        residual = self._residual(w, z)
        self.j += 1
        if residual > 0:
            self.s = alpha(self.j, self.M, self.r) * self.s * self.prev_residual / residual
            self.prev_residual = residual
        for n, s in self.state.items():
            s["Lambda"] += self.s * (w[n] - z[n])
        return self.s

    @torch.no_grad()
    def _loss_at(self, closure: Closure, w: dict[str, torch.Tensor], live: dict[str, torch.Tensor]) -> float:
        """f at weights ``w`` (swapped into the model), then the ``live`` copy is put back."""
        try:
            for n, p in self.params.items():
                p.copy_(w[n])
            return float(closure())
        finally:
            for n, p in self.params.items():
                p.copy_(live[n])

    # -- one round -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> dict[str, Any]:
        closure = closure or self.closure
        if closure is None:
            raise ValueError("SLR.step needs a closure returning the training loss on a fixed batch "
                             "(or pass closure= to SLR)")
        w = {n: p.detach().clone() for n, p in self.params.items()}
        w_prev = {n: s["W_prev"] for n, s in self.state.items()}
        z_prev = {n: s["Z"] for n, s in self.state.items()}
        keep_prev = {n: s["keep"] for n, s in self.state.items()}

        # 1. W-step condition, both sides on the same data
        lagr_new = float(closure()) + self._coupling(w, z_prev, keep_prev)
        lagr_old = self._loss_at(closure, w_prev, live=w) + self._coupling(w_prev, z_prev, keep_prev)
        w_accepted = lagr_new < lagr_old
        if w_accepted:
            self._multiplier_step(w, z_prev)

        # 2. Z-step, 3. Z-step condition (f(W^k) cancels)
        projected = self.project({n: w[n] + self.state[n]["Lambda"] / self.rho for n in w})
        z_new = {n: z for n, (z, _) in projected.items()}
        keep_new = {n: keep for n, (_, keep) in projected.items()}
        z_accepted = self._coupling(w, z_new, keep_new) < self._coupling(w, z_prev, keep_prev)
        for n, s in self.state.items():
            s["Z"], s["keep"] = z_new[n], keep_new[n]
        if z_accepted:
            self._multiplier_step(w, z_new)

        for n, s in self.state.items():
            s["W_prev"] = w[n]
        self.rounds += 1
        record = {
            "round": self.rounds,
            "residual": self._residual(w, z_new),
            "w_condition": w_accepted,
            "z_condition": z_accepted,
            "s": self.s,
            "rho": self.rho,
            "lagrangian_old": lagr_old,
            "lagrangian_new": lagr_new,
        }
        self.record_round(record)
        self.rho = self.next_rho(record["distance"])
        self.refresh_anchors()
        return record
