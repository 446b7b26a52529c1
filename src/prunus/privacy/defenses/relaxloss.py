"""RelaxLoss (Chen, Yu & Fritz, ICLR 2022): the training loss held near a level alpha instead of driven to zero."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from prunus.errors import ConfigError
from prunus.privacy.defenses.context import DefenseContext
from prunus.privacy.defenses.game import BatchLossHook


class RelaxLoss(BatchLossHook):
    """RelaxLoss (Chen, Yu & Fritz, ICLR 2022) as a :class:`~prunus.hooks.TrainingHook`.

    Membership attacks feed on members' losses being far lower than non-members'. RelaxLoss stops
    the training loss at a level ``alpha`` instead of zero. Per batch with mean cross-entropy L:

    * L >= alpha: plain descent on L;
    * L < alpha, in even epochs: gradient *ascent*, on ``alpha - L``, back up toward the level;
    * L < alpha, in odd epochs: posterior flattening. Each correctly classified example is trained
      toward its own probability for the true class (detached), with the rest spread evenly over the
      other classes; misclassified ones keep plain cross-entropy. The prediction stays, but members'
      outputs lose the peaked shape that sets them apart.

    A :class:`BatchLossHook`, like the game: :meth:`penalty` adds the difference between RelaxLoss's
    objective and the cross-entropy. ``history`` counts each epoch's batches per mode.
    """

    name = "relaxloss"
    MODES = ("descent", "ascent", "flatten")

    def __init__(self, alpha: float, num_classes: int):
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"--relax-alpha must be a positive number, got {alpha}")
        if num_classes < 2:
            raise ConfigError(f"RelaxLoss needs at least 2 classes, got {num_classes}")
        self.alpha, self.num_classes = alpha, num_classes
        self.epochs_done = 0
        self.history: list[dict[str, Any]] = []
        self._counts = dict.fromkeys(self.MODES, 0)

    def mode(self, ce: float) -> str:
        """Which update a batch of mean cross-entropy ``ce`` gets in the current epoch."""
        if ce >= self.alpha:
            return "descent"
        return "ascent" if self.epochs_done % 2 == 0 else "flatten"

    def _relaxed_loss(self, out: torch.Tensor, y: torch.Tensor, ce: torch.Tensor, mode: str) -> torch.Tensor:
        """What RelaxLoss descends below alpha: ``alpha - ce`` (ascent) or the flattened-target loss."""
        if mode == "ascent":
            return self.alpha - ce
        with torch.no_grad():
            p_true = torch.softmax(out, 1).gather(1, y[:, None])
            target = ((1 - p_true) / (self.num_classes - 1)).expand(-1, self.num_classes).clone()
            target.scatter_(1, y[:, None], p_true)
            correct = out.argmax(1) == y
        flattened = -(target * torch.log_softmax(out, 1)).sum(1)
        return torch.where(correct, flattened, F.cross_entropy(out, y, reduction="none")).mean()

    def penalty(self) -> torch.Tensor | None:
        """RelaxLoss's objective minus the cross-entropy the Trainer already adds (None when they are equal)."""
        captured = self.take_batch()
        if captured is None:
            return None
        out, y = captured
        ce = F.cross_entropy(out, y)
        mode = self.mode(float(ce.detach()))
        self._counts[mode] += 1
        return None if mode == "descent" else self._relaxed_loss(out, y, ce, mode) - ce

    def end_of_epoch(self, epoch: int) -> None:
        self.history.append({"epoch": self.epochs_done + 1, **self._counts})
        self._counts = dict.fromkeys(self.MODES, 0)
        self.epochs_done += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.history = list(state["history"])


def train_relaxloss(ctx: DefenseContext) -> None:
    """The plain recipe with RelaxLoss's loss."""
    relax = RelaxLoss(ctx.config.relax_alpha, ctx.members.num_classes)
    ctx.fit("train", ctx.config.train_config(), [relax], relax.loss_fn)
    ctx.results["relaxloss"] = relax.history
