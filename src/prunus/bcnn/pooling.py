"""Complex activation, pooling and the model boundary (how a real or complex input becomes a pair)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunus.bcnn.layers import INPUT_MODES, ComplexLike, Pair, as_pair, like_input, unstack, zeros_like_view
from prunus.errors import ConfigError


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
