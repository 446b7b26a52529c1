"""Binarized complex neural networks (BCNN): complex layers, binarization, models, and a bit-packed engine.

* :mod:`prunus.bcnn.layers`: ``ComplexConv2d``, ``ComplexLinear``, ``ComplexBatchNorm2d`` (naive or
  2x2 whitening), ``CReLU``, complex pooling, the model input boundary.
* :mod:`prunus.bcnn.binarize`: sign with a clipped straight-through estimator, per-channel scales.
* :mod:`prunus.bcnn.models`: complex NIN-Net and ResNet-18 (registered as ``cnin``, ``cnin_fp``,
  ``cnin_small``, ``cresnet18``, ``cresnet18_fp``, ``cresnet_small``).
* :mod:`prunus.bcnn.engine`: XNOR-popcount inference (numba; the optional ``bcnn`` extra), bit-exact
  with the PyTorch forward of the same binarized, pruned model.
"""

from prunus.bcnn.binarize import binarize, channel_scale, sign
from prunus.bcnn.layers import ComplexConv2d, ComplexLinear, as_pair, stack, unstack
from prunus.bcnn.models import (
    ComplexBasicBlock,
    ComplexHead,
    ComplexNet,
    ComplexNIN,
    ComplexResNet,
    ComplexUnit,
    is_bcnn,
)
from prunus.bcnn.norms import ComplexBatchNorm2d
from prunus.bcnn.pooling import ComplexAvgPool2d, ComplexInput, ComplexMaxPool2d, CReLU

__all__ = [
    "ComplexAvgPool2d", "ComplexBasicBlock", "ComplexBatchNorm2d", "ComplexConv2d", "ComplexHead", "ComplexInput",
    "ComplexLinear", "ComplexMaxPool2d", "ComplexNIN", "ComplexNet", "ComplexResNet", "ComplexUnit", "CReLU",
    "as_pair", "binarize", "channel_scale", "is_bcnn", "sign", "stack", "unstack",
]
