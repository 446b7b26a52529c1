"""Complex-valued layers built from real PyTorch modules.

A complex activation is a **pair** ``(real, imag)`` of real tensors of the same shape
(``B, C, H, W`` for C complex channels); every layer here also accepts a torch complex
tensor and then returns one.  Models keep pairs inside and convert only at their boundary
(:class:`ComplexInput`); ``stack``/``unstack`` give the ``[real; imag]`` channel-stacked
form (2C real channels) used by the datasets and the inference engine.

Weights: a complex convolution with ``Cin`` inputs and ``Cout`` outputs stores one real
``nn.Conv2d`` weight of shape ``(Cout, 2*Cin, k, k) = [Wr | Wi]`` (:attr:`ComplexConv2d.conv`),
so output channel ``o``'s real and imaginary weights are one filter: filter pruning
(``prunus prune --structure filter``) removes both together, and SLR/ADMM rank them by their
joint energy ``||Wr[o]||^2 + ||Wi[o]||^2``.  The forward computes
``(Wr*xr - Wi*xi) + i(Wr*xi + Wi*xr)`` with **one** call of that module on the batch
``[(xr, -xi); (xi, xr)]`` (2B samples, 2Cin channels), which is exact algebra, keeps the
module an ordinary ``nn.Conv2d`` for tracing tools (Torch-Pruning) and costs the same as the
four real convolutions.

``binary=True`` layers binarize their input and weights (see :mod:`prunus.bcnn.binarize`) and
multiply the integer result by the per-channel scale.
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from prunus.bcnn.binarize import binarize, channel_scale
from prunus.errors import ConfigError

Pair = tuple[torch.Tensor, torch.Tensor]
ComplexLike = Union[Pair, torch.Tensor]

__all__ = [
    "ComplexAvgPool2d", "ComplexBatchNorm2d", "ComplexConv2d", "ComplexInput", "ComplexLinear", "ComplexMaxPool2d",
    "CReLU", "INPUT_MODES", "NORMS", "as_pair", "like_input", "stack", "unstack",
]

NORMS = ("naive", "whiten")
INPUT_MODES = ("auto", "zero", "fft", "learned", "stacked")


# -- representations ----------------------------------------------------------------------------------------------


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


# -- convolution and linear -----------------------------------------------------------------------------------------


class _BinaryAwareConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose forward uses ``sign(weight)`` (straight-through) when ``binary``.

    Given half its input channels (``Cin`` instead of ``2*Cin``), it is the complex layer on a
    *real* input (imaginary part 0): ``[x * Wr; x * Wi]`` stacked along the batch, the same
    ``(2B, Cout)`` result as the full ``[(x, -0); (0, x)]`` batch at half the multiplications.
    """

    binary: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = binarize(self.weight) if self.binary else self.weight
        if 2 * x.shape[1] == self.in_channels:
            c = x.shape[1]
            args = (self.bias, self.stride, self.padding, self.dilation, self.groups)
            return torch.cat([F.conv2d(x, weight[:, :c], *args), F.conv2d(x, weight[:, c:], *args)], 0)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def zeros_like_view(x: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like ``x`` that costs nothing: a stride-0 view of one zero.

    :class:`ComplexInput` marks a known-zero imaginary part with it, so that a full-precision
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
        if self.binary:
            xr, xi = binarize(xr), binarize(xi.contiguous())
            out = self.core(_ComplexBatch.apply(xr, xi))
        elif is_zero_view(xi):  # a real input (ComplexInput "zero"): skip the products with 0
            out = self.core(xr)
        else:
            out = self.core(_ComplexBatch.apply(xr, xi))
        if self.binary:
            out = out * self.scales().view(view)
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
                 bias: bool = False, binary: bool = False, scale: bool = True) -> None:
        super().__init__()
        _check_channels("ComplexConv2d", in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                        stride=stride)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = _BinaryAwareConv2d(2 * in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                       bias=False)
        self._init_core(binary, scale, bias)

    @property
    def core(self) -> nn.Conv2d:
        return self.conv

    def forward(self, x: ComplexLike) -> ComplexLike:
        return self._complex_forward(x, (1, -1, 1, 1))

    def extra_repr(self) -> str:
        c = self.conv
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={c.kernel_size}, stride={c.stride}, "
                f"padding={c.padding}, binary={self.binary}, scale={self.scale}, bias={self.bias is not None}")


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


# -- batch normalisation ----------------------------------------------------------------------------------------------


