"""The int8 first layer's convolution on the CPU's 8-bit dot products, with the float convolution's exact values.

An int8 first layer (:mod:`prunus.bcnn.int8`) convolves integers of magnitude <= 127, and its float32
convolution is exact; the model then multiplies each output channel by its factor ``s * w_o``.  PyTorch's oneDNN
int8 convolution (``torch.ops.onednn.qconv2d_pointwise``, the op of PyTorch's own x86 int8 inference) takes
uint8 activations with a zero point and int8 weights, accumulates in int32, and writes a float32 output scaled
by ``activation scale x weight scale[o]``: with the activation scale 1 and the factors as weight scales that is
one float32 multiply of the exact sum, the model's own value, in the same pass.  On the trained 20x NINs the
engine's whole first-layer step (quantize, convolve, BN and sign) takes a fifth to a third less time on one
thread (benchmarks/results/bcnn_throughput_trained.md).

Where that op is missing (another PyTorch build, a CPU without oneDNN) or gives any other value on a probe at
construction, or for a tensor not on the CPU, the float32 convolution of the integers is used: slower, equal.
A CPU without VNNI (AVX-512 VNNI or AVX-VNNI) can be such a case, shape by shape: on an AMD EPYC with AVX2 the
op's values were off for 2 input channels (oneDNN's pre-VNNI kernels add pairs of uint8 x int8 products in 16
bits, which saturate: 2 x 255 x 127 > 32767) and exact for 1, and the probe chose accordingly.

Tried and not kept (an ad-hoc profile, not a committed benchmark): the patches as int8 columns (a numba kernel)
times the weights in one ``torch._int_mm``; the product alone beat this convolution, but the whole first-layer step
with the columns and an epilogue from the int32 sums did not. Exact bf16 products (integers up to 127 are exact
in bf16) would need a bf16 x bf16 -> fp32 matrix product, which PyTorch's CPU build does not expose
(``torch.mm(..., out_dtype=)`` is not implemented there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Int8Conv"]

ZERO_POINT = 128  # int8 activations in [-127, 127] become uint8 in [1, 255]


class Int8Conv:
    """``conv(x, W) * factor[o]`` for integer-valued float tensors ``x`` (NCHW) and ``W`` (OIHW) within
    [-127, 127] and one float32 ``factor`` per output channel.

    ``kernel`` says which implementation runs: "onednn-int8" or "float32"; ``integer_kernel=False`` asks for the
    float32 convolution (the PyTorch reference's own op).
    """

    def __init__(self, weight: torch.Tensor, factor: torch.Tensor, stride: int, padding: int) -> None:
        self.weight = weight.float().contiguous()
        self.factor = factor.float().contiguous()
        self.stride, self.padding = int(stride), int(padding)
        self._zero_points = torch.zeros(self.weight.shape[0], dtype=torch.int32)
        self._packed = None
        self.kernel = "float32"
        try:
            self._packed = self._prepack()
            probe = torch.randint(-127, 128, (2, weight.shape[1], 12, 12), generator=torch.Generator().manual_seed(0))
            if torch.equal(self._onednn(probe.float()), self._float(probe.float())):
                self.kernel = "onednn-int8"
        except (AttributeError, RuntimeError):  # the op missing or refusing these shapes: the float path
            self._packed = None

    def __call__(self, x: torch.Tensor, integer_kernel: bool = True) -> torch.Tensor:
        if integer_kernel and self.kernel == "onednn-int8" and x.device.type == "cpu":
            return self._onednn(x)
        return self._float(x)

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight.to(x.device), None, self.stride, self.padding)
        return y.mul_(self.factor.to(x.device).view(1, -1, 1, 1))

    def _prepack(self):
        return torch.ops.onednn.qconv_prepack(self.weight.to(torch.int8), self.factor, 1.0, ZERO_POINT,
                                              [self.stride] * 2, [self.padding] * 2, [1, 1], 1, None)

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:
        """The int32 sums times the factors, float32, channels-last (oneDNN's layout)."""
        qx = (x + ZERO_POINT).to(torch.uint8).contiguous(memory_format=torch.channels_last)
        return torch.ops.onednn.qconv2d_pointwise(
            qx, 1.0, ZERO_POINT, self._packed, self.factor, self._zero_points, None,
            [self.stride] * 2, [self.padding] * 2, [1, 1], 1, 1.0, 0, torch.float32, "none", [], "")
