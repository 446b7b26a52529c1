"""The one interface between a training loop and what takes part in it.

Kept apart from :mod:`prunus.train.trainer` so that compression methods can be hooks
without depending on the reference loop (they work in any loop).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class TrainingHook:
    """Something that takes part in training; every method is optional.

    prunus' constrained optimizers (SLR, ADMM, ...) and mask keepers are hooks.
    ``name`` is the checkpoint section their ``state_dict()`` is saved under.
    """

    name = "hook"

    def setup(self, trainer: Any) -> None:
        """Called once at the end of a Trainer's construction (e.g. to wrap its model, optimizer or batches)."""

    def epoch_metrics(self) -> dict[str, Any]:
        """Extra figures for each epoch's metrics record (e.g. the privacy spent so far)."""
        return {}

    def penalty(self) -> torch.Tensor | None:
        """Extra term added to the loss of every batch."""
        return None

    def output_loss(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
        """Extra loss term of one batch that needs its inputs and the model's outputs (e.g. distillation)."""
        return None

    def before_optimizer_step(self) -> None:
        """Called after ``backward()``, before ``optimizer.step()`` (e.g. to add a regularizer to the gradients)."""

    def after_optimizer_step(self) -> None:
        """Called after each ``optimizer.step()`` (e.g. to keep pruned weights at zero)."""

    def end_of_epoch(self, epoch: int) -> None:
        """Called once per epoch after the last batch, before evaluation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class WeightKeeper(TrainingHook, ABC):
    """A hook that re-imposes a constraint on weights after every optimizer step (``apply``).

    Use it in any loop with ``keeper.attach(optimizer)`` (an optimizer step post-hook), or
    let a trainer call ``after_optimizer_step``; ``apply`` must be idempotent, so both at once is harmless.
    """

    _handles: list[Any]

    @abstractmethod
    def apply(self) -> None:
        """Put the weights back into the constraint set (idempotent)."""

    def attach(self, optimizer: torch.optim.Optimizer):
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply()))
        return self

    def after_optimizer_step(self) -> None:
        self.apply()

    def remove(self) -> None:
        """Detach from the optimizer (and from gradient hooks, where a keeper set some)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
