"""DP-SGD (Abadi et al. 2016) on the reference Trainer, with opacus' per-sample gradients and accountants.

:class:`DPSGD` is a :class:`~prunus.hooks.TrainingHook`: when a Trainer is built it wraps the
model in opacus' ``GradSampleModule``, the optimizer in ``DPOptimizer`` (per-sample clipping to
``max_grad_norm``, Gaussian noise), and replaces the batches with Poisson sampling
(:class:`~prunus.data.loader.PoissonBatches`), the sampling the accountant assumes. The noise is
calibrated so that the run's planned steps reach ``(epsilon, delta)``. Progress, metrics and
checkpoints are the Trainer's; each epoch's record holds the epsilon spent so far, and the
accountant's history is checkpointed with the hook.

A Poisson step that draws no example is skipped (probability ``(1 - q)^N``, about ``e^-B`` for an
expected batch of B): the accountant counts the steps taken (``steps_taken``), the noise was
calibrated for all planned steps (``steps``), so the epsilon reported is what was spent.
"""

from __future__ import annotations

import warnings
from typing import Any

from prunus._optional import require
from prunus.data.loader import PoissonBatches
from prunus.errors import ConfigError
from prunus.hooks import TrainingHook
from prunus.privacy.defenses.context import DefenseContext


class DPSGD(TrainingHook):
    """Make a Trainer's run differentially private: (epsilon, delta) over ``epochs`` epochs of its members."""

    name = "dpsgd"

    def __init__(self, epsilon: float, delta: float, max_grad_norm: float = 1.0, accountant: str = "prv"):
        require("opacus", "DP-SGD (--defense dpsgd)")
        self.epsilon, self.delta, self.max_grad_norm, self.accountant_name = epsilon, delta, max_grad_norm, accountant
        self.epoch = -1

    def setup(self, trainer) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        if trainer.dist.enabled:
            raise ConfigError("DP-SGD runs in one process (per-sample gradients are not split across ranks here)")
        config = trainer.config
        if config.compile:
            raise ConfigError("DP-SGD cannot be compiled (opacus computes per-sample gradients in module hooks); "
                              "drop --compile")
        self.epochs = config.epochs
        self.sample_rate = min(1.0, config.batch_size / len(trainer.train_set.labels))  # a batch above N: every example
        trainer.batches = PoissonBatches(trainer.train_set, self.sample_rate, seed=config.seed)
        self.steps = len(trainer.batches) * config.epochs
        try:
            self.noise_multiplier = get_noise_multiplier(
                target_epsilon=self.epsilon, target_delta=self.delta, sample_rate=self.sample_rate, steps=self.steps,
                accountant=self.accountant_name)
        except MemoryError:  # the PRV accountant's grid grows with epsilon (epsilon 1000: a 30 GiB array)
            raise ConfigError(f"the {self.accountant_name.upper()} accountant ran out of memory calibrating the noise "
                              f"for --epsilon {self.epsilon:g}; use --accountant rdp for very large epsilons") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # opacus warns about full backward hooks and secure RNG
            trainer.net = GradSampleModule(trainer.model)
        trainer.optimizer = DPOptimizer(trainer.optimizer, noise_multiplier=self.noise_multiplier,
                                        max_grad_norm=self.max_grad_norm, expected_batch_size=config.batch_size)
        self.accountant = create_accountant(self.accountant_name)
        trainer.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        self.net = trainer.net

    def end_of_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_metrics(self) -> dict[str, Any]:
        spent, by = self.spent(last=self.epoch + 1 == self.epochs)
        return {"epsilon": spent, "epsilon_accountant": by}

    def spent(self, last: bool = True) -> tuple[float, str]:
        """The privacy spent so far, and by which accountant.

        The run's own accountant at the end; before it, an RDP bound from the same history. PRV's
        epsilon costs 1-2 s of CPU per call at epsilon 64 (longer than a GPU epoch), RDP's a few
        ms; RDP's conversion is an upper bound, so the progress never shows less privacy loss than
        was spent.
        """
        from opacus.accountants import RDPAccountant

        if last or self.accountant.mechanism() == "rdp":
            return float(self.accountant.get_epsilon(self.delta)), self.accountant.mechanism()
        bound = RDPAccountant()
        bound.history = list(self.accountant.history)
        return float(bound.get_epsilon(self.delta)), "rdp"

    def close(self) -> None:
        """Remove opacus' hooks from the model: it is a plain module again."""
        self.net._close()

    def summary(self) -> dict[str, Any]:
        return {"epsilon": self.spent(last=True)[0], "delta": self.delta, "target_epsilon": self.epsilon,
                "accountant": self.accountant_name, "noise_multiplier": float(self.noise_multiplier),
                "max_grad_norm": self.max_grad_norm, "sample_rate": self.sample_rate, "steps": self.steps,
                "steps_taken": int(sum(h[2] for h in self.accountant.history)),
                "epochs": self.epochs}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.accountant.history], "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.history = [tuple(h) for h in state["history"]]
        self.epoch = int(state["epoch"])


def train_dp(ctx: DefenseContext) -> None:
    """DP-SGD on the members with the plain recipe; a model with BatchNorm gets GroupNorm (opacus' fix).

    BatchNorm mixes the examples of a batch, so it is replaced by ``GroupNorm(gcd(32, C), C)``
    (``ModuleValidator.fix``); the checkpoints record ``model.norm = "groupnorm"`` so
    ``prunus eval`` rebuilds the same model.
    """
    from opacus.validators import ModuleValidator

    config = ctx.config
    dp = DPSGD(config.epsilon, config.delta, config.max_grad_norm, config.accountant)
    groupnorm = bool(ModuleValidator.validate(ctx.model, strict=False))
    if groupnorm:
        ctx.model = ModuleValidator.fix(ctx.model).to(ctx.device)
        errors = ModuleValidator.validate(ctx.model, strict=False)
        if errors:
            raise ConfigError(f"model {type(ctx.model).__name__} cannot be trained with DP-SGD: {errors[0]}")
        ctx.meta = {**ctx.meta, "model": {**ctx.meta["model"], "norm": "groupnorm"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about secure RNG on every step
        history = ctx.fit("train", config.train_config(), [dp])
    dp.close()
    ctx.results["dp"] = ctx.extra_meta["dp"] = {**dp.summary(), "groupnorm": groupnorm, "history": history}
