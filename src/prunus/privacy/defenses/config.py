"""What decides a defended training run (``prunus defend``): one dataclass, saved in ``results.json``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prunus.errors import ConfigError
from prunus.jobs.prune import PruneConfig
from prunus.train.config import TrainConfig

DEFENSES = ("none", "prune", "advreg", "mcmia", "dpsgd", "relaxloss")
PRUNE_RECIPES = ("paper", "budget")


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
    # how every phase's forward pass runs (see TrainConfig): bf16 autocast and NHWC make a CNN's CPU step 2.0-2.4x
    # faster (benchmarks/bcnn_training_speed.py); DP-SGD refuses bf16 (see validate)
    precision: str = "fp32"
    channels_last: bool = False
    # the min-max game (advreg, mcmia)
    adv_lambda: float = 1.0
    attack_steps: int = 1
    warmup_epochs: int = 2
    adv_lr: float = 1e-3
    adv_batch_size: int = 64
    # pool examples used as the game's reference non-members (default: as many as members)
    adv_reference: int | None = None
    # pruning (prune, mcmia)
    method: str = "slr"
    compression: float | None = None
    ratio: float | None = None
    structure: str = "unstructured"
    global_: bool = False
    prune_epochs: int = 10
    retrain_epochs: int = 3
    retrain_lr: float | None = None
    # the masked fine-tuning's lr schedule: constant (prunus prune's default) or, for a model with BatchNorm, one
    # that ends at lr 0 (cosine-step): at a constant lr its last epoch's weights and running statistics disagree
    retrain_schedule: str = "constant"
    # SLR/ADMM's schedule: "paper" (Wang et al.'s: fixed rho, a round per epoch, the penalty on every entry; what the
    # privacy benchmark measured first) or "budget" (prunus prune's: rho grown so the weights reach the set by the
    # last round, rounds every 100 batches or closer, the penalty on the removed entries)
    prune_recipe: str = "paper"
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
        if self.defense == "dpsgd" and self.precision != "fp32":
            raise ConfigError(f"--precision {self.precision} does not go with --defense dpsgd: opacus would clip "
                              "per-sample gradients computed in bfloat16, and epsilon rests on exact clipping; "
                              "use --precision fp32")
        if self.defense == "relaxloss" and not (math.isfinite(self.relax_alpha) and self.relax_alpha > 0):
            raise ConfigError(f"--relax-alpha must be a positive number, got {self.relax_alpha}")
        if self.eval_examples is not None and self.eval_examples < 1:
            raise ConfigError(f"--eval-examples must be at least 1, got {self.eval_examples}")
        if self.defense in ("advreg", "mcmia"):
            if not (math.isfinite(self.adv_lambda) and self.adv_lambda >= 0):
                raise ConfigError(f"--adv-lambda must be a finite number >= 0, got {self.adv_lambda}")
            if not (math.isfinite(self.adv_lr) and self.adv_lr > 0):
                raise ConfigError(f"--adv-lr must be a positive number, got {self.adv_lr}")
            if self.warmup_epochs < 0:
                raise ConfigError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.defense in ("prune", "mcmia"):
            if self.prune_recipe not in PRUNE_RECIPES:
                raise ConfigError(f"--prune-recipe must be one of {', '.join(PRUNE_RECIPES)}, "
                                  f"got {self.prune_recipe!r}")
            self.prune_config()  # the pruning recipe's numbers and method options, before any writing
        if self.adv_reference is not None and self.adv_reference < 1:
            raise ConfigError(f"--adv-reference must be at least 1, got {self.adv_reference}")
        self.train_config().validate()
        return self

    def train_config(self, epochs: int | None = None, lr: float | None = None, schedule: str | None = None):
        return TrainConfig(model=self.model, dataset=self.dataset,
                           epochs=max(epochs if epochs is not None else self.epochs, 1),
                           batch_size=self.batch_size, optimizer=self.optimizer, lr=lr if lr is not None else self.lr,
                           weight_decay=self.weight_decay, schedule=schedule or self.schedule, seed=self.seed,
                           augment=False, model_options=dict(self.model_options), precision=self.precision,
                           channels_last=self.channels_last)

    def prune_config(self):
        """The pruning recipe (``prune_recipe``); the fine-tuning runs at ``retrain_lr``, by default the pruning lr."""
        paper = self.prune_recipe == "paper"
        options = ({"penalize": "all", **self.method_options} if paper and self.method in ("slr", "admm")
                   else dict(self.method_options))
        every = self.update_every if self.update_every is not None else (0 if paper else None)  # 0: once per epoch
        return PruneConfig(method=self.method, epochs=self.prune_epochs, retrain_epochs=self.retrain_epochs,
                           batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           retrain_lr=self.retrain_lr if self.retrain_lr is not None else self.lr,
                           retrain_schedule=self.retrain_schedule, seed=self.seed, update_every=every,
                           rho_schedule="fixed" if paper else "budget", options=options, precision=self.precision,
                           channels_last=self.channels_last).validate()
