"""VGG-11 and VGG-16 (Simonyan & Zisserman, "Very deep convolutional networks", ICLR 2015), CIFAR style.

The CIFAR port that pruning papers use (e.g. Li et al., "Pruning filters for
efficient ConvNets", 2017): BatchNorm after every convolution and, instead of the
three 4096-wide fully connected layers, global average pooling and a single
``Linear(512 * width, num_classes)``.  The 3x3 convolutions keep their bias, as in
that port, so parameter counts match the published CIFAR figures.

Pooling is ``MaxPool2d(2, ceil_mode=True)`` so the five halvings work for 28x28
(28-14-7-4-2-1) as well as 32x32 (32-16-8-4-2-1); the final adaptive average pool
makes any other input size work too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunus.errors import ConfigError

#: Output channels of each 3x3 convolution; "M" is a 2x2 max-pool.
CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded half up, at least 1 (a layer never vanishes)."""
    return max(1, int(math.floor(channels * width + 0.5)))


class VGG(nn.Module):
    """CIFAR-style VGG: ``features`` (conv-BN-ReLU blocks and max-pools), global pool, one linear layer."""

    def __init__(self, depth: int = 16, in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ConfigError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth!r}.")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width < math.inf):
            raise ConfigError(f"Model option 'width' must be a positive number such as 0.5 or 1.0, got {width!r}.")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            out = scaled_channels(int(item), width)
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class VGG11(VGG):
    """VGG-11 (configuration A): 8 convolutions."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__(11, in_channels, num_classes, width)


class VGG16(VGG):
    """VGG-16 (configuration D): 13 convolutions."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__(16, in_channels, num_classes, width)
