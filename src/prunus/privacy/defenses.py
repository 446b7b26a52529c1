"""Defenses against membership inference: pruning, the min-max game, MCMIA, DP-SGD.

Every defense trains on the *members* of a :class:`~prunus.privacy.splits.MembershipSplit`
only, with the reference :class:`~prunus.train.trainer.Trainer` (DP-SGD excepted: it needs
per-sample gradients and has its own small loop), and ends in a normal prunus
checkpoint ``RUN_DIR/final`` that ``prunus eval`` and ``prunus audit`` load.  The
checkpoint records the split (state section ``membership_split``) and, under
``meta["privacy"]``, the defense and the plain training recipe that ``prunus audit``
trains its shadow and reference models with (a non-adaptive attacker: the reference
models are trained like the undefended target).

* ``none``: the undefended target (trained on the members; it overfits as it will).
* ``prune``: any prunus method (SLR, ADMM, magnitude, ...) on the members, hard-prune,
  masked fine-tuning (the steps of :func:`prunus.jobs.prune.run_pruning`, restricted to members).
* ``advreg``: adversarial regularization, the min-max game of Nasr, Shokri & Houmansadr
  (CCS 2018), :class:`AdversarialRegularizer`.
* ``mcmia``: MCMIA (Wang et al., IJCAI 2021): SLR/ADMM pruning and the min-max game in one
  training run (both are hooks of one Trainer), then hard-prune and masked fine-tuning
  with the game still on.
* ``dpsgd``: DP-SGD with opacus (:func:`train_dpsgd`), reporting the (epsilon, delta) reached.
* ``relaxloss``: RelaxLoss (Chen, Yu & Fritz, ICLR 2022), :class:`RelaxLoss`: the training loss is
  held near a level alpha instead of driven to zero, so members' losses look like non-members'.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, TensorDataset

from prunus._optional import require
from prunus.data import load_dataset
from prunus.data.datasets import ArrayDataset
from prunus.environment import environment_info
from prunus.errors import ConfigError
from prunus.harden.keepers import MaskKeeper
from prunus.harden.stats import CompressionReport
from prunus.hooks import TrainingHook
from prunus.io import save_checkpoint, write_json_atomic
from prunus.jobs.common import couple_if_possible, fixed_batch
from prunus.jobs.prune import PruneConfig, make_method
from prunus.methods import batch_closure
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan, ratio_for_compression
from prunus.privacy.splits import SECTION, MembershipSplit, SplitRecord, make_split, split_of_checkpoint, subset
from prunus.train.config import TrainConfig, lr_factor, make_optimizer
from prunus.train.distributed import pick_device
from prunus.train.run import model_record
from prunus.train.rundir import check_run_dir, create_run_dir
from prunus.train.trainer import Trainer, evaluate

DEFENSES = ("none", "prune", "advreg", "mcmia", "dpsgd", "relaxloss")


# -- the min-max game ---------------------------------------------------------------------------


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
        self.pred = nn.Sequential(nn.Linear(num_classes + 1, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.label = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Membership logit from the classifier's ``logits`` (N, C) and integer ``labels`` (N,)."""
        logp = torch.log_softmax(logits, 1).clamp(min=-self.LOG_FLOOR) / self.LOG_FLOOR * 4
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
        self.epochs_done = 0
        self.history: list[dict[str, float]] = []
        self._epoch_stats = [0.0, 0.0, 0]  # gain sum, accuracy sum, attack steps

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


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)])
    model.train(was)
    return out


# -- configuration ---------------------------------------------------------------------------------


