"""What decides a training run: the config, the optimizers and learning-rate schedules it names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from prunus.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")


#: cosine: one lr per epoch (its last epoch steps at 0.5 (1 + cos(pi (E-1) / E)) of the lr: 9.5% for E = 5);
#: cosine-step: the same curve per optimizer step (the last step at (pi / (2 T))^2 of the lr, T steps in all)
SCHEDULES = ("cosine", "cosine-step", "step", "constant")
#: fp32, or bf16 autocast of the forward pass (CPU with AVX-512 BF16: 1.4-2.9x faster BCNN steps,
#: benchmarks/bcnn_training_speed.py); weights, optimizer and evaluation stay float32
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as ``config.json`` in the run directory."""

    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    image_size: int | None = None
    augment: bool | None = None  # None: the dataset's default (crop + flip for 32x32 sets)
    model_options: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1000
    keep_checkpoints: int = 2
    #: NHWC tensors for 4-D inputs: oneDNN's CPU convolutions run faster on them (ResNet-20 on 2 cores:
    #: 0.26 s against 0.37 s per batch of 128); results differ from NCHW in the last bits only
    channels_last: bool = False
    precision: str = "fp32"  # see PRECISIONS
    #: torch.compile the training forward and backward (and a pruning method's loss closure; the per-epoch
    #: evaluation stays eager): a BCNN step on 2 CPU cores 1.7-1.8x faster than bf16 alone, its closure 2.2-2.5x
    #: (benchmarks/bcnn_training_speed.py; full-precision models gain nothing), after a one-off compilation;
    #: the numbers differ from eager in the last bits (fused kernels round differently)
    compile: bool = False

    def validate(self) -> "TrainConfig":
        """Reject impossible values with one clear sentence naming the field."""
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.optimizer in OPTIMIZERS,
             f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.precision in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {self.eval_batch_size}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**data)


def lr_factor(schedule: str, epoch: int, epochs: int, step: int = 0, steps: int = 1) -> float:
    """Learning-rate multiplier for ``epoch`` (0-based) and, for ``cosine-step``, its ``step`` (0-based) of
    ``steps``: a pure function, so resume is exact."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "cosine-step":
        return 0.5 * (1 + math.cos(math.pi * (epoch * steps + step) / (epochs * steps)))
    if schedule == "step":  # /10 at 50% and again at 75% of the epochs
        return 0.1 ** sum(epoch >= int(epochs * m) for m in (0.5, 0.75))
    return 1.0


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
