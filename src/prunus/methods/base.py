"""What every constrained pruning method shares: plan, per-tensor state, lifecycle.

A method sits beside the user's optimizer, like ``torch.optim.Optimizer`` sits
beside the model::

    pruner = SLR(model, plan)
    for epoch in range(epochs):
        for x, y in loader:
            loss = criterion(model(x), y) + pruner.penalty()
            opt.zero_grad(); loss.backward(); opt.step()
        pruner.step(closure)            # one round of the method's own updates
    masks = pruner.hard_prune()         # weights now lie in the constraint set

It is also a :class:`prunus.hooks.TrainingHook`, so the reference trainer calls
``penalty()`` every batch and ``step()`` once per epoch (or every
``update_every`` batches). ``state_dict()`` holds every tensor and scalar the
method needs to resume exactly.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunus.hooks import TrainingHook
from prunus.plan.projection import Masks, hard_prune
from prunus.plan.recipe import Plan

Closure = Callable[[], torch.Tensor]
#: a hard-prune farther than this (relative distance) from the set warns: it will cost accuracy
LARGE_JUMP = 0.1


#: examples per forward pass of a closure: the fixed batch (2,048 by default) in one pass was slower than in chunks
#: on a 2-core CPU (a BCNN's activations stop fitting in cache); eval mode makes the outputs the same either way
CLOSURE_CHUNK = 256


def batch_closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> Closure:
    """f(W) on one fixed batch, in eval mode and without gradients (BN statistics untouched)."""

    @torch.no_grad()
    def closure() -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return loss_fn(torch.cat([model(chunk) for chunk in x.split(CLOSURE_CHUNK)]), y)
        finally:
            model.train(was_training)

    return closure


class PruningMethod(TrainingHook, ABC):
    """Base class: resolves the plan and keeps ``self.state[name]`` tensors per target."""

    name = "pruner"
    #: scalar attributes saved by state_dict (subclasses extend)
    scalars: tuple[str, ...] = ("rounds",)

    def __init__(self, model: nn.Module, plan: Plan, *, update_every: int | None = None,
                 closure: Closure | None = None):
        if update_every is not None and update_every < 1:
            raise ValueError(f"update_every must be at least 1 batch, got {update_every}")
        self.model = model
        self.layout = plan.layout(model)  # resolved once: every later step takes the layout
        self.targets = self.layout.targets
        params = dict(model.named_parameters())
        # the targets and the other members of their channel sets (biases, BatchNorms, coupled convs)
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in self.layout.names}
        self.state: dict[str, dict[str, torch.Tensor]] = {n: {} for n in self.params}
        self.update_every = update_every
        self.closure = closure
        self.rounds = 0
        self.history: list[dict[str, Any]] = []
        self._batches = 0

    # -- helpers ---------------------------------------------------------------------
    @torch.no_grad()
    def project(self, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Euclidean projection of each target tensor onto its constraint set."""
        return self.layout.project(tensors)

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    @torch.no_grad()
    def distances(self) -> tuple[float, dict[str, float]]:
        """How far a hard-prune now would move the weights: ||W - Pi_S(W)|| / ||W||, overall and per tensor.

        Near zero, the hard-prune changes almost nothing; a large value is the jump that costs
        accuracy. Every method records it each round (``history[k]["distance"]``, ``["distances"]``).
        """
        w = self.weights()
        gap = {n: float((w[n] - z).square().sum()) for n, (z, _) in self.project(w).items()}
        size = {n: float(w[n].square().sum()) for n in gap}
        per = {n: math.sqrt(gap[n] / size[n]) if size[n] > 0 else 0.0 for n in gap}
        total = math.sqrt(sum(gap.values()) / sum(size.values())) if sum(size.values()) > 0 else 0.0
        return total, per

    def record_round(self, record: dict[str, Any]) -> dict[str, Any]:
        """Add the distances to a round's record and keep it in ``history``."""
        total, per = self.distances()
        record.update(distance=total, distances=per)
        self.history.append(record)
        return record

    # -- a penalty of the form rho/2 sum_i ||W_i - A_i||^2 + c -----------------------------
    def anchor(self, name: str) -> torch.Tensor | None:
        """The point A_i the penalty pulls tensor ``name`` toward; None for no penalty."""
        return None

    def penalty_constant(self) -> float:
        return 0.0

    def penalty_mask(self, name: str) -> torch.Tensor | None:
        """The entries of tensor ``name`` the penalty acts on (True); None for all of them."""
        return None

    def refresh_anchors(self) -> None:
        """Recompute the anchors after the method's state changed (step, load)."""
        self._anchors, self._masks = {}, {}
        for n in self.params:
            anchor, mask = self.anchor(n), self.penalty_mask(n)
            if anchor is not None and mask is not None:
                self._masks[n] = mask.to(anchor.dtype)
                anchor = anchor * self._masks[n]
            self._anchors[n] = anchor
        self._constant = self.penalty_constant()

    # -- the interface ---------------------------------------------------------------
    def has_anchors(self) -> bool:
        """True once the method pulls its tensors toward anchors (after refresh_anchors, for a method with a
        penalty)."""
        return bool(getattr(self, "_anchors", None)) and next(iter(self._anchors.values())) is not None

    def penalty(self) -> torch.Tensor | None:
        """rho/2 sum_i ||W_i - A_i||^2 + c: one fused kernel per tensor, cheap beside a training step."""
        if not self.has_anchors():
            return None
        total = sum(F.mse_loss(p * self._masks[n] if n in self._masks else p, self._anchors[n], reduction="sum")
                    for n, p in self.params.items())
        return 0.5 * self.rho * total + self._constant

    @abstractmethod
    def step(self, closure: Closure | None = None) -> dict[str, Any]:
        """One round of the method's updates; returns what it did (also kept in ``history``)."""

    def hard_prune(self) -> Masks:
        """Project the weights onto the constraint sets for good and return the masks.

        Warns when the last round left the weights far from the set: the hard-prune is then a large
        jump that costs accuracy (give the method more rounds or steps; Adam moves a weight by at most
        about lr per step, so short runs cannot bring large weights to zero).
        """
        if self.history and self.history[-1].get("distance", 0.0) > LARGE_JUMP:
            warnings.warn(f"{type(self).__name__}: the weights are still {self.history[-1]['distance']:.3f} "
                          f"(||W - Pi(W)|| / ||W||) from the constraint set at the hard-prune; expect an accuracy "
                          f"drop (more rounds or optimizer steps bring them closer)", stacklevel=2)
        return hard_prune(self.model, self.layout)

    # -- TrainingHook ------------------------------------------------------------------
    def after_optimizer_step(self) -> None:
        self._batches += 1
        if self.update_every and self._batches % self.update_every == 0:
            self.step()

    def end_of_epoch(self, epoch: int) -> None:
        if not self.update_every:
            self.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "tensors": {n: {k: v.clone() for k, v in s.items()} for n, s in self.state.items()},
            "scalars": {k: getattr(self, k) for k in self.scalars},
            "history": list(self.history),
            "batches": self._batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.state) - set(state["tensors"]))
        if missing:
            raise KeyError(f"pruner state has no entry for {', '.join(missing)}")
        device = next(iter(self.params.values())).device
        for n, tensors in state["tensors"].items():
            current = self.state.get(n, {})  # keeps each tensor's dtype (masks stay bool whatever the file holds)
            self.state[n] = {k: v.to(device, dtype=current[k].dtype if k in current else v.dtype)
                             for k, v in tensors.items()}
        for k, v in state["scalars"].items():
            setattr(self, k, v)
        self.history = list(state["history"])
        self._batches = int(state["batches"])
        self.refresh_anchors()
