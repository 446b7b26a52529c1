"""ResNet-18 and ResNet-50 (He et al., "Deep residual learning for image recognition", CVPR 2016).

Two stems, because the same network is used on two kinds of data:

* ``stem="cifar"`` (default): 3x3 stride-1 convolution, no max-pool, as in the
  common CIFAR ports; a 32x32 image keeps enough resolution for four stages.
* ``stem="imagenet"``: the paper's 7x7 stride-2 convolution and 3x3 stride-2 max-pool.

Shape-changing shortcuts are 1x1 convolution + BN projections (the paper's option B);
ResNet-50 puts its stride on the 3x3 convolution (torchvision's "v1.5"), which changes
no parameter count.  Module names follow torchvision (``conv1``, ``bn1``, ``layer1``..
``layer4``, ``fc``) except that a block's projection is called ``shortcut`` (torchvision:
``downsample``), so torchvision weights load after renaming that one key.
"""

from __future__ import annotations

import torch
from torch import nn

from prunus.errors import ConfigError

STEMS = ("cifar", "imagenet")


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The block's shortcut: identity when the shape is kept, else 1x1 conv + BN (option B)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut (ResNet-18/34 and the CIFAR ResNets)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(in_channels, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, plus a shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def make_stage(
    block: type[BasicBlock | Bottleneck], in_channels: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """``blocks`` residual blocks; only the first changes stride/width."""
    layers = []
    for i in range(blocks):
        layers.append(block(in_channels, planes, stride if i == 0 else 1))
        in_channels = planes * block.expansion
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """Four-stage ResNet (64/128/256/512 planes) with a CIFAR or ImageNet stem."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks: tuple[int, int, int, int],
        in_channels: int = 1,
        num_classes: int = 10,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"Model option 'stem' must be one of {', '.join(STEMS)}, got {stem!r}.")
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        channels = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stages.append(make_stage(block, channels, planes, n, stride=1 if i == 0 else 2))
            channels = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(ResNet):
    """ResNet-18: basic blocks, (2, 2, 2, 2)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, stem: str = "cifar") -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, stem)


class ResNet50(ResNet):
    """ResNet-50: bottleneck blocks, (3, 4, 6, 3)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, stem: str = "cifar") -> None:
        super().__init__(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, stem)
