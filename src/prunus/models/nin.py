"""Network in Network (Lin, Chen & Yan, "Network in network", ICLR 2014), the CIFAR-10 model.

Three "mlpconv" blocks: a spatial convolution followed by two 1x1 convolutions
(the per-pixel MLP), the last block ending in ``num_classes`` maps that global
average pooling turns into logits, so there is no fully connected layer.  This is
the NIN-Net of the BCNN accelerator results.

Choices beyond the 2014 paper (which predates BatchNorm):

* ``batch_norm=True`` (default) puts BN between every hidden convolution and its
  ReLU; it makes NIN train without the original's hand-tuned initialisation and
  learning rates, and is what binarized NIN variants need.  Those convolutions then
  drop their (redundant) bias.  ``batch_norm=False`` gives the original layers.
* The final 1x1 convolution has no ReLU (the Caffe model had one), so logits may be
  negative.
* Pools use ``ceil_mode=True`` like the original Caffe model: 32-16-8 and 28-14-7.
"""

from __future__ import annotations

import torch
from torch import nn

from prunus.errors import ConfigError


class NIN(nn.Module):
    """NIN for CIFAR: 192@5x5-160-96, max-pool, 192@5x5-192-192, avg-pool, 192@3x3-192-classes, global pool."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, batch_norm: bool = True) -> None:
        super().__init__()
        if not isinstance(batch_norm, bool):
            raise ConfigError(f"Model option 'batch_norm' must be true or false, got {batch_norm!r}.")
        self.batch_norm = batch_norm

        def unit(cin: int, cout: int, kernel_size: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]

        self.features = nn.Sequential(
            *unit(in_channels, 192, 5), *unit(192, 160, 1), *unit(160, 96, 1),
            nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.Dropout(0.5),
            *unit(96, 192, 5), *unit(192, 192, 1), *unit(192, 192, 1),
            nn.AvgPool2d(3, stride=2, ceil_mode=True), nn.Dropout(0.5),
            *unit(192, 192, 3), *unit(192, 192, 1),
        )
        self.classifier = nn.Conv2d(192, num_classes, kernel_size=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.features.modules():  # the classifier keeps PyTorch's default, like a final nn.Linear
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.features(x))
        return torch.flatten(self.avgpool(x), 1)
