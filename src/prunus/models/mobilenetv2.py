"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted residuals and linear bottlenecks", CVPR 2018).

The standard architecture (Table 2 of the paper; same layers and channel rounding as
torchvision, 3,504,872 parameters at width 1.0 with 1000 classes), with two input
configurations chosen by ``stem``:

* ``"cifar"`` (default): the first convolution and the first two stride-2 stages
  (24 and 32 channels) use stride 1, so a 32x32 image is downsampled 4x in total
  (32-16-8) instead of 32x and the last stages still see an 8x8 map (7x7 for a
  28x28 image).  Common CIFAR ports remove the stem stride and one or both of these;
  removing both keeps enough resolution for 28x28 inputs as well.
* ``"imagenet"``: the paper's strides (32x downsampling).

Only strides differ, so both have the same parameters.  ``width`` scales every layer
as in the paper (channels rounded to multiples of 8; the last 1280-wide layer is never
narrowed below 1280).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunus.errors import ConfigError

STEMS = ("cifar", "imagenet")

#: (expansion t, output channels c, repeats n, stride s) for each stage, as in the paper.
STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90% of it (the paper's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Convolution, BN, ReLU6: the building unit of every non-linear layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity ``shortcut`` when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2: ``features`` (stem, 17 inverted residuals, 1x1 to 1280), global pool, dropout + linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, stem: str = "cifar") -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width < math.inf):
            raise ConfigError(f"Model option 'width' must be a positive number such as 0.5 or 1.0, got {width!r}.")
        if stem not in STEMS:
            raise ConfigError(f"Model option 'stem' must be one of {', '.join(STEMS)}, got {stem!r}.")
        self.stem = stem
        cifar = stem == "cifar"
        channels = make_divisible(32 * width)
        last_channels = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, channels, 3, stride=1 if cifar else 2)]
        for index, (t, c, n, s) in enumerate(STAGES):
            if cifar and index in (1, 2):  # the 24- and 32-channel stages keep the resolution
                s = 1
            out = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(conv_bn_relu6(channels, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
