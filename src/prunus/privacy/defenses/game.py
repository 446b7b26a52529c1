"""The min-max game of Nasr, Shokri & Houmansadr (CCS 2018): an inference model against the classifier.

Both the game and RelaxLoss act on each training batch's loss, through :class:`BatchLossHook`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.data.datasets import ArrayDataset
from prunus.errors import ConfigError
from prunus.hooks import TrainingHook
from prunus.privacy.defenses.context import DefenseContext
from prunus.privacy.splits import subset
from prunus.train.distributed import Distributed


class InferenceModel(nn.Module):
    """Nasr et al.'s inference model h(f(x), y) -> membership logit.

    Two branches as in the paper, one for the prediction and one for the one-hot label,
    combined by a small MLP.  The prediction enters as log-probabilities (clamped at
    ``-LOG_FLOOR``) plus the log-probability of the true label: the same information as the
    softmax vector, but an overfit model's members and non-members differ in confidences
    like 0.9996 vs 0.996, which an MLP on raw probabilities hardly sees and one on log
    scale does (that is what the loss attack uses).
    """

    LOG_FLOOR = 20.0

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.pred = nn.Sequential(nn.Linear(num_classes + 1, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden),
                                  nn.ReLU())
        self.label = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Membership logit from the classifier's ``logits`` (N, C) and integer ``labels`` (N,).

        In float32 whatever the classifier ran in: a bf16 log-softmax cannot tell 0.9996 from 0.996."""
        logp = torch.log_softmax(logits.float(), 1).clamp(min=-self.LOG_FLOOR) / self.LOG_FLOOR * 4
        logp_y = logp.gather(1, labels[:, None])
        onehot = F.one_hot(labels, self.num_classes).float()
        return self.head(torch.cat([self.pred(torch.cat([logp, logp_y], 1)), self.label(onehot)], 1)).squeeze(1)


