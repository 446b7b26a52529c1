"""A penalty that grows with the budget: rho rises until the weights reach the constraint set by the last round.

With a fixed rho the weights of SLR and ADMM hover at a distance from the set that
is set by the balance of the loss gradient and the penalty (about ``|grad f| / rho``
per entry), so the final hard-prune is a jump whose size depends on the epoch budget
and on the model. Here the distance is measured each round,

    d_k = ||W - Pi_S(W)|| / ||W||      (over all constrained tensors; what a hard-prune now would remove)

and compared with a geometric path from the first round's distance ``d_1`` to ``tol`` at
the last round ``K``: ``d*_k = d_1 (tol / d_1)^((k - 1) / (K - 1))``. When the run is
behind the path, rho is multiplied by ``d_k / d*_{k+1}`` (the distance falls about like
1/rho), at most ``max_growth`` per round; it never shrinks. A long budget thus grows rho
gently and leaves the kept weights free for longer; a short one grows it fast.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from prunus.methods.base import Closure, PruningMethod


@dataclass
class BudgetSchedule:
    """rho's growth for a run of ``rounds`` method rounds, ending at relative distance ``tol``."""

    rounds: int
    tol: float = 1e-3
    max_growth: float = 10.0
    first: float | None = None  # d_1, set at the first round (saved with the method's state)

    def __post_init__(self) -> None:
        if self.rounds < 1 or not 0 < self.tol < 1 or self.max_growth < 1:
            raise ValueError(f"the budget schedule needs rounds >= 1, 0 < tol < 1 and max_growth >= 1; got "
                             f"rounds={self.rounds}, tol={self.tol}, max_growth={self.max_growth}")

    def planned(self, k: int) -> float:
        """d*_k, the distance planned for round ``k`` (1-based), ``tol`` from round K on."""
        if self.first is None or self.first <= self.tol or self.rounds == 1:
            return self.tol
        t = min(max(k - 1, 0) / (self.rounds - 1), 1.0)
        return self.first * (self.tol / self.first) ** t

    def factor(self, k: int, distance: float) -> float:
        """The factor for rho after round ``k`` measured ``distance``: at least 1, at most ``max_growth``."""
        if self.first is None:
            self.first = distance
        target = self.planned(k + 1)
        if not distance > target:  # on the path (or NaN: leave rho alone, the trainer reports it)
            return 1.0
        return min(distance / target, self.max_growth)

    def proximal_rho(self, k: int, distance: float, rho: float, steps: int, lr: float) -> float:
        """rho for the round after round ``k`` when the penalty is applied as its proximal step.

        Two things keep the weights from the set. The shrinking is too slow: ``steps`` proximal
        steps of learning rate ``lr`` shrink the penalised entries by ``(1 + lr rho)^-steps``, so
        reaching the path at the next round needs ``((distance / d*_{k+1})^(1/steps) - 1) / lr``.
        Or the optimizer pushes back: Adam moves even a tiny loss gradient's entry by about lr
        per step, which the proximal step undoes only down to about ``1 / rho``; a distance that
        falls like ``1 / rho`` needs rho times ``distance / d*_{k+1}`` (at most ``max_growth``),
        as under the loss-term penalty. rho takes the larger and never shrinks.
        """
        if self.first is None:
            self.first = distance
        target = self.planned(k + 1)
        if not distance > target or steps < 1 or not lr > 0:
            return rho
        shrink = ((distance / target) ** (1.0 / steps) - 1.0) / lr
        return max(rho * min(distance / target, self.max_growth), shrink)

    def state(self) -> dict[str, float | int | None]:
        return {"rounds": self.rounds, "tol": self.tol, "max_growth": self.max_growth, "first": self.first}


class Budgeted:
    """A method whose penalty grows by a :class:`BudgetSchedule` (``self.schedule``, None when fixed).

    ``schedule_first`` (the first round's distance, which fixes the path) is listed in the method's
    scalars, so a resumed run keeps its path.
    """

    schedule: BudgetSchedule | None

    @property
    def schedule_first(self) -> float | None:
        return self.schedule.first if self.schedule else None

    @schedule_first.setter
    def schedule_first(self, value: float | None) -> None:
        if self.schedule:
            self.schedule.first = value


PENALIZE = ("removed", "all")
#: how the penalty acts: "loss" adds it to the training loss (the textbook W-step, through the user's optimizer);
#: "proximal" applies its exact proximal map after each optimizer step (see GrowingRho)
PENALTY_STEPS = ("loss", "proximal")


