"""LeNet-5 (LeCun et al., "Gradient-based learning applied to document recognition", 1998).

The modern variant: ReLU instead of scaled tanh, max-pooling instead of trainable
sub-sampling, and a fully connected C5 (LeCun's C5 is a 5x5 convolution over a 5x5
map, i.e. the same thing).  It is the model of the reweighted framework's
"630x on LeNet-5" result, so its parameter count must be the classic 61,706.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 (MNIST, Fashion-MNIST) and 32x32 (CIFAR) inputs with one module.

    ``conv1`` has padding 2, so a 28x28 image is seen as LeCun's padded 32x32 field and
    reaches ``conv2``'s output as exactly 16@5x5.  A 32x32 image arrives there as
    16@6x6; ``self.pool`` (adaptive average pooling to 5x5, an exact identity on a
    5x5 map) brings it to 5x5 so ``fc1`` always sees 400 features.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(self.pool(x), 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)
