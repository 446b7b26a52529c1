"""Complex batch normalisation: naive (real and imaginary parts apart) or whitening (the 2x2 covariance), with the
folded forms the inference engine uses."""

from __future__ import annotations

import math

import torch
from torch import nn

from prunus.bcnn.layers import NORMS, ComplexLike, Pair, as_pair, like_input
from prunus.errors import ConfigError


class _FoldedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose eval-mode forward is ``x * s + t`` with ``s, t`` from :meth:`fold`.

    Two separate elementwise float32 operations (a multiply, then an add) with per-channel
    constants: an exact, documented function of each input value, which the inference
    engine can reproduce bit for bit (ATen's fused kernel is free to use FMA).

    A filter pruned before it keeps its beta (``keeps_pruned_constant``): with gamma 0 the
    channel emits the constant beta, a constant bit after ``sign`` that the engine folds.
    """

    #: filter pruning zeroes gamma with the filter but leaves beta (see prunus.plan.coupling._constant_kept)
    keeps_pruned_constant = True

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

    # bn_real and bn_imag see separate parts of one input, neither the other's output: a sequential
    # BatchNorm re-estimate (prunus.harden.batchnorm) can estimate them in one pass
    independent_norms = True

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