class GrowingRho(Budgeted, PruningMethod):
    """What SLR and ADMM share: the penalty rho/2 ||W - Z + Lambda/rho||^2 and how rho grows:
    fixed, geometric (``rho_factor``, ``rho_max``) or by the budget (``rounds``).

    ``penalize`` says which entries the penalty rho/2 ||W - Z + Lambda/rho||^2 acts on between
    rounds. ``"all"`` is the textbook W-step. ``"removed"``: only the entries the last Z-step
    set to zero; on the kept ones Z is minimised out (Z = W + Lambda/rho wherever the support
    keeps an entry), so their term is a constant and they train freely. Quantization plans
    pin every entry to a level, so there "removed" acts as "all". With "all" the kept
    weights are held near their value at the last round by a spring of stiffness rho, so a
    rho that grows to reach the set also freezes the weights that should adapt to the pruning.

    ``penalty_step`` says how the penalty acts. ``"loss"`` adds it to the loss, so the user's
    optimizer takes its gradient. Under Adam that gradient is normalised per entry like any
    other: a penalised weight moves by about lr per step however large rho grows, so a short
    budget cannot bring large weights (BatchNorm's gamma near 1) to the set, and growing rho
    only drowns the loss. ``"proximal"`` leaves the loss alone and, after each optimizer
    step, applies the penalty's exact proximal map with the optimizer's learning rate,
    ``W <- (W + lr rho A) / (1 + lr rho)`` on the penalised entries (A the anchor): the
    pull grows with rho whatever the optimizer (the decoupling AdamW makes for weight
    decay). The Trainer passes the optimizer's base learning rate (``initial_lr``, before any
    schedule): with the scheduled one a cosine schedule's last rounds would have almost no
    pull left. Under the budget schedule rho grows by :meth:`BudgetSchedule.proximal_rho`.
    In your own loop call :meth:`proximal_step` after ``optimizer.step()``; the reference
    Trainer does it for you. Evidence: tests/test_proximal_penalty.py (30 Adam steps: the loss
    term ends 0.70 from the set with rho above 1e3, the proximal step under 0.01),
    benchmarks/retrain_free.py (LeNet-5, where the loss term does as well or better) and
    benchmarks/bcnn_accuracy.py (a BCNN, where the proximal step is the default).

    A subclass sets up its per-tensor state in :meth:`init_state` and calls :meth:`next_rho` at the
    end of each round. ``schedule_first`` (and the proximal steps of the current round) are listed
    in the method's scalars so a resumed run keeps its path.
    """

    def __init__(
        self,
        model: nn.Module,
        plan: Any,
        *,
        rho: float = 0.1,
        rho_factor: float = 1.0,
        rho_max: float | None = None,
        rounds: int | None = None,
        tol: float = 1e-3,
        max_growth: float = 10.0,
        penalize: str = "removed",
        penalty_step: str = "loss",
        update_every: int | None = None,
        closure: Closure | None = None,
    ):
        super().__init__(model, plan, update_every=update_every, closure=closure)
        if penalty_step not in PENALTY_STEPS:
            raise ValueError(f"penalty_step must be one of {', '.join(PENALTY_STEPS)}, got {penalty_step!r}")
        self.penalty_step = penalty_step
        self.prox_steps, self.prox_lr_sum = 0, 0.0  # proximal steps (and their summed lr) since the last round
        self._optimizer: torch.optim.Optimizer | None = None
        self.init_rho(rho, rho_factor, rho_max, rounds, tol, max_growth, penalize)
        self.init_state()
        self.refresh_anchors()

    @abstractmethod
    def init_state(self) -> None:
        """Set ``self.state[name]`` (Z, multipliers, ...) for every constrained tensor (SLR and ADMM differ here)."""

    def init_rho(self, rho: float, rho_factor: float, rho_max: float | None, budget_rounds: int | None,
                 tol: float, max_growth: float, penalize: str = "removed") -> None:
        if penalize not in PENALIZE:
            raise ValueError(f"penalize must be one of {', '.join(PENALIZE)}, got {penalize!r}")
        # on a level set (quantization) no entry is free: "removed" is then the same as "all"
        self.penalize = penalize if self.layout.kept_entries_free else "all"
        if not rho > 0 or not rho_factor > 0:
            raise ValueError(f"rho and rho_factor must be positive, got rho={rho}, rho_factor={rho_factor}")
        if budget_rounds is not None and rho_factor != 1.0:
            raise ValueError("give either rounds (rho grows by the budget) or rho_factor (a fixed geometric growth), "
                             "not both")
        self.rho, self.rho_factor, self.rho_max = rho, rho_factor, rho_max
        self.schedule = BudgetSchedule(budget_rounds, tol, max_growth) if budget_rounds is not None else None

    def penalty_mask(self, name: str):
        """With penalize="removed", the entries the last Z-step removed (``state[name]["keep"]`` is False)."""
        return ~self.state[name]["keep"] if self.penalize == "removed" else None

    def next_rho(self, distance: float) -> float:
        """rho for the next round, after round ``self.rounds`` ended ``distance`` from the set."""
        if self.schedule and self.penalty_step == "proximal":
            steps = self.prox_steps
            new = self.schedule.proximal_rho(self.rounds, distance, self.rho, steps, self.prox_lr_sum / max(steps, 1))
        else:
            new = self.rho * (self.schedule.factor(self.rounds, distance) if self.schedule else self.rho_factor)
        self.prox_steps, self.prox_lr_sum = 0, 0.0
        return new if self.rho_max is None else min(new, self.rho_max)

    # -- the proximal penalty step -----------------------------------------------------------
    def penalty(self) -> torch.Tensor | None:
        return None if self.penalty_step == "proximal" else super().penalty()

    @torch.no_grad()
    def proximal_step(self, lr: float) -> None:
        """``W <- argmin_V rho/2 ||V - A||^2 + ||V - W||^2 / (2 lr)`` on the penalised entries
        (penalty_step="proximal")."""
        if not self.has_anchors():
            return
        shrink = lr * self.rho / (1.0 + lr * self.rho)
        for n, p in self.params.items():
            mask = self._masks.get(n)
            gap = (p * mask if mask is not None else p) - self._anchors[n]  # 0 on entries the penalty leaves alone
            p.sub_(gap, alpha=shrink)
        self.prox_steps += 1
        self.prox_lr_sum += lr

    def setup(self, trainer: Any) -> None:
        self._optimizer = trainer.optimizer

    def after_optimizer_step(self) -> None:
        if self.penalty_step == "proximal":
            if self._optimizer is None:
                raise RuntimeError("penalty_step='proximal' outside the Trainer: call proximal_step(lr) after each "
                                   "optimizer.step() instead of after_optimizer_step()")
            group = self._optimizer.param_groups[0]
            # the base lr: the pull must not fade with a schedule
            self.proximal_step(group.get("initial_lr", group["lr"]))
        super().after_optimizer_step()
