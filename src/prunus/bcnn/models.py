"""Complex NIN-Net and complex ResNet-18 (CIFAR style), binarized (BCNN) or full precision.

Every model is ``input -> stem -> body -> head``:
* ``input`` (:class:`~prunus.bcnn.pooling.ComplexInput`): the model boundary.  Real images become
  complex with a zero imaginary part, their 2-D FFT, or a learned imaginary part
  (``complex_input``); 2-channel inputs (the ``modulation`` dataset) are ``[real; imag]``;
  torch complex tensors are used as they are.
* ``stem``: the first complex convolution + complex BN, full precision unless ``fp_first=False``; int8 weights and
  inputs with ``int8_first=True`` (:mod:`prunus.bcnn.int8`: the engine's integer first layer).
* ``body``: :class:`ComplexUnit` (conv -> BN [-> CReLU] [-> max-pool]) and, for ResNet,
  :class:`ComplexBasicBlock`.  In a binary model every body convolution is binary and there is
  no CReLU (``sign`` of the BN output is the activation: each binary conv binarizes its input);
  in a full-precision model (``binary=False``) the activation is CReLU.
* ``head`` (:class:`ComplexHead`): global average pooling, then a complex linear layer whose
  real part is the logits; full precision unless ``fp_last=False``.

Widths count complex channels; ``width=1`` gives half the real model's channel count in complex
channels, i.e. the same number of real feature maps ``[real; imag]`` (NIN: 192 -> 96 complex).
Deviation from NIN: both pools are max-pools (a binary net's average pool has no bit form; max
pooling commutes with ``sign`` and runs on bits).  The channel tables are in ``NIN_LAYERS`` etc.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable

import torch
from torch import nn

from prunus.bcnn.int8 import INT8_MAX
from prunus.bcnn.layers import INPUT_MODES, NORMS, ComplexConv2d, ComplexLike, ComplexLinear, as_pair, is_zero_view
from prunus.bcnn.norms import ComplexBatchNorm2d
from prunus.bcnn.pooling import ComplexAvgPool2d, ComplexInput, ComplexMaxPool2d, CReLU
from prunus.errors import ConfigError

__all__ = ["BCNN_MODELS", "ComplexBasicBlock", "ComplexHead", "ComplexNIN", "ComplexNet", "ComplexResNet",
           "ComplexUnit", "is_bcnn"]


class ComplexUnit(nn.Module):
    """``conv -> BN [-> CReLU] [-> max-pool]``: the unit of the complex NIN and the stems."""

    def __init__(self, cin: int, cout: int, kernel_size: int, *, stride: int = 1, binary: bool, scale: bool = True,
                 norm: str = "naive", crelu: bool = False, pool: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.conv = ComplexConv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, binary=binary,
                                  scale=scale)
        self.bn = ComplexBatchNorm2d(cout, norm)
        self.act = CReLU() if crelu else None
        self.pool = ComplexMaxPool2d(pool[0], pool[1], ceil_mode=True) if pool else None

    def forward(self, x: ComplexLike) -> ComplexLike:
        x = self.bn(self.conv(x))
        if self.act is not None:
            x = self.act(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


class ComplexBasicBlock(nn.Module):
    """ResNet basic block: two 3x3 complex convs + a shortcut (identity, or 1x1 conv + BN when the shape changes).

    Binary: ``out = BN2(conv2(BN1(conv1(x)))) + shortcut(x)`` with every conv binarizing its input
    (the sum is the real-valued residual stream; the next block binarizes it).  Full precision:
    CReLU after BN1 and after the sum, as in ResNet.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, binary: bool, scale: bool = True, norm: str = "naive",
                 crelu: bool = False) -> None:
        super().__init__()
        self.conv1 = ComplexConv2d(cin, cout, 3, stride=stride, padding=1, binary=binary, scale=scale)
        self.bn1 = ComplexBatchNorm2d(cout, norm)
        self.conv2 = ComplexConv2d(cout, cout, 3, padding=1, binary=binary, scale=scale)
        self.bn2 = ComplexBatchNorm2d(cout, norm)
        self.shortcut_conv = self.shortcut_bn = None
        if stride != 1 or cin != cout:
            self.shortcut_conv = ComplexConv2d(cin, cout, 1, stride=stride, binary=binary, scale=scale)
            self.shortcut_bn = ComplexBatchNorm2d(cout, norm)
        self.act = CReLU() if crelu else None

    def forward(self, x: ComplexLike) -> ComplexLike:
        a = self.bn1(self.conv1(x))
        if self.act is not None:
            a = self.act(a)
        br, bi = as_pair(self.bn2(self.conv2(a)))
        sr, si = as_pair(x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x)))
        out = (br + sr, bi + si)
        if self.act is not None:
            out = self.act(out)
        return torch.complex(*out) if isinstance(x, torch.Tensor) else out


