"""Quantization constraint sets: the levels a weight may take, and projections onto them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from prunus.errors import ConfigError

KINDS = ("binary", "ternary", "fixed", "pow2")


_HELP = "binary, ternary, fixed:K or a bit count K (2..8, symmetric fixed point), pow2:K"


_LLOYD_STARTS = (1.0, 0.75, 0.5, 0.35, 0.25)


_LLOYD_ITERS = 30


@dataclass(frozen=True)
class QuantScheme:
    """Which level set, and whether each output channel has its own scale."""

    kind: str
    bits: int
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown quantization {self.kind!r}; use {_HELP}")
        fixed_bits = {"binary": 1, "ternary": 2}.get(self.kind)
        if fixed_bits is not None and self.bits != fixed_bits:
            raise ConfigError(f"{self.kind} quantization uses {fixed_bits} bit(s) per code, not {self.bits}")
        if fixed_bits is None and not 2 <= self.bits <= 8:
            raise ConfigError(f"{self.kind} quantization needs 2 to 8 bits, got {self.bits}")

    @classmethod
    def parse(cls, spec: "str | int | QuantScheme", per_channel: bool = False) -> "QuantScheme":
        """``"binary"``, ``"ternary"``, ``4``, ``"4"``, ``"fixed:4"``, ``"int4"`` or ``"pow2:4"``."""
        if isinstance(spec, QuantScheme):
            return spec
        s = str(spec).strip().lower()
        if s in ("binary", "ternary"):
            return cls(s, 1 if s == "binary" else 2, per_channel)
        mt = re.fullmatch(r"(?:fixed:|int)?(\d+)", s) or re.fullmatch(r"(pow2):(\d+)", s)
        if not mt:
            raise ConfigError(f"cannot parse quantization {spec!r}; use {_HELP}")
        if mt.group(1) == "pow2":
            return cls("pow2", int(mt.group(2)), per_channel)
        return cls("fixed", int(mt.group(1)), per_channel)

    def __str__(self) -> str:
        name = self.kind if self.kind in ("binary", "ternary") else f"{self.kind}:{self.bits}"
        return name + ("/channel" if self.per_channel else "")

    def levels(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """The sorted level set L (multiples of the scale); a code is an index into it."""
        if self.kind == "binary":
            vals = [-1.0, 1.0]
        elif self.kind == "ternary":
            vals = [-1.0, 0.0, 1.0]
        elif self.kind == "fixed":
            q = 2 ** (self.bits - 1) - 1
            vals = [float(v) for v in range(-q, q + 1)]
        else:
            mags = [2.0**-j for j in range(2 ** (self.bits - 1) - 1)]
            vals = sorted([-m for m in mags] + [0.0] + mags)
        return torch.tensor(vals, dtype=dtype, device=device)


@dataclass
class Quantized:
    """``values = scale[row] * levels[codes]`` on the mask, 0 elsewhere (``w``'s shape)."""

    values: torch.Tensor
    codes: torch.Tensor  # int64 indices into scheme.levels(), w's shape
    scale: torch.Tensor  # (rows,): 1 row per tensor, or one per output channel
    mask: torch.Tensor  # bool, w's shape


def _rows(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if per_channel and t.dim() > 1 else t.reshape(1, -1)


def nearest_codes(w_rows: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the level nearest to ``w / scale`` (rows of ``w`` share a scale); ties go to the lower level."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)
    mids = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(w_rows / safe, mids)


def _fit_ternary(w: torch.Tensor, m: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mag = (w.abs() * m).sort(dim=1, descending=True).values
    k = torch.arange(1, w.shape[1] + 1, dtype=w.dtype, device=w.device)
    s = mag.cumsum(1)
    gain = torch.where(k <= m.sum(1, keepdim=True), s.square() / k, torch.zeros_like(s))
    best = gain.argmax(1)
    scale = s.gather(1, best.unsqueeze(1)).squeeze(1) / (best + 1).to(w.dtype)
    threshold = mag.gather(1, best.unsqueeze(1))  # the k-th largest magnitude is kept
    rank_kept = (w.abs() >= threshold) & m
    # exact ties at the threshold may keep a few extra entries; recompute the scale for what is kept
    q = torch.where(rank_kept, torch.sign(w), torch.zeros_like(w))
    scale = _ls_scale(w, q, m, scale)
    return scale, torch.bucketize(q, (levels[1:] + levels[:-1]) / 2)


def _ls_scale(w: torch.Tensor, q: torch.Tensor, m: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    num, den = (w * q * m).sum(1), (q * q * m).sum(1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(fallback))


@torch.no_grad()
def quantize(w: torch.Tensor, scheme: QuantScheme | str | int, mask: torch.Tensor | None = None) -> Quantized:
    """Least-squares projection of ``w``'s masked entries onto ``scale * L`` (see the module docstring)."""
    scheme = QuantScheme.parse(scheme)
    w = w.detach()
    mask = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.to(device=w.device, dtype=torch.bool)
    work = torch.float64 if w.dtype == torch.float64 else torch.float32
    rows, m = _rows(w, scheme.per_channel).to(work), _rows(mask, scheme.per_channel).to(work)
    rows = rows * m
    levels = scheme.levels(work, w.device)
    if scheme.kind == "binary":
        scale = (rows.abs() * m).sum(1) / m.sum(1).clamp(min=1)
        codes = nearest_codes(rows, scale, levels)  # sign(w)
    elif scheme.kind == "ternary":
        scale, codes = _fit_ternary(rows, m.bool(), levels)
    else:
        top = rows.abs().amax(1) / levels[-1]
        best_err = best_scale = best_codes = None
        for start in _LLOYD_STARTS:
            scale = top * start
            for _ in range(_LLOYD_ITERS):
                codes = nearest_codes(rows, scale, levels)
                scale = _ls_scale(rows, levels[codes], m, scale)
            codes = nearest_codes(rows, scale, levels)
            err = ((rows - scale.unsqueeze(1) * levels[codes]).square() * m).sum(1)
            if best_err is None:
                best_err, best_scale, best_codes = err, scale, codes
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_scale = torch.where(better, scale, best_scale)
                best_codes = torch.where(better.unsqueeze(1), codes, best_codes)
        scale, codes = best_scale, best_codes
    values = (scale.unsqueeze(1) * levels[codes] * m).to(w.dtype).reshape(w.shape)
    return Quantized(values, codes.reshape(w.shape), scale.to(w.dtype), mask)


@dataclass(frozen=True)
class LevelSet:
    """Every entry on ``scheme``'s levels (a pruned model's zeros kept by ``mask``): a
    :class:`~prunus.constraints.base.Constraint`."""

    scheme: QuantScheme
    mask: torch.Tensor | None = field(default=None, compare=False)
    kept_entries_free: ClassVar[bool] = False
    removes_filters: ClassVar[bool] = False

    def project(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = quantize(w, self.scheme, self.mask)
        return q.values, q.mask