class _FoldedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose eval-mode forward is ``x * s + t`` with ``s, t`` from :meth:`fold`.

    Two separate elementwise float32 operations (a multiply, then an add) with per-channel
    constants: an exact, documented function of each input value, which the inference
    engine can reproduce bit for bit (ATen's fused kernel is free to use FMA).
    """

    @torch.no_grad()
    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s`` (float32, no grad)."""
        s = self.weight / torch.sqrt(self.running_var + self.eps)
        t = self.bias - self.running_mean * s
        return s, t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None:
            return super().forward(x)
        s, t = self.fold()
        return apply_fold(x, s, t)


def apply_fold(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(x * s) + t`` per channel (dim 1), as two float ops; shared with the engine so both agree."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    y = x * s.view(view)
    return y + t.view(view)


class _WhiteningBatchNorm(nn.Module):
    """Complex BN with full 2x2 covariance whitening (Trabelsi et al., "Deep complex networks", 2018).

    Per complex channel: centre, whiten with ``V^{-1/2}`` (V the 2x2 covariance of (real, imag),
    eps added to its diagonal), then ``Gamma @ z + beta`` with a symmetric learned
    ``Gamma = [[g_rr, g_ri], [g_ri, g_ii]]`` (initialised to ``I / sqrt(2)``, so the modulus has unit
    variance) and ``beta`` (2, C).  Running mean and covariance are kept like ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        g = 1.0 / math.sqrt(2.0)
        self.weight = nn.Parameter(torch.tensor([g, 0.0, g]).repeat_interleave(num_features).view(3, num_features))
        self.bias = nn.Parameter(torch.zeros(2, num_features))
        self.register_buffer("running_mean", torch.zeros(2, num_features))
        identity = torch.tensor([1.0, 0.0, 1.0]).repeat_interleave(num_features).view(3, num_features)
        self.register_buffer("running_cov", identity)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @staticmethod
    def inverse_sqrt(vrr: torch.Tensor, vri: torch.Tensor, vii: torch.Tensor):
        """``V^{-1/2}`` of the symmetric positive definite ``[[vrr, vri], [vri, vii]]`` in closed form."""
        s = torch.sqrt(vrr * vii - vri * vri)
        t = torch.sqrt(vrr + vii + 2 * s)
        inv = 1.0 / (s * t)
        return (vii + s) * inv, -vri * inv, (vrr + s) * inv

    def _matrix(self, vrr, vri, vii):
        """``M = Gamma @ V^{-1/2}`` as (m_rr, m_ri, m_ir, m_ii)."""
        wrr, wri, wii = self.inverse_sqrt(vrr + self.eps, vri, vii + self.eps)
        grr, gri, gii = self.weight
        return grr * wrr + gri * wri, grr * wri + gri * wii, gri * wrr + gii * wri, gri * wri + gii * wii

    @torch.no_grad()
    def fold(self) -> tuple[torch.Tensor, ...]:
        """Eval-mode constants ``(mean_r, mean_i, m_rr, m_ri, m_ir, m_ii, beta_r, beta_i)``, float32, no grad."""
        m = self._matrix(*self.running_cov)
        return (self.running_mean[0], self.running_mean[1], *m, self.bias[0], self.bias[1])

    def forward(self, x: Pair) -> Pair:
        xr, xi = x
        if not self.training:
            return apply_whitening(xr, xi, self.fold())
        dims = (0, 2, 3) if xr.dim() == 4 else (0,)
        mr, mi = xr.mean(dims), xi.mean(dims)
        view = (1, -1) + (1,) * (xr.dim() - 2)
        cr, ci = xr - mr.view(view), xi - mi.view(view)
        vrr, vri, vii = (cr * cr).mean(dims), (cr * ci).mean(dims), (ci * ci).mean(dims)
        with torch.no_grad():
            n = xr.numel() // xr.shape[1]
            unbias = n / max(n - 1, 1)
            self.running_mean.lerp_(torch.stack([mr, mi]), self.momentum)
            self.running_cov.lerp_(torch.stack([vrr, vri, vii]) * unbias, self.momentum)
            self.num_batches_tracked += 1
        mrr, mri, mir, mii = self._matrix(vrr, vri, vii)
        zr = mrr.view(view) * cr + mri.view(view) * ci + self.bias[0].view(view)
        zi = mir.view(view) * cr + mii.view(view) * ci + self.bias[1].view(view)
        return zr, zi


def apply_whitening(xr: torch.Tensor, xi: torch.Tensor, c: tuple[torch.Tensor, ...]) -> Pair:
    """Eval-mode whitening BN as a fixed sequence of float32 ops (shared with the engine)."""
    mean_r, mean_i, mrr, mri, mir, mii, br, bi = c
    view = (1, -1) + (1,) * (xr.dim() - 2)
    cr = xr - mean_r.view(view)
    ci = xi - mean_i.view(view)
    zr = cr * mrr.view(view)
    zr = zr + ci * mri.view(view)
    zr = zr + br.view(view)
    zi = cr * mir.view(view)
    zi = zi + ci * mii.view(view)
    zi = zi + bi.view(view)
    return zr, zi


class ComplexBatchNorm2d(nn.Module):
    """Complex batch norm over ``C`` complex channels.

    ``mode="naive"``: an independent ``BatchNorm2d`` on the real and on the imaginary part
    (``bn_real``, ``bn_imag``; what the BCNN engine folds into integer thresholds).
    ``mode="whiten"``: full 2x2 covariance whitening (:class:`_WhiteningBatchNorm`).
    In eval mode both are fixed affine maps evaluated as explicit float32 ops.
    """

    def __init__(self, num_features: int, mode: str = "naive", eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if mode not in NORMS:
            raise ConfigError(f"complex batch norm 'norm' must be one of {', '.join(NORMS)}, got {mode!r}")
        self.mode = mode
        if mode == "naive":
            self.bn_real = _FoldedBatchNorm2d(num_features, eps=eps, momentum=momentum)
            self.bn_imag = _FoldedBatchNorm2d(num_features, eps=eps, momentum=momentum)
        else:
            self.whiten = _WhiteningBatchNorm(num_features, eps=eps, momentum=momentum)

    def forward(self, x: ComplexLike) -> ComplexLike:
        xr, xi = as_pair(x)
        if self.mode == "naive":
            out = (self.bn_real(xr), self.bn_imag(xi))
        else:
            out = self.whiten((xr, xi))
        return like_input(x, out)


# -- activations and pooling ----------------------------------------------------------------------------------------


class CReLU(nn.Module):
    """``ReLU(real) + i ReLU(imag)`` (Trabelsi et al. 2018)."""

    def forward(self, x: ComplexLike) -> ComplexLike:
        xr, xi = as_pair(x)
        return like_input(x, (F.relu(xr), F.relu(xi)))


class ComplexMaxPool2d(nn.Module):
    """Max pooling of a complex map.

    ``mode="parts"`` (default): the real and imaginary parts are max-pooled separately, which
    commutes with ``sign`` and so runs on bits in the engine (an OR of the sign bits).
    ``mode="magnitude"``: each window keeps the complex value with the largest modulus.
    """

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0, ceil_mode: bool = False,
                 mode: str = "parts") -> None:
        super().__init__()
        if mode not in ("parts", "magnitude"):
            raise ConfigError(f"ComplexMaxPool2d mode must be 'parts' or 'magnitude', got {mode!r}")
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.ceil_mode, self.mode = ceil_mode, mode

    def forward(self, x: ComplexLike) -> ComplexLike:
        xr, xi = as_pair(x)
        args = (self.kernel_size, self.stride, self.padding, 1, self.ceil_mode)
        if self.mode == "parts":
            return like_input(x, (F.max_pool2d(xr, *args), F.max_pool2d(xi, *args)))
        _, idx = F.max_pool2d(xr * xr + xi * xi, *args, return_indices=True)
        flat = idx.flatten(2)
        pick = lambda t: t.flatten(2).gather(2, flat).view_as(idx)  # noqa: E731
        return like_input(x, (pick(xr), pick(xi)))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, mode={self.mode}"


class ComplexAvgPool2d(nn.Module):
    """Average pooling of both parts (the complex mean); ``kernel_size=None`` is global average pooling."""

    def __init__(self, kernel_size: int | None = None, stride: int | None = None, padding: int = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: ComplexLike) -> ComplexLike:
        xr, xi = as_pair(x)
        if self.kernel_size is None:
            return like_input(x, (F.adaptive_avg_pool2d(xr, 1), F.adaptive_avg_pool2d(xi, 1)))
        args = (self.kernel_size, self.stride or self.kernel_size, self.padding)
        return like_input(x, (F.avg_pool2d(xr, *args), F.avg_pool2d(xi, *args)))


# -- the model boundary ---------------------------------------------------------------------------------------------


class ComplexInput(nn.Module):
    """Turn a model input into a complex pair with ``channels`` complex channels.

    * torch complex tensor ``(B, C, H, W)``: used as it is (any mode);
    * ``mode="stacked"``: a real ``(B, 2C, H, W)`` tensor ``[real; imag]`` (the modulation dataset);
    * ``mode="zero"``: a real image, imaginary part 0 (a stride-0 zero view: the first complex
      layer then skips the products with zero, see :func:`zeros_like_view`);
    * ``mode="fft"``: the 2-D FFT of a real image (``torch.fft.fft2``, ``norm="ortho"``, so energy is kept);
    * ``mode="learned"``: the real image plus a learned imaginary part, one real block
      ``BN -> ReLU -> 3x3 conv`` (Trabelsi et al. 2018);
    * ``mode="auto"``: ``stacked`` for 2-channel inputs, else ``zero``.
    """

    def __init__(self, in_channels: int, mode: str = "auto") -> None:
        super().__init__()
        if mode not in INPUT_MODES:
            raise ConfigError(f"Model option 'complex_input' must be one of {', '.join(INPUT_MODES)}, got {mode!r}.")
        if mode == "auto":
            mode = "stacked" if in_channels == 2 else "zero"
        if mode == "stacked" and in_channels % 2:
            raise ConfigError(f"complex_input='stacked' needs an even number of input channels [real; imag], "
                              f"got {in_channels}.")
        self.mode = mode
        self.in_channels = in_channels  # real input channels of the model
        self.channels = in_channels // 2 if mode == "stacked" else in_channels  # complex channels
        if mode == "learned":
            self.imag = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(),
                                      nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> Pair:
        if x.is_complex():
            return x.real, x.imag
        if self.mode == "stacked":
            return unstack(x)
        if self.mode == "zero":
            return x, zeros_like_view(x)
        if self.mode == "fft":
            f = torch.fft.fft2(x, norm="ortho")
            return f.real.contiguous(), f.imag.contiguous()
        return x, self.imag(x)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, channels={self.channels}"