class ComplexHead(nn.Module):
    """Global average pooling, then a complex linear layer; the logits are its real part."""

    def __init__(self, cin: int, num_classes: int, *, binary: bool = False, scale: bool = True) -> None:
        super().__init__()
        self.pool = ComplexAvgPool2d()
        self.fc = ComplexLinear(cin, num_classes, bias=True, binary=binary, scale=scale, real_output=True)

    def pooled(self, x: ComplexLike) -> tuple[torch.Tensor, torch.Tensor]:
        xr, xi = as_pair(self.pool(x))
        return xr.flatten(1), xi.flatten(1)

    def forward(self, x: ComplexLike) -> torch.Tensor:
        return self.fc(self.pooled(x))


class ComplexNet(nn.Module):
    """``input -> stem -> body -> head``; subclasses fill the body (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, *, width: float, binary: bool, complex_input: str,
                 norm: str, scale: bool, fp_first: bool, fp_last: bool, int8_first: bool = False) -> None:
        super().__init__()
        _check_options(width=width, binary=binary, complex_input=complex_input, norm=norm, scale=scale,
                       fp_first=fp_first, fp_last=fp_last, int8_first=int8_first)
        self.width, self.binary, self.norm, self.scale = float(width), binary, norm, scale
        self.fp_first, self.fp_last, self.int8_first = fp_first, fp_last, int8_first
        self.input = ComplexInput(in_channels, complex_input)

    def make_stem(self, cin: int, cout: int, k: int) -> ComplexUnit:
        """The first unit: binary only when the model is and ``fp_first`` is off; int8 with ``int8_first``."""
        stem = self.unit(cin, cout, k, binary=self.binary and not self.fp_first)
        if self.int8_first:
            stem.conv.make_int8()
        return stem

    def channels(self, c: int) -> int:
        return max(1, int(round(c * self.width)))

    def unit(self, cin: int, cout: int, k: int, *, stride: int = 1, pool=None,
             binary: bool | None = None) -> ComplexUnit:
        return ComplexUnit(cin, cout, k, stride=stride, binary=self.binary if binary is None else binary,
                           scale=self.scale, norm=self.norm, crelu=not self.binary, pool=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(self.input(x))))

    @torch.no_grad()
    def quantize_first_layer(self, batches: Iterable[torch.Tensor]) -> None:
        """After training: the first layer becomes int8 (:mod:`prunus.bcnn.int8`), its input scale the calibration
        frames' ``max |x| / 127`` (what a quantization-aware training's moving average of batch maxima tends to,
        from below).  The input boundary runs in eval mode; the model is left in the mode it was in."""
        if self.int8_first:
            raise ConfigError("the model's first layer is int8 already")
        if self.stem.conv.binary:
            raise ConfigError("the model's first layer is binary; only a full-precision first layer becomes int8")
        peak, was_training = 0.0, self.input.training
        self.input.eval()  # a learned imaginary part has BatchNorm statistics of its own: not to be moved here
        try:
            for x in batches:
                xr, xi = as_pair(self.input(x))
                peak = max(peak, float(xr.abs().amax()), 0.0 if is_zero_view(xi) else float(xi.abs().amax()))
        finally:
            self.input.train(was_training)
        if peak == 0.0:
            raise ConfigError("the calibration frames are all zero: no input scale for the int8 first layer")
        self.stem.conv.make_int8()
        self.stem.conv.input_scale.fill_(peak / INT8_MAX)
        self.int8_first = True


#: complex NIN: (out channels, kernel, pool after) per hidden unit; the stem is 96@5x5.
NIN_LAYERS: tuple[tuple[int, int, bool], ...] = (
    (80, 1, False), (48, 1, True),
    (96, 5, False), (96, 1, False), (96, 1, True),
    (96, 3, False), (96, 1, False),
)
NIN_SMALL_LAYERS: tuple[tuple[int, int, bool], ...] = ((32, 1, True), (64, 3, False), (64, 1, True), (64, 3, False))


class ComplexNIN(ComplexNet):
    """Complex Network-in-Network (the BCNN paper's NIN-Net), CIFAR layout, binary by default.

    Stem 96@5x5, then 80@1x1, 48@1x1, max-pool 3/2, 96@5x5, 96@1x1, 96@1x1, max-pool 3/2, 96@3x3,
    96@1x1 (complex channels at ``width=1``), global average pooling and a complex linear head.
    ``small=True`` (``cnin_small``): stem 32@3x3, 32@1x1, pool 2/2, 64@3x3, 64@1x1, pool 2/2,
    64@3x3 -- for 28x28 inputs and quick experiments.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, binary: bool = True,
                 complex_input: str = "auto", norm: str = "naive", scale: bool = True, fp_first: bool = True,
                 fp_last: bool = True, small: bool = False, int8_first: bool = False) -> None:
        super().__init__(in_channels, num_classes, width=width, binary=binary, complex_input=complex_input, norm=norm,
                         scale=scale, fp_first=fp_first, fp_last=fp_last, int8_first=int8_first)
        if small:
            layers, (stem_c, stem_k), pool = NIN_SMALL_LAYERS, (32, 3), (2, 2)
        else:
            layers, (stem_c, stem_k), pool = NIN_LAYERS, (96, 5), (3, 2)
        c = self.channels(stem_c)
        self.stem = self.make_stem(self.input.channels, c, stem_k)
        units = []
        for cout, k, pooled in layers:
            units.append(self.unit(c, self.channels(cout), k, pool=pool if pooled else None))
            c = self.channels(cout)
        self.body = nn.Sequential(*units)
        self.head = ComplexHead(c, num_classes, binary=binary and not fp_last, scale=scale)