@dataclass
class DefenseConfig:
    """A defended training run (``prunus defend``); saved in ``results.json``."""

    defense: str = "none"
    model: str = "lenet5"
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"width": 0.25} (VGG, MobileNetV2)
    dataset: str = "fashion-mnist"
    members: int = 10000
    split_seed: int = 0
    # training of the target (the dense / undefended recipe, also what audits train reference models with)
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    eval_examples: int | None = None  # per-epoch test accuracy on the first N test images (final: the whole test set)
    # the min-max game (advreg, mcmia)
    adv_lambda: float = 1.0
    attack_steps: int = 1
    warmup_epochs: int = 2
    adv_lr: float = 1e-3
    adv_batch_size: int = 64
    adv_reference: int | None = None  # pool examples used as the game's reference non-members (default: as many as members)
    # pruning (prune, mcmia)
    method: str = "slr"
    compression: float | None = None
    ratio: float | None = None
    structure: str = "unstructured"
    global_: bool = False
    prune_epochs: int = 10
    retrain_epochs: int = 3
    retrain_lr: float | None = None
    update_every: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    # DP-SGD
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    # RelaxLoss
    relax_alpha: float = 0.5

    def validate(self) -> "DefenseConfig":
        if self.defense not in DEFENSES:
            raise ConfigError(f"--defense must be one of {', '.join(DEFENSES)}, got {self.defense!r}")
        if self.defense in ("prune", "mcmia"):
            if (self.compression is None) == (self.ratio is None):
                raise ConfigError(f"--defense {self.defense} needs exactly one of --compression X or --ratio R")
            if self.prune_epochs < 1 and self.method not in ("magnitude",):
                raise ConfigError(f"--prune-epochs must be at least 1 for --method {self.method}")
            if self.retrain_epochs < 0:
                raise ConfigError(f"--retrain-epochs must be >= 0, got {self.retrain_epochs}")
        if self.defense == "mcmia" and self.method not in ("slr", "admm"):
            raise ConfigError(f"--defense mcmia prunes with --method slr or admm, got {self.method!r}")
        if self.defense == "dpsgd":
            if not (math.isfinite(self.epsilon) and self.epsilon > 0):
                raise ConfigError(f"--epsilon must be a positive number, got {self.epsilon}")
            if not 0 < self.delta < 1:
                raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
            if self.max_grad_norm <= 0:
                raise ConfigError(f"--max-grad-norm must be positive, got {self.max_grad_norm}")
            if self.accountant not in ("prv", "rdp", "gdp"):
                raise ConfigError(f"--accountant must be prv, rdp or gdp, got {self.accountant!r}")
        if self.defense == "relaxloss" and not (math.isfinite(self.relax_alpha) and self.relax_alpha > 0):
            raise ConfigError(f"--relax-alpha must be a positive number, got {self.relax_alpha}")
        if self.eval_examples is not None and self.eval_examples < 1:
            raise ConfigError(f"--eval-examples must be at least 1, got {self.eval_examples}")
        if self.adv_reference is not None and self.adv_reference < 1:
            raise ConfigError(f"--adv-reference must be at least 1, got {self.adv_reference}")
        self.train_config().validate()
        return self

    def train_config(self, epochs: int | None = None, lr: float | None = None, schedule: str | None = None):
        return TrainConfig(model=self.model, dataset=self.dataset, epochs=max(epochs if epochs is not None else self.epochs, 1),
                           batch_size=self.batch_size, optimizer=self.optimizer, lr=lr if lr is not None else self.lr,
                           weight_decay=self.weight_decay, schedule=schedule or self.schedule, seed=self.seed,
                           augment=False, model_options=dict(self.model_options))

    def prune_config(self):
        # the pruning recipe the privacy benchmark was measured with: SLR/ADMM round once per epoch (0), fixed rho,
        # the textbook penalty on every entry; the retrain-free defaults of prunus prune are not measured here yet
        options = {"penalize": "all", **self.method_options} if self.method in ("slr", "admm") else dict(self.method_options)
        return PruneConfig(method=self.method, epochs=self.prune_epochs, retrain_epochs=self.retrain_epochs,
                           batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr, retrain_lr=self.retrain_lr,
                           seed=self.seed, update_every=self.update_every if self.update_every is not None else 0,
                           rho_schedule="fixed", options=options).validate()


# -- the runs --------------------------------------------------------------------------------------


