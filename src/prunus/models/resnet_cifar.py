"""CIFAR ResNet-20 and ResNet-56 (He et al., "Deep residual learning for image recognition", CVPR 2016, Sec. 4.2).

A 3x3 16-channel stem, then three stages of ``n`` basic blocks with 16, 32 and 64
channels (depth ``6n + 2``: n=3 gives ResNet-20, n=9 ResNet-56), global average pooling
and a linear classifier.

Deviation from the paper: where a stage changes the shape, the shortcut is a 1x1
convolution + BN projection (the paper's option B) instead of option A's strided
identity with zero-padded channels.  Option A ties the shortcut to the block's input
channels in a way no conv/BN layer expresses, which breaks channel pruning; option B
is a plain layer that a dependency graph can prune.  It adds 2,752 parameters to
every depth (16*32 + 2*32 and 32*64 + 2*64), e.g. ResNet-20 has 272,474 rather than
the paper's 0.27M (269,722).
"""

from __future__ import annotations

import torch
from torch import nn

from prunus.errors import ConfigError
from prunus.models.resnet import BasicBlock, make_stage


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (28x28 works too: 28-14-7 instead of 32-16-8)."""

    def __init__(self, depth: int = 20, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth!r}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = make_stage(BasicBlock, 16, 16, n, stride=1)
        self.layer2 = make_stage(BasicBlock, 16, 32, n, stride=2)
        self.layer3 = make_stage(BasicBlock, 32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet20(CifarResNet):
    """ResNet-20: n = 3 blocks per stage."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(20, in_channels, num_classes)


class ResNet56(CifarResNet):
    """ResNet-56: n = 9 blocks per stage."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(56, in_channels, num_classes)
