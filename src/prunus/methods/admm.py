"""ADMM pruning (Zhang et al., ECCV 2018), the baseline SLR is measured against.

Problem: min_W f(W) s.t. W_i in S_i, split as W = Z with Z in S. With the scaled
dual variable U (= Lambda / rho), one round is

    W-step:  SGD on  f(W) + sum_i rho/2 ||W_i - Z_i + U_i||^2        (penalty(), every batch)
    Z-step:  Z_i = Pi_S(W_i + U_i)                                   (step())
    U-step:  U_i = U_i + W_i - Z_i                                   (step())

and rho grows after a round either by the budget (``rounds``: the run's total number of
rounds, see :mod:`prunus.methods.schedule`; what ``prunus prune`` uses) or geometrically
(rho <- min(rho * rho_factor, rho_max)), with U rescaled by old_rho / new_rho so that the
unscaled multiplier rho*U is unchanged. Without either, rho stays fixed.
"""

from __future__ import annotations

from typing import Any

import torch

from prunus.methods.base import Closure
from prunus.methods.schedule import GrowingRho


class ADMM(GrowingRho):
    """ADMM pruning; its options are those of :class:`~prunus.methods.schedule.GrowingRho` (rho and its schedule)."""

    scalars = ("rounds", "rho", "schedule_first", "prox_steps", "prox_lr_sum")

    def init_state(self) -> None:
        for name, (z, keep) in self.project(self.weights()).items():
            self.state[name] = {"Z": z, "keep": keep, "U": torch.zeros_like(z)}

    def anchor(self, name: str) -> torch.Tensor:
        """rho/2 ||W - Z + U||^2 = rho/2 ||W - (Z - U)||^2."""
        return self.state[name]["Z"] - self.state[name]["U"]

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> dict[str, Any]:
        w = self.weights()
        projected = self.project({n: w[n] + self.state[n]["U"] for n in w})
        residual = 0.0
        for n, (z, keep) in projected.items():
            s = self.state[n]
            s["Z"], s["keep"] = z, keep
            s["U"] += w[n] - z
            residual += float(((w[n] - z) ** 2).sum())
        self.rounds += 1
        record = self.record_round({"round": self.rounds, "residual": residual**0.5, "rho": self.rho})
        new_rho = self.next_rho(record["distance"])
        if new_rho != self.rho:
            for s in self.state.values():
                s["U"] *= self.rho / new_rho
        self.rho = new_rho
        self.refresh_anchors()
        return record
