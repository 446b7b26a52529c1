"""Complex-valued layers built from real PyTorch modules."""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from prunus.bcnn.binarize import binarize, channel_scale
from prunus.bcnn.int8 import check_exact_taps, int8_input, int8_weight, observe_input_scale, weight_scales
from prunus.errors import ConfigError

Pair = tuple[torch.Tensor, torch.Tensor]


ComplexLike = Union[Pair, torch.Tensor]



NORMS = ("naive", "whiten")


INPUT_MODES = ("auto", "zero", "fft", "learned", "stacked")


def as_pair(x: ComplexLike) -> Pair:
    """``(real, imag)`` of a pair or a torch complex tensor."""
    if isinstance(x, torch.Tensor):
        if not x.is_complex():
            raise TypeError(f"expected a complex tensor or a (real, imag) pair, got a real {x.dtype} tensor")
        return x.real, x.imag
    real, imag = x
    return real, imag


def like_input(x: ComplexLike, out: Pair) -> ComplexLike:
    """``out`` as a complex tensor when ``x`` was one, else as a pair."""
    if isinstance(x, torch.Tensor):
        return torch.complex(out[0].contiguous(), out[1].contiguous())
    return out


def stack(x: ComplexLike) -> torch.Tensor:
    """Channel-stacked ``[real; imag]``: ``(B, C, ...)`` complex -> ``(B, 2C, ...)`` real."""
    r, i = as_pair(x)
    return torch.cat([r, i], 1)


def unstack(x: torch.Tensor) -> Pair:
    """Inverse of :func:`stack`: the first half of the channels is the real part."""
    if x.shape[1] % 2:
        raise ValueError(f"a [real; imag] stacked tensor needs an even channel count, got {x.shape[1]}")
    r, i = x.chunk(2, 1)
    return r, i


class _BinaryAwareConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose forward uses ``sign(weight)`` (straight-through) when ``binary``, its int8 integers
    (:func:`~prunus.bcnn.int8.int8_weight`) when ``int8``.

    Given half its input channels (``Cin`` instead of ``2*Cin``), it is the complex layer on a
    *real* input (imaginary part 0): ``[x * Wr; x * Wi]`` stacked along the batch, the same
    ``(2B, Cout)`` result as the full ``[(x, -0); (0, x)]`` batch at half the multiplications.
    """

    binary: bool = False
    int8: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = binarize(self.weight) if self.binary else int8_weight(self.weight) if self.int8 else self.weight
        if 2 * x.shape[1] == self.in_channels:
            c = x.shape[1]
            args = (self.bias, self.stride, self.padding, self.dilation, self.groups)
            return torch.cat([F.conv2d(x, weight[:, :c], *args), F.conv2d(x, weight[:, c:], *args)], 0)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def zeros_like_view(x: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like ``x`` that costs nothing: a stride-0 view of one zero.

    :class:`~prunus.bcnn.pooling.ComplexInput` marks a known-zero imaginary part with it, so that a full-precision
    complex layer can skip the multiplications by zero (see :func:`is_zero_view`).
    """
    return x.new_zeros(()).expand_as(x)


def is_zero_view(x: torch.Tensor | None) -> bool:
    return x is not None and x.dim() > 0 and all(s == 0 for s in x.stride()) and not bool(x.reshape(-1)[:1].any())


class _BinaryAwareLinear(nn.Linear):
    """``nn.Linear`` counterpart of :class:`_BinaryAwareConv2d` (same binary and real-input behaviour)."""

    binary: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = binarize(self.weight) if self.binary else self.weight
        if 2 * x.shape[1] == self.in_features:
            c = x.shape[1]
            return torch.cat([F.linear(x, weight[:, :c], self.bias), F.linear(x, weight[:, c:], self.bias)], 0)
        return F.linear(x, weight, self.bias)