#: complex ResNet: stem channels, then (channels, stride, blocks) per stage.
RESNET18_STAGES = (32, ((32, 1, 2), (64, 2, 2), (128, 2, 2), (256, 2, 2)))
RESNET_SMALL_STAGES = (16, ((16, 1, 1), (32, 2, 1), (64, 2, 1)))


class ComplexResNet(ComplexNet):
    """Complex ResNet-18, CIFAR stem (3x3, no max-pool), binary by default.

    Stem 32@3x3, four stages of two basic blocks with 32/64/128/256 complex channels (= the 64..512
    real channels of ResNet-18), 1x1 conv + BN projection shortcuts.  ``small=True``
    (``cresnet_small``): stem 16, three stages of one block (16/32/64), for 28x28 inputs.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, binary: bool = True,
                 complex_input: str = "auto", norm: str = "naive", scale: bool = True, fp_first: bool = True,
                 fp_last: bool = True, small: bool = False, int8_first: bool = False) -> None:
        super().__init__(in_channels, num_classes, width=width, binary=binary, complex_input=complex_input, norm=norm,
                         scale=scale, fp_first=fp_first, fp_last=fp_last, int8_first=int8_first)
        stem_c, stages = RESNET_SMALL_STAGES if small else RESNET18_STAGES
        c = self.channels(stem_c)
        self.stem = self.make_stem(self.input.channels, c, 3)
        blocks = []
        for cout, stride, n in stages:
            for i in range(n):
                blocks.append(ComplexBasicBlock(c, self.channels(cout), stride if i == 0 else 1, binary=binary,
                                                scale=scale, norm=norm, crelu=not binary))
                c = self.channels(cout)
        self.body = nn.Sequential(*blocks)
        self.head = ComplexHead(c, num_classes, binary=binary and not fp_last, scale=scale)


def _check_options(**options: Any) -> None:
    width = options["width"]
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width <= 16):
        raise ConfigError(f"Model option 'width' must be a number in (0, 16], got {width!r}.")
    for flag in ("binary", "scale", "fp_first", "fp_last", "int8_first"):
        if not isinstance(options[flag], bool):
            raise ConfigError(f"Model option '{flag}' must be true or false, got {options[flag]!r}.")
    if options["int8_first"] and options["binary"] and not options["fp_first"]:
        raise ConfigError("Model option 'int8_first' needs a full-precision first layer to quantize, but "
                          "'fp_first' is false (the first layer is binary).")
    if options["norm"] not in NORMS:
        raise ConfigError(f"Model option 'norm' must be one of {', '.join(NORMS)}, got {options['norm']!r}.")
    if options["complex_input"] not in INPUT_MODES:
        raise ConfigError(f"Model option 'complex_input' must be one of {', '.join(INPUT_MODES)}, "
                          f"got {options['complex_input']!r}.")


def _variant(cls, name: str, **fixed: Any):
    """A registry builder: ``cls`` with some defaults changed (they stay overridable options)."""

    def build(in_channels: int = 1, num_classes: int = 10, **options: Any) -> nn.Module:
        return cls(in_channels=in_channels, num_classes=num_classes, **{**fixed, **options})


    params = [p.replace(default=fixed.get(p.name, p.default)) for p in inspect.signature(cls).parameters.values()]
    build.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    build.__name__ = build.__qualname__ = name
    return build


#: registry name -> (builder, one-line description); registered in :data:`prunus.models.MODELS`.
BCNN_MODELS: dict[str, tuple[Any, str]] = {
    "cnin": (_variant(ComplexNIN, "cnin"),
             "Binarized complex NIN-Net (BCNN): binary hidden layers, full-precision first/last layer."),
    "cnin_fp": (_variant(ComplexNIN, "cnin_fp", binary=False), "Complex NIN-Net in full precision (CReLU)."),
    "cnin_small": (_variant(ComplexNIN, "cnin_small", small=True),
                   "Small binarized complex NIN (32/64 complex channels) for 28x28 inputs."),
    "cresnet18": (_variant(ComplexResNet, "cresnet18"),
                  "Binarized complex ResNet-18 (BCNN), CIFAR stem, 32-256 complex channels."),
    "cresnet18_fp": (_variant(ComplexResNet, "cresnet18_fp", binary=False),
                     "Complex ResNet-18 in full precision (CReLU)."),
    "cresnet_small": (_variant(ComplexResNet, "cresnet_small", small=True),
                      "Small binarized complex ResNet (3 stages of one block, 16-64 channels) for 28x28 inputs."),
}


def is_bcnn(model: nn.Module) -> bool:
    """True for a complex network of this module (binary or not)."""
    return isinstance(model, ComplexNet)

