"""An int8 first layer: integer weights and inputs, so that the engine can run it on an integer kernel bit for bit.

The first layer is the one full-precision convolution of a BCNN and most of the engine's time (51-59% for NIN).
Quantized to int8 it runs on the CPU's 8-bit dot products instead, and the result stays exact:

* weight: one scale per complex output channel, ``w_o = max |W[o]| / 127`` over the row ``[Wr | Wi]`` (real and
  imaginary parts together, as the binary scale), ``W_int = round(W / w_o)`` in [-127, 127]; a pruned (all-zero)
  row keeps integer weights 0 and factor 0;
* input: one scale for the whole input, ``s``, a buffer.  While training it follows the batches' ``max |x| / 127``
  (a moving average, momentum 0.1, as BatchNorm's statistics); in eval it is frozen.  ``x_int = round(x / s)``
  clipped to [-127, 127];
* output: ``conv(x_int, W_int) * (s * w_o)``, then the layer's bias and BN as before.

A float32 convolution of integers of magnitude <= 127 over ``K`` taps is exact, in any summation order, while
``K * 127 * 127 < 2**24`` (``K <= 1040``): every partial sum is an integer float32 holds exactly.  So on the CPU
PyTorch's float convolution, an int8 kernel with int32 accumulators and the engine agree to the bit, and the factor
is one float32 multiply per output on both sides.  (On CUDA, cuDNN may pick FFT or Winograd algorithms, which are
not exact for integers either; the engine's CUDA path runs the model's own first layer.)  Rounding uses the
straight-through estimator (gradient 1; 0 where the input is clipped), the usual quantization-aware training.
"""

from __future__ import annotations

import torch

from prunus.errors import ConfigError

__all__ = ["INT8_MAX", "MAX_EXACT_TAPS", "check_exact_taps", "int8_input", "int8_weight", "observe_input_scale",
           "weight_scales"]

INT8_MAX = 127
#: the most taps (input channels x kernel area) whose int8 products sum exactly in float32
MAX_EXACT_TAPS = (2 ** 24 - 1) // (INT8_MAX * INT8_MAX)
INPUT_SCALE_MOMENTUM = 0.1


class _RoundSTE(torch.autograd.Function):
    """``round`` forward (half to even), identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def check_exact_taps(taps: int, where: str) -> None:
    """A ConfigError when an int8 layer with ``taps`` products per output could leave float32's exact integers."""
    if taps > MAX_EXACT_TAPS:
        raise ConfigError(f"{where}: an int8 layer sums {taps} products per output; float32 sums them exactly only "
                          f"up to {MAX_EXACT_TAPS} (127 x 127 each), so the engine could not reproduce it")


@torch.no_grad()
def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale ``max |W[o]| / 127`` of a ``[Wr | Wi]`` weight (0 for a pruned row)."""
    return weight.detach().float().flatten(1).abs().amax(1) / INT8_MAX


def int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """``round(W / w_o)`` in [-127, 127] as floats (an all-zero row stays 0), gradient straight through."""
    scale = weight_scales(weight)
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).view(-1, *([1] * (weight.dim() - 1)))
    return _RoundSTE.apply(weight / divisor.to(weight.dtype)).clamp(-INT8_MAX, INT8_MAX)


def int8_input(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``round(x / s)`` clipped to [-127, 127], gradient straight through inside the range."""
    return _RoundSTE.apply(x / scale).clamp(-INT8_MAX, INT8_MAX)


@torch.no_grad()
def observe_input_scale(scale: torch.Tensor, *parts: torch.Tensor) -> None:
    """Move the input scale toward this batch's ``max |x| / 127`` (set it outright while it is still 0).

    Tensor operations only (no host sync), so a compiled training step keeps one graph.
    """
    peak = torch.stack([p.detach().abs().amax().float() for p in parts]).amax()
    target = peak.clamp_min(torch.finfo(torch.float32).tiny) / INT8_MAX
    scale.copy_(torch.where(scale == 0, target, scale * (1 - INPUT_SCALE_MOMENTUM) + INPUT_SCALE_MOMENTUM * target))
