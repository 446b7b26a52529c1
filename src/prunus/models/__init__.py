"""Model zoo: the networks the compression papers report on, built by name.

``build_model(name, in_channels, num_classes, **options)`` is how recipes and the CLI
make a model; it turns every user mistake (unknown name, unknown or invalid option)
into a one-sentence :class:`~prunus.errors.ConfigError`.

``MODELS`` maps each name to a :class:`ModelEntry`: call it like the model class,
read ``.description`` (one line, for ``--help``-style listings) and ``.options``
(option name -> default, read from the class signature so it cannot drift).

Every model accepts 28x28 and 32x32 inputs with 1 or 3 channels without changes,
and is built from plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` / ``nn.ReLU``
modules with non-in-place residual additions, so dependency-graph channel pruning
(Torch-Pruning) can follow it.  The classes can be imported directly from their
modules, e.g. ``from prunus.models.lenet import LeNet5``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from prunus.bcnn.models import BCNN_MODELS
from prunus.errors import ConfigError
from prunus.models.lenet import LeNet5
from prunus.models.mobilenetv2 import MobileNetV2
from prunus.models.nin import NIN
from prunus.models.resnet import ResNet18, ResNet50
from prunus.models.resnet_cifar import ResNet20, ResNet56
from prunus.models.vgg import VGG11, VGG16

__all__ = ["MODELS", "ModelEntry", "build_model", "count_parameters"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``builder(in_channels=..., num_classes=..., **options)`` and a one-line description."""

    builder: Callable[..., nn.Module]
    description: str

    def __call__(self, **kwargs: Any) -> nn.Module:
        return self.builder(**kwargs)

    @property
    def options(self) -> dict[str, Any]:
        """Model-specific options and their defaults (everything but ``in_channels`` and ``num_classes``)."""
        params = inspect.signature(self.builder).parameters
        return {k: p.default for k, p in params.items() if k not in ("in_channels", "num_classes")}


MODELS: dict[str, ModelEntry] = {
    "lenet5": ModelEntry(LeNet5, "LeNet-5 (LeCun 1998) with ReLU and max-pool, 61.7K parameters."),
    "vgg11": ModelEntry(VGG11, "VGG-11, CIFAR style with BN and a single linear classifier; width multiplier."),
    "vgg16": ModelEntry(VGG16, "VGG-16, CIFAR style with BN and a single linear classifier; width multiplier."),
    "resnet18": ModelEntry(ResNet18, "ResNet-18 (He 2016), CIFAR (3x3, default) or ImageNet (7x7 + max-pool) stem."),
    "resnet50": ModelEntry(ResNet50, "ResNet-50 (He 2016), bottleneck blocks, CIFAR (default) or ImageNet stem."),
    "resnet20": ModelEntry(ResNet20, "CIFAR ResNet-20 (He 2016), 16/32/64 channels, 1x1 projection shortcuts."),
    "resnet56": ModelEntry(ResNet56, "CIFAR ResNet-56 (He 2016), 16/32/64 channels, 1x1 projection shortcuts."),
    "mobilenetv2": ModelEntry(MobileNetV2, "MobileNetV2 (Sandler 2018), CIFAR strides by default; width multiplier."),
    "nin": ModelEntry(NIN, "Network in Network (Lin 2014), CIFAR model, optional BatchNorm."),
}
# binarized complex networks (prunus.bcnn): cnin, cnin_fp, cnin_small, cresnet18, cresnet18_fp, cresnet_small
MODELS.update({name: ModelEntry(builder, text) for name, (builder, text) in BCNN_MODELS.items()})


def _check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Model field '{field}' must be a positive integer, got {value!r}.")


def build_model(name: str, in_channels: int = 1, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build the registered model ``name`` (case-insensitive) for ``in_channels`` inputs and ``num_classes`` outputs."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ConfigError(f"Unknown model {name!r}; choose one of: {', '.join(MODELS)}.")
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    entry = MODELS[key]
    known = entry.options
    for option in options:
        if option not in known:
            valid = f"its options are: {', '.join(known)}" if known else "it takes no options"
            raise ConfigError(f"Model {key!r} has no option {option!r}; {valid}.")
    return entry(in_channels=in_channels, num_classes=num_classes, **options)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries (zeros included; shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