def _check_channels(what: str, **values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{what}: {name} must be a positive integer, got {v!r}")


class _ComplexBatch(torch.autograd.Function):
    """``(xr, xi) -> [(xr, -xi); (xi, xr)]``: the 2B-sample, 2Cin-channel input of the ``[Wr | Wi]`` core.

    One autograd node instead of negation, two channel concatenations and a batch concatenation:
    the same values and gradients, but a graph that Torch-Pruning's dependency tracer walks in
    milliseconds (through the swapped concatenations its index sets cycle for tens of seconds).
    """

    @staticmethod
    def forward(ctx, xr: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([torch.cat([xr, -xi], 1), torch.cat([xi, xr], 1)], 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        b, c = grad.shape[0] // 2, grad.shape[1] // 2
        top, bottom = grad[:b], grad[b:]
        return top[:, :c] + bottom[:, c:], bottom[:, :c] - top[:, c:]


class _RealPartInput(torch.autograd.Function):
    """``(xr, xi) -> [xr, -xi]`` along dim 1 (the input whose product with ``[Wr | Wi]`` is the real part); one node."""

    @staticmethod
    def forward(ctx, xr: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([xr, -xi], 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        c = grad.shape[1] // 2
        return grad[:, :c], -grad[:, c:]


class _ComplexLayer(nn.Module):
    """Shared by conv and linear: the ``[Wr | Wi]`` core module, scale and bias handling."""

    in_channels: int
    out_channels: int

    int8 = False  # ComplexConv2d's int8 option (prunus.bcnn.int8)

    def _init_core(self, binary: bool, scale: bool, bias: bool) -> None:
        self.binary, self.scale = bool(binary), bool(scale)
        self.core.binary = self.binary
        # complex initialisation (Trabelsi et al. 2018, "He" variant): each part ~ N(0, 1/fan_in) so that
        # |w| has variance 2/fan_in, the complex analogue of Kaiming's rule.
        fan_in = self.core.weight[0].numel() // 2
        with torch.no_grad():
            self.core.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
        self.bias = nn.Parameter(torch.zeros(2, self.out_channels)) if bias else None

    @property
    def weight_real(self) -> torch.Tensor:
        return self.core.weight[:, : self.in_channels]

    @property
    def weight_imag(self) -> torch.Tensor:
        return self.core.weight[:, self.in_channels:]

    def complex_weight(self) -> torch.Tensor:
        """The effective weight as a complex tensor (``sign`` of each part when binary, scale not applied)."""
        w = self.core.weight.detach()
        if self.binary:
            w = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        return torch.complex(w[:, : self.in_channels], w[:, self.in_channels:])

    def scales(self) -> torch.Tensor:
        """The per-output-channel factor of a binary layer (see :func:`prunus.bcnn.binarize.channel_scale`)."""
        return channel_scale(self.core.weight, self.scale)

    def _complex_forward(self, x: ComplexLike, view: tuple[int, ...]) -> ComplexLike:
        xr, xi = as_pair(x)
        if self.int8:
            xr, xi = self._int8_inputs(xr, xi)
        if self.binary:
            xr, xi = binarize(xr), binarize(xi.contiguous())
            out = self.core(_ComplexBatch.apply(xr, xi))
        elif is_zero_view(xi):  # a real input (ComplexInput "zero"): skip the products with 0
            out = self.core(xr)
        else:
            out = self.core(_ComplexBatch.apply(xr, xi))
        if self.binary:
            out = out * self.scales().view(view)
        elif self.int8:
            out = out * self.int8_factor().view(view)
        yr, yi = out[: xr.shape[0]], out[xr.shape[0]:]
        if self.bias is not None:
            yr = yr + self.bias[0].view(view)
            yi = yi + self.bias[1].view(view)
        return like_input(x, (yr, yi))


class ComplexConv2d(_ComplexLayer):
    """Complex 2-D convolution ``(Wr*xr - Wi*xi) + i(Wr*xi + Wi*xr)``; ``conv.weight`` is ``[Wr | Wi]``.

    ``binary``: the forward binarizes the input and the weights (sign of the real and imaginary
    parts separately, sign(0) = +1) and scales each output channel by its factor (``scale``).
    Zero padding is ordinary zero padding of the (binarized) input, so a binary output is
    ``alpha * (sum over in-image taps of +-1 products)``: an exact integer times alpha.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, binary: bool = False, scale: bool = True, int8: bool = False) -> None:
        super().__init__()
        _check_channels("ComplexConv2d", in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                        stride=stride)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = _BinaryAwareConv2d(2 * in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                       bias=False)
        self._init_core(binary, scale, bias)
        if int8:
            self.make_int8()

    def make_int8(self) -> None:
        """Quantize this (full-precision) layer to int8 from now on (:mod:`prunus.bcnn.int8`); the input scale
        starts at 0, so the next training batch (or :func:`~prunus.bcnn.int8.observe_input_scale`) sets it."""
        if self.binary:
            raise ConfigError("ComplexConv2d: a layer is binary or int8, not both")
        check_exact_taps(self.conv.in_channels * self.conv.kernel_size[0] * self.conv.kernel_size[1], "ComplexConv2d")
        self.int8 = self.conv.int8 = True
        if not hasattr(self, "input_scale"):
            self.register_buffer("input_scale", torch.zeros(()))

    def int8_factor(self) -> torch.Tensor:
        """``s * w_o`` per output channel: what turns the integer convolution into this layer's output."""
        return self.input_scale * weight_scales(self.conv.weight)

    def _int8_inputs(self, xr: torch.Tensor, xi: torch.Tensor) -> Pair:
        """The quantized input.  The scale follows the batches of training steps (train mode, gradients on); a
        train-mode pass without gradients (BatchNorm recalibration) leaves a scale that is set alone."""
        zero_imag = is_zero_view(xi)
        if self.training and (torch.is_grad_enabled() or not bool(self.input_scale)):
            observe_input_scale(self.input_scale, xr, *(() if zero_imag else (xi,)))
        elif not torch.compiler.is_compiling() and not bool(self.input_scale):
            raise ConfigError("ComplexConv2d: this int8 layer has no input scale yet; train it, or run "
                              "prunus.bcnn.int8.observe_input_scale on calibration inputs, before evaluating it")
        return int8_input(xr, self.input_scale), xi if zero_imag else int8_input(xi, self.input_scale)

    @property
    def core(self) -> nn.Conv2d:
        return self.conv

    def forward(self, x: ComplexLike) -> ComplexLike:
        return self._complex_forward(x, (1, -1, 1, 1))

    def extra_repr(self) -> str:
        c = self.conv
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={c.kernel_size}, stride={c.stride}, "
                f"padding={c.padding}, binary={self.binary}, scale={self.scale}, bias={self.bias is not None}"
                + (", int8=True" if self.int8 else ""))


class ComplexLinear(_ComplexLayer):
    """Complex fully connected layer; ``linear.weight`` is ``[Wr | Wi]`` (out, 2*in).  Same options as the conv.

    ``real_output=True`` computes only the real part ``Wr xr - Wi xi + b`` (a real tensor, a real
    bias): a classifier head whose logits are the real part of a complex layer.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, binary: bool = False,
                 scale: bool = True, real_output: bool = False) -> None:
        super().__init__()
        _check_channels("ComplexLinear", in_features=in_features, out_features=out_features)
        self.in_channels, self.out_channels = in_features, out_features
        self.real_output = bool(real_output)
        self.linear = _BinaryAwareLinear(2 * in_features, out_features, bias=False)
        self._init_core(binary, scale, bias and not real_output)
        if bias and real_output:
            self.bias = nn.Parameter(torch.zeros(out_features))

    @property
    def core(self) -> nn.Linear:
        return self.linear

    def forward(self, x: ComplexLike) -> ComplexLike:
        if not self.real_output:
            return self._complex_forward(x, (1, -1))
        xr, xi = as_pair(x)
        if self.binary:
            xr, xi = binarize(xr), binarize(xi)
        out = self.linear(_RealPartInput.apply(xr, xi))
        if self.binary:
            out = out * self.scales().view(1, -1)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, binary={self.binary}, scale={self.scale}, "
                f"bias={self.bias is not None}, real_output={self.real_output}")
