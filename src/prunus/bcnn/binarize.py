"""Binarization for BCNN: signs with a straight-through estimator, and per-channel scales.

Conventions (the inference engine, :mod:`prunus.bcnn.engine`, reproduces them bit for bit):

* ``sign(x) = +1 if x >= 0 else -1``.  So ``sign(0) = sign(-0.0) = +1`` (``torch.sign`` would
  give 0, which is not a binary value).  Real and imaginary parts are binarized separately.
* Backward is the straight-through estimator with clipping (Hubara et al. 2016): the gradient
  passes unchanged where ``|x| <= 1`` and is zero where ``|x| > 1``.  The same rule is used
  for weights and activations.
* Weight scale: one factor per complex *output* channel ``o``, shared by its real and imaginary
  parts, ``alpha_o = mean(|Wr[o]|, |Wi[o]|)`` over all its real and imaginary weights (XNOR-Net's
  L1 scale).  It is computed from the latent weights without gradient, and it multiplies the
  integer output of the +-1 convolution (never the weights), so a binary layer's output is
  exactly ``alpha_o * integer``.  With ``scale=False`` the factor is 1.
* A pruned filter (every real and imaginary weight of the output channel exactly 0) has
  ``alpha_o = 0`` in both modes: it outputs exactly 0, as it would once removed, instead of
  the +1 weights that ``sign(0)`` would give.
"""

from __future__ import annotations

import torch


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` (zero included), -1 elsewhere; same dtype as ``x``."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


class _SignSTE(torch.autograd.Function):
    """sign() forward, clipped straight-through backward: grad * 1{|x| <= 1}."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` with the clipped straight-through estimator as its gradient."""
    return _SignSTE.apply(x)


@torch.no_grad()
def channel_scale(weight: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """Per-output-channel factor of a binary layer whose weight is ``[Wr | Wi]`` along dim 1.

    ``mean |W[o]|`` over the whole row (real and imaginary weights) when ``scale``, else 1;
    0 for an all-zero (pruned) row either way.  No gradient flows through it.
    """
    rows = weight.detach().flatten(1)
    if scale:
        return rows.abs().mean(1)
    return (rows != 0).any(1).to(weight.dtype)