class BatchLossHook(TrainingHook):
    """A hook whose penalty depends on the batch's outputs: pass it as a hook **and** its :meth:`loss_fn` as
    the Trainer's ``loss_fn``. The logged loss stays the cross-entropy; :meth:`take_batch` hands the
    training batch's (outputs, labels) to :meth:`penalty` once."""

    _captured: tuple[torch.Tensor, torch.Tensor] | None = None

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy; in a training step (gradients on) it also keeps (out, y) for :meth:`penalty`."""
        if torch.is_grad_enabled() and out.requires_grad:
            self._captured = (out, y)
        return F.cross_entropy(out, y, reduction=reduction)

    def take_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        captured, self._captured = self._captured, None
        return captured


class AdversarialRegularizer(BatchLossHook):
    """The min-max game as a :class:`~prunus.hooks.TrainingHook` (Nasr, Shokri & Houmansadr 2018).

    Pass it to a Trainer as a hook **and** its :meth:`loss_fn` as the Trainer's ``loss_fn``
    (that is how it sees the batch's outputs and labels). For every classifier batch after
    ``warmup_epochs`` epochs:

    1. ``attack_steps`` (k) steps train h to tell members (a random batch of the training
       set) from reference non-members (a random batch of ``reference``: the attacker pool,
       never the evaluation non-members), by binary cross-entropy on h(f(x), y),
       with f in eval mode and no gradient;
    2. the classifier's loss becomes ``CE + lam * mean_batch log h(f(x), y)``: the gain of h
       on the members of the batch, which the classifier minimises.

    ``history`` records per epoch the gain of h on its own batches,
    ``G = E_members log h + E_reference log(1 - h)`` (chance: ``2 log 1/2 = -1.386``), and its accuracy.
    """

    name = "advreg"

    def __init__(self, model: nn.Module, members: ArrayDataset, reference: ArrayDataset, *, lam: float = 1.0,
                 attack_steps: int = 1, warmup_epochs: int = 1, batch_size: int = 64, lr: float = 1e-3,
                 hidden: int = 64, seed: int = 0):
        if lam < 0 or not math.isfinite(lam):
            raise ConfigError(f"--adv-lambda must be a finite number >= 0, got {lam}")
        if attack_steps < 1:
            raise ConfigError(f"--attack-steps must be at least 1, got {attack_steps}")
        if warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be >= 0, got {warmup_epochs}")
        if len(reference) == 0:
            raise ConfigError("the min-max game needs reference non-members, but the attacker pool is empty")
        self.model, self.members, self.reference = model, members, reference
        self.lam, self.attack_steps, self.warmup_epochs, self.batch_size = lam, attack_steps, warmup_epochs, batch_size
        self.num_classes = members.num_classes
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[]):  # seeded h without disturbing the caller's global RNG
            torch.manual_seed(seed)
            self.h = InferenceModel(self.num_classes, hidden).to(device)
        self.h_optimizer = torch.optim.Adam(self.h.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.dist = Distributed()
        self.epochs_done = 0
        self.history: list[dict[str, float]] = []
        self._epoch_stats = [0.0, 0.0, 0]  # gain sum, accuracy sum, attack steps

    def setup(self, trainer: Any) -> None:
        self.dist = trainer.dist  # under torchrun every rank steps h on averaged gradients, so h stays one model

    @property
    def active(self) -> bool:
        return self.epochs_done >= self.warmup_epochs

    def _outputs(self, data: ArrayDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(data), (n,), generator=self.generator)
        device = next(self.model.parameters()).device
        x, y = data.images[idx].to(device), data.labels[idx].to(device)
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model(x)
        self.model.train(was)
        return out, y

    def attack_step(self) -> float:
        """One step of h on a members batch vs a reference batch; returns h's gain G on it."""
        pm, ym = self._outputs(self.members, self.batch_size)
        pr, yr = self._outputs(self.reference, self.batch_size)
        logits = self.h(torch.cat([pm, pr]), torch.cat([ym, yr]))
        target = torch.cat([torch.ones(len(pm)), torch.zeros(len(pr))]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.h_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.h)
        self.h_optimizer.step()
        with torch.no_grad():
            gain = float(F.logsigmoid(logits[: len(pm)]).mean() + F.logsigmoid(-logits[len(pm):]).mean())
            acc = float(((logits > 0).float() == target).float().mean())
        self._epoch_stats[0] += gain
        self._epoch_stats[1] += acc
        self._epoch_stats[2] += 1
        return gain

    def penalty(self) -> torch.Tensor | None:
        captured = self.take_batch()
        if captured is None or not self.active:
            return None
        for _ in range(self.attack_steps):
            self.attack_step()
        if self.lam == 0:  # h is trained and monitored, the classifier is not penalised
            return None
        out, y = captured
        for p in self.h.parameters():
            p.requires_grad_(False)
        try:
            gain = F.logsigmoid(self.h(out, y)).mean()
        finally:
            for p in self.h.parameters():
                p.requires_grad_(True)
        return self.lam * gain

    def end_of_epoch(self, epoch: int) -> None:
        steps = self._epoch_stats[2]
        self.history.append({
            "epoch": self.epochs_done + 1, "game": self.active,
            "h_gain": self._epoch_stats[0] / steps if steps else None,
            "h_accuracy": self._epoch_stats[1] / steps if steps else None, "attack_steps": steps,
        })
        self._epoch_stats = [0.0, 0.0, 0]
        self.epochs_done += 1

    @torch.no_grad()
    def gain(self, members: ArrayDataset, nonmembers: ArrayDataset) -> float:
        """h's gain ``E_members log h + E_nonmembers log(1 - h)`` on whole sets (for reports and tests)."""
        def mean_log(data, sign):
            out = _logits(self.model, data.images)
            return float(F.logsigmoid(sign * self.h(out, data.labels.to(out.device))).mean())
        return mean_log(members, 1.0) + mean_log(nonmembers, -1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"h": self.h.state_dict(), "h_optimizer": self.h_optimizer.state_dict(),
                "generator": self.generator.get_state(), "epochs_done": self.epochs_done, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h.load_state_dict(state["h"])
        self.h_optimizer.load_state_dict(state["h_optimizer"])
        self.generator.set_state(state["generator"])
        self.epochs_done = int(state["epochs_done"])
        self.history = list(state["history"])


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)])
    model.train(was)
    return out


def make_game(ctx: DefenseContext) -> AdversarialRegularizer:
    """The game of a run: reference non-members drawn (seeded) from the attacker pool."""
    config, split = ctx.config, ctx.split
    n = min(len(split.pool), config.adv_reference or len(split.members))
    # a seeded random draw: the pool is stored sorted, so its first n indices would not be a random sample
    draw = np.random.default_rng(config.seed + 31).choice(split.pool, size=n, replace=False)
    reference = subset(ctx.train_set, np.sort(draw), "pool")
    return AdversarialRegularizer(ctx.model, ctx.members, reference, lam=config.adv_lambda,
                                  attack_steps=config.attack_steps, warmup_epochs=config.warmup_epochs,
                                  batch_size=config.adv_batch_size, lr=config.adv_lr, seed=config.seed)


def train_advreg(ctx: DefenseContext) -> None:
    """Adversarial regularization: the plain recipe with the game's gain added to every batch's loss."""
    game = make_game(ctx)
    ctx.fit("train", ctx.config.train_config(), [game], game.loss_fn)
    ctx.results["game"] = game.history
