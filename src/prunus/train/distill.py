"""Knowledge distillation from a frozen teacher (Hinton, Vinyals and Dean, 2015), as a training hook.

A pruned model is retrained toward the soft outputs of the model it was pruned from: the
teacher's full class distribution says more per example than the label does, which is what a
model that lost most of its weights has to relearn from (prunus prune --distill).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunus.errors import ConfigError
from prunus.hooks import TrainingHook


class Distillation(TrainingHook):
    """Adds ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` to every batch's loss.

    ``T^2`` keeps the gradient's size independent of the temperature (Hinton et al.). The teacher
    runs in eval mode without gradients; it has no state to checkpoint (a resumed run rebuilds it).
    """

    name = "distillation"

    def __init__(self, teacher: nn.Module, alpha: float = 1.0, temperature: float = 4.0) -> None:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"distillation weight must be a positive number, got {alpha}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"distillation temperature must be a positive number, got {temperature}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def setup(self, trainer) -> None:
        """The teacher on the trainer's device and memory format."""
        self.teacher.to(trainer.device)
        if trainer.config.channels_last:
            self.teacher.to(memory_format=torch.channels_last)

    def output_loss(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(self.teacher(inputs).float() / self.temperature, dim=1)
        student = F.log_softmax(outputs.float() / self.temperature, dim=1)
        kl = F.kl_div(student, target, reduction="batchmean", log_target=True)
        return self.alpha * self.temperature ** 2 * kl