def _game(config: DefenseConfig, model, members: ArrayDataset, split: MembershipSplit, train_set: ArrayDataset,
          warmup: int) -> AdversarialRegularizer:
    n = min(len(split.pool), config.adv_reference or len(split.members))
    if n == 0:
        raise ConfigError("the min-max game needs reference non-members from the attacker pool, which is empty; "
                          "use fewer --members")
    # a seeded random draw: the pool is stored sorted, so its first n indices would not be a random sample
    draw = np.random.default_rng(config.seed + 31).choice(split.pool, size=n, replace=False)
    reference = subset(train_set, np.sort(draw), "pool")
    return AdversarialRegularizer(model, members, reference, lam=config.adv_lambda, attack_steps=config.attack_steps,
                                  warmup_epochs=warmup, batch_size=config.adv_batch_size, lr=config.adv_lr,
                                  seed=config.seed)


def run_defense(
    config: DefenseConfig,
    run_dir: str | Path,
    *,
    init: str | Path | None = None,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train a defended model on the members of a membership split; writes ``RUN_DIR/final`` and ``results.json``.

    With ``init`` (a checkpoint written by a previous ``run_defense``, e.g. the undefended
    target) the architecture, the split and the recipe are taken from there; pruning and MCMIA
    start from its weights, the other defenses train a freshly initialised model (DP-SGD must:
    the init's weights have seen the members without noise). Without it a fresh split is drawn (``config.members``,
    ``config.split_seed``) and, for pruning and MCMIA, a dense model is first trained on the
    members into ``RUN_DIR/dense``.
    """

    config.validate()
    console = console or Console()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=False)
    dev = pick_device(device)

    if init is not None:
        model, ckpt = load_defended(init)
        split = split_of_checkpoint(ckpt)
        dataset = ckpt.meta.get("dataset", {})
        recipe = (ckpt.meta.get("privacy") or {}).get("reference_training")
        for flag, given, recorded in (("--model", config.model, ckpt.meta["model"]["name"]),
                                      ("--dataset", config.dataset, dataset.get("name"))):
            if given != recorded:
                raise ConfigError(f"{flag} {given} does not match --init {init}, which holds {recorded}")
        train_set = load_dataset(dataset["name"], "train", data_dir=data_dir, download=download,
                                 image_size=dataset.get("image_size"))
        test_set = load_dataset(dataset["name"], "test", data_dir=data_dir, download=download,
                                image_size=dataset.get("image_size"))
        meta = {"model": ckpt.meta["model"], "dataset": dataset, "init": str(ckpt.path)}
        if config.defense in ("none", "advreg", "dpsgd", "relaxloss"):
            # only pruning starts from the init's weights: they have seen the members without the defense
            # (a DP guarantee would not hold for them), so the other defenses train a fresh model
            record = ckpt.meta["model"]
            if "layers" in record:
                raise ConfigError(f"--init {init}: a physically pruned model cannot be retrained from scratch here")
            torch.manual_seed(config.seed)
            model = build_model(record["name"], in_channels=record["in_channels"], num_classes=record["num_classes"],
                                **record.get("options", {}))
    else:
        train_set = load_dataset(config.dataset, "train", data_dir=data_dir, download=download)
        test_set = load_dataset(config.dataset, "test", data_dir=data_dir, download=download)
        split = make_split(config.dataset, len(train_set), config.members, config.split_seed)
        torch.manual_seed(config.seed)
        model = build_model(config.model, in_channels=train_set.in_channels, num_classes=train_set.num_classes,
                            **config.model_options)
        tc = config.train_config()
        meta = {"model": model_record(tc, train_set.in_channels, train_set.num_classes),
                "dataset": {"name": config.dataset, "image_size": train_set.image_size}}
        recipe = None
    split.check_dataset(train_set)
    members = split.subset(train_set, "members")
    recipe = recipe or dataclasses.asdict(config.train_config())
    plan = None
    if config.defense in ("prune", "mcmia"):
        ratio = config.ratio if config.ratio is not None else ratio_for_compression(config.compression)
        plan = Plan.uniform(model, ratio, config.structure, global_unstructured=config.global_)
        plan = couple_if_possible(model, plan, train_set.images[:2], console)  # validated before anything is written
    if config.defense == "dpsgd":

        require("opacus", "DP-SGD (--defense dpsgd)")
        if config.delta >= 1 / len(members):
            raise ConfigError(f"--delta {config.delta:g} must be below 1/members = {1 / len(members):.3g}, "
                              "else the guarantee allows leaking a whole example")
    if config.defense in ("advreg", "mcmia") and len(split.pool) == 0:
        raise ConfigError("the min-max game needs reference non-members from the attacker pool, which is empty; "
                          "use fewer --members")

    create_run_dir(run_dir)
    model.to(dev)
    record = SplitRecord(split)
    write_json_atomic(run_dir / "config.json", {"defense": dataclasses.asdict(config), "init": str(init) if init else None,
                                               "split": split.summary()})
    results: dict[str, Any] = {"config": dataclasses.asdict(config), "split": split.summary(),
                               "init": str(init) if init else None, "device": str(dev),
                               "environment": environment_info()}
    t0 = time.perf_counter()
    extra_meta: dict[str, Any] = {}

    eval_set = test_set
    if config.eval_examples is not None and config.eval_examples < len(test_set):
        eval_set = subset(test_set, torch.arange(config.eval_examples).numpy(), "test")

    def trainer(directory: str, tcfg, hooks: list, loss_fn=F.cross_entropy) -> Trainer:
        return Trainer(model, members, eval_set, tcfg, run_dir / directory, device=dev, hooks=[*hooks, record],
                       loss_fn=loss_fn, meta=meta, console=console)

    if config.defense in ("prune", "mcmia") and init is None:
        console.print(f"training the dense model on {len(members)} members first ({run_dir / 'dense'})")
        trainer("dense", config.train_config(), []).fit()
        results["dense_accuracy"] = evaluate(model, test_set, device=dev)["accuracy"]

    if config.defense == "none":
        trainer("train", config.train_config(), []).fit()
    elif config.defense == "advreg":
        game = _game(config, model, members, split, train_set, config.warmup_epochs)
        trainer("train", config.train_config(), [game], game.loss_fn).fit()
        results["game"] = game.history
    elif config.defense == "relaxloss":
        relax = RelaxLoss(config.relax_alpha, members.num_classes)
        trainer("train", config.train_config(), [relax], relax.loss_fn).fit()
        results["relaxloss"] = relax.history
    elif config.defense in ("prune", "mcmia"):
        results.update(_prune(config, model, members, eval_set, train_set, split, plan, trainer, dev, console))
        extra_meta["pruning"] = {"plan": plan.to_dict(), "method": config.method}
    elif config.defense == "dpsgd":
        dp = train_dpsgd(model, members, eval_set, config.train_config(), run_dir / "train", epsilon=config.epsilon,
                         delta=config.delta, max_grad_norm=config.max_grad_norm, accountant=config.accountant,
                         device=dev, meta=meta, split=split, console=console)
        model = dp.pop("model")
        results["dp"] = dp
        extra_meta["dp"] = dp
        if dp["groupnorm"]:
            meta = {**meta, "model": {**meta["model"], "norm": "groupnorm"}}
    results["seconds"] = time.perf_counter() - t0

    results["test_accuracy"] = evaluate(model, test_set, device=dev)["accuracy"]
    results["member_accuracy"] = evaluate(model, members, device=dev)["accuracy"]
    results["nonmember_accuracy"] = evaluate(model, split.subset(train_set, "nonmembers"), device=dev)["accuracy"]
    privacy_meta = {"defense": config.defense, "split": split.summary(), "reference_training": recipe,
                    "results": {k: results[k] for k in ("test_accuracy", "member_accuracy", "nonmember_accuracy")},
                    **extra_meta}
    save_checkpoint(run_dir / "final", model.state_dict(), {SECTION: split.state_dict()},
                    {**meta, "epoch": -1, "privacy": privacy_meta})
    write_json_atomic(run_dir / "results.json", results)
    console.print(
        f"{config.defense}: test accuracy {results['test_accuracy']:.2f}%, members {results['member_accuracy']:.2f}%, "
        f"non-members {results['nonmember_accuracy']:.2f}%; checkpoint {run_dir / 'final'}", soft_wrap=True)
    return results


def _prune(config: DefenseConfig, model, members, test_set, train_set, split, plan, trainer, dev, console) -> dict[str, Any]:
    """Pruning (and for MCMIA the game) on the members, hard-prune, masked fine-tuning (with the game for MCMIA)."""

    pcfg = config.prune_config()
    out: dict[str, Any] = {}
    torch.manual_seed(config.seed)
    x, y = fixed_batch(members, pcfg.closure_samples, config.seed)
    method = make_method(pcfg, model, plan, batch_closure(model, x.to(dev), y.to(dev), F.cross_entropy))
    game = _game(config, model, members, split, train_set, config.warmup_epochs) if config.defense == "mcmia" else None
    hooks = [method] + ([game] if game else [])
    loss_fn = game.loss_fn if game else F.cross_entropy
    if pcfg.epochs > 0:
        trainer("prune", pcfg.train_config(pcfg.epochs, pcfg.lr, pcfg.schedule), hooks, loss_fn).fit()
    out["method_history"] = method.history
    masks = method.hard_prune()
    out["hard_pruned_accuracy"] = evaluate(model, test_set, device=dev)["accuracy"]
    console.print(f"hard-pruned ({config.method}): test accuracy {out['hard_pruned_accuracy']:.2f}%")
    keeper = MaskKeeper(model, masks)
    if pcfg.retrain_epochs > 0:
        hooks = [keeper] + ([game] if game else [])
        history = trainer("retrain", pcfg.train_config(pcfg.retrain_epochs, pcfg.retrain_lr or pcfg.lr,
                                                       pcfg.retrain_schedule), hooks, loss_fn).fit()
        out["retrain_accuracy"] = [h["test_accuracy"] for h in history]
    keeper.remove()
    if game is not None:
        out["game"] = game.history
    out["report"] = CompressionReport.of(model, plan, members.images[:64].to(dev)).to_dict()
    return out


# -- DP-SGD --------------------------------------------------------------------------------------------


def train_dpsgd(model: nn.Module, members: ArrayDataset, test_set: ArrayDataset, tcfg, run_dir: str | Path, *,
                epsilon: float, delta: float, max_grad_norm: float = 1.0, accountant: str = "prv",
                device: torch.device | str = "cpu", meta: dict[str, Any] | None = None,
                split: MembershipSplit | None = None, console: Console | None = None) -> dict[str, Any]:
    """DP-SGD (Abadi et al. 2016) with opacus: per-sample clipping to ``max_grad_norm``, Gaussian noise
    calibrated so that ``tcfg.epochs`` epochs of Poisson-sampled batches (expected size ``tcfg.batch_size``)
    reach ``(epsilon, delta)``.

    BatchNorm mixes examples of a batch, so it is replaced with GroupNorm (opacus'
    ``ModuleValidator.fix``: ``GroupNorm(gcd(32, C), C)``) when the model has any; the result
    says so (``groupnorm``) and the checkpoint records ``model.norm = "groupnorm"``.
    Writes ``run_dir/metrics.jsonl`` and ``run_dir/checkpoints/epoch-NNNN`` (the last one kept).
    Returns the trained (unwrapped) ``model`` and the privacy spent: ``epsilon`` as computed by
    the accountant after training, ``delta``, the noise multiplier, the sample rate and steps.
    """



    require("opacus", "DP-SGD (--defense dpsgd)")
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    console = console or Console()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    groupnorm = bool(ModuleValidator.validate(model, strict=False))
    if groupnorm:
        model = ModuleValidator.fix(model)
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(f"model {type(model).__name__} cannot be trained with DP-SGD: {errors[0]}")
    model.to(device)
    torch.manual_seed(tcfg.seed)
    optimizer = make_optimizer(model.parameters(), tcfg)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    loader = DataLoader(TensorDataset(members.images, members.labels), batch_size=tcfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(tcfg.seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about secure RNG and full backward hooks
        engine = PrivacyEngine(accountant=accountant)
        try:
            dp_model, optimizer, loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
                epochs=tcfg.epochs, max_grad_norm=max_grad_norm)
        except MemoryError:  # the PRV accountant's grid grows with epsilon (epsilon 1000: a 30 GiB array)
            raise ConfigError(f"the {accountant.upper()} accountant ran out of memory calibrating the noise for "
                              f"--epsilon {epsilon:g}; use --accountant rdp for very large epsilons") from None
    history: list[dict[str, Any]] = []
    steps = 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True)
    with progress, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = progress.add_task("DP-SGD", total=tcfg.epochs * len(loader))
        for epoch in range(tcfg.epochs):
            t0 = time.perf_counter()
            factor = lr_factor(tcfg.schedule, epoch, tcfg.epochs)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            dp_model.train()
            loss_sum = correct = count = 0.0
            for x, y in loader:
                progress.update(task, advance=1)
                if len(y) == 0:  # Poisson sampling can draw an empty batch
                    continue
                x, y = x.to(device), y.to(device)
                out = dp_model(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += float((out.argmax(1) == y).sum())
                count += len(y)
                progress.update(task, description=f"DP-SGD epoch {epoch + 1}/{tcfg.epochs} loss {loss_sum / count:.4f}")
            test = evaluate(model, test_set, device=device)
            spent, spent_by = epsilon_so_far(engine, delta, last=epoch + 1 == tcfg.epochs)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1),
                      "train_accuracy": 100 * correct / max(count, 1), "test_loss": test["loss"],
                      "test_accuracy": test["accuracy"], "lr": tcfg.lr * factor, "epsilon": spent,
                      "epsilon_accountant": spent_by, "epoch_seconds": time.perf_counter() - t0}
            history.append(record)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            states = {SECTION: split.state_dict()} if split is not None else {}
            ck_meta = {**(meta or {}), "epoch": epoch, "config": dataclasses.asdict(tcfg), "metrics": record,
                       "history": history}
            if groupnorm:
                ck_meta["model"] = {**ck_meta.get("model", {}), "norm": "groupnorm"}
            path = save_checkpoint(run_dir / "checkpoints" / f"epoch-{epoch + 1:04d}", model.state_dict(), states, ck_meta)
            for old in sorted(p for p in path.parent.glob("epoch-*") if p.is_dir())[:-1]:

                shutil.rmtree(old, ignore_errors=True)
            console.print(f"epoch {epoch + 1:>3}/{tcfg.epochs}  train loss {record['train_loss']:.4f}  test acc "
                          f"{test['accuracy']:.2f}%  epsilon {spent:.3f} (delta {delta:g}, {spent_by.upper()})",
                          soft_wrap=True)
    dp_model._close()  # remove opacus' hooks; ``model`` is a plain module again
    eps = history[-1]["epsilon"] if history else float(engine.get_epsilon(delta))  # the last epoch's, by the run's accountant
    return {"model": model, "epsilon": eps, "delta": delta, "target_epsilon": epsilon, "accountant": accountant,
            "noise_multiplier": float(optimizer.noise_multiplier), "max_grad_norm": max_grad_norm,
            "sample_rate": float(getattr(loader, "sample_rate", 1 / len(loader))), "steps": steps, "epochs": tcfg.epochs, "groupnorm": groupnorm,
            "history": history}


def epsilon_so_far(engine, delta: float, last: bool) -> tuple[float, str]:
    """The privacy spent so far, and by which accountant.

    The run's own accountant after the last epoch; before it, an RDP bound from the same history.
    PRV's epsilon costs 1-2 s of CPU per call at epsilon 64 (longer than a GPU epoch), RDP's a few ms;
    RDP's conversion is an upper bound, so the progress never shows less privacy loss than was spent."""
    from opacus.accountants import RDPAccountant

    if last or engine.accountant.mechanism() == "rdp":
        return float(engine.get_epsilon(delta)), engine.accountant.mechanism()
    bound = RDPAccountant()
    bound.history = list(engine.accountant.history)
    return float(bound.get_epsilon(delta)), "rdp"


def load_defended(path: str | Path):
    """Load a defended run's final model (``RUN/final``) or any checkpoint, DP-SGD GroupNorm models included."""

    path = Path(path)
    if (path / "final").is_dir() and not (path / "meta.json").exists():
        path = path / "final"
    return load_model(path)
