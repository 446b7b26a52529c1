"""Quantization constraint sets: the levels a weight may take, and projections onto them.

A quantized tensor row is ``a * q`` with ``q`` in a fixed level set ``L`` and one
scale ``a > 0`` per tensor (``per_channel=False``) or per output channel:

==========  ===============================================  ===============
scheme      L                                                bits per code
==========  ===============================================  ===============
binary      {-1, +1}                                         1
ternary     {-1, 0, +1}                                      2
fixed:k     {-(2^(k-1)-1), ..., 2^(k-1)-1}  (k = 2..8)       k
pow2:k      {0} U {+-2^-j : j = 0 .. 2^(k-1)-2}  (k = 2..8)  k
==========  ===============================================  ===============

Symmetric fixed point has no -2^(k-1) so that 0 sits in the middle and the set
is symmetric (k = 2 is ternary). The projection minimises ``sum (w - a q)^2``
over ``a`` and ``q`` jointly, over the entries of a *mask* only: pruned entries
are zero before and after, so pruning then quantizing keeps every zero.

* binary: exact, ``q = sign(w)``, ``a = mean |w|``.
* ternary: exact; for the k largest magnitudes kept, the best ``a`` is their
  mean and the error is ``||w||^2 - S_k^2 / k`` (S_k = sum of the k largest
  ``|w|``), so the best k maximises ``S_k^2 / k`` (one sort per row).
* fixed, pow2: alternating least squares (Lloyd): nearest level for a given
  ``a``, then ``a = <w, q> / <q, q>``, from several starting scales; the best
  local optimum found. Not guaranteed global, and every iteration lowers the error.

SLR and ADMM use :class:`QuantPlan` like a pruning plan: their Z-step projects
onto these sets. After training, :class:`QuantKeeper` fine-tunes the hard-quantized
model with a straight-through estimator.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn

from prunus.errors import ConfigError
from prunus.hooks import WeightKeeper
from prunus.plan import prunable_weights

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


# -- plans: the same shape as a pruning plan, so SLR and ADMM project onto levels -------------------------------
@dataclass(frozen=True)
class QuantTarget:
    """One quantized tensor; ``mask`` (pruned = False) keeps a pruned model's zeros."""

    name: str
    scheme: QuantScheme
    mask: torch.Tensor | None = field(default=None, compare=False)
    structure: None = None  # not a sparsity target (hard_prune's filter-bias rule does not apply)

    def project(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = quantize(w, self.scheme, self.mask)
        return q.values, q.mask


class QuantPlan:
    """Quantize the weights of every Conv2d/Linear (or the named ones) with one scheme.

    ``masks``: pruning masks to keep (a weight with a mask is quantized on its mask
    only). Use :meth:`for_pruned` to take them from the zeros of a pruned model.
    """

    global_unstructured = False
    coupled: tuple = ()  # levels are per tensor: no channel sets
    KEPT_ENTRIES_FREE = False  # every entry must reach a level: the penalty acts on all of them

    def __init__(self, scheme: QuantScheme | str | int, names: Sequence[str] | None = None,
                 masks: dict[str, torch.Tensor] | None = None, per_channel: bool = False):
        self.scheme = QuantScheme.parse(scheme, per_channel)
        self.names = list(names) if names is not None else None
        self.masks = dict(masks or {})
        self.source = f"quantization {self.scheme}"

    @classmethod
    def for_pruned(cls, model: nn.Module, scheme: QuantScheme | str | int, per_channel: bool = False) -> "QuantPlan":
        """Every Conv2d/Linear weight; entries that are exactly 0 now stay 0."""
        masks = {n: p.detach() != 0 for n, p in prunable_weights(model)}
        return cls(scheme, [n for n, _ in prunable_weights(model)], masks, per_channel)

    def resolve(self, model: nn.Module) -> list[QuantTarget]:
        params = dict(model.named_parameters())
        names = self.names if self.names is not None else [n for n, _ in prunable_weights(model)]
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"{self.source}: the model has no parameter {missing[0]}")
        return [QuantTarget(n, self.scheme, self.masks.get(n)) for n in names]

    def constrained(self, model: nn.Module) -> list[str]:
        """The parameters the plan constrains: its targets (as for a pruning plan)."""
        return [t.name for t in self.resolve(model)]

    def to_dict(self) -> dict[str, Any]:
        return {"quantize": {"scheme": str(self.scheme), "tensors": self.names}}


class QuantKeeper(WeightKeeper):
    """Straight-through fine-tuning of a hard-quantized model, in any training loop.

    Keeps a float *latent* copy of each quantized weight. The model always holds the
    quantized values, so the forward pass and the gradient are taken at Q(latent);
    after every optimizer step the step's change is moved onto the latent copy and
    the weight is re-quantized: latent += W - Q_prev; W = Q(latent). That is the
    straight-through estimator (dQ/dW taken as 1) without touching the model's
    modules. Scales stay as the hard quantization chose them; masks keep zeros.
    """

    name = "quant"

    def __init__(self, model: nn.Module, plan: QuantPlan):
        params = dict(model.named_parameters())
        self.targets = plan.resolve(model)
        self.params = {t.name: params[t.name] for t in self.targets}
        self.schemes = {t.name: t.scheme for t in self.targets}
        self.levels = {n: self.schemes[n].levels(p.dtype, p.device) for n, p in self.params.items()}
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self._handles: list[Any] = []
        with torch.no_grad():
            for t in self.targets:
                p = self.params[t.name]
                q = quantize(p, t.scheme, t.mask)
                self.state[t.name] = {"latent": p.detach() * q.mask, "scale": q.scale, "mask": q.mask}
        self._held: dict[str, torch.Tensor] = {}  # Q(latent), what each weight held after the last apply
        self._requantize()

    def codes(self, name: str) -> torch.Tensor:
        """Indices into the level set of the current weights (what an export stores)."""
        s = self.state[name]
        rows = _rows(s["latent"], self.schemes[name].per_channel)
        return nearest_codes(rows, s["scale"], self.levels[name]).reshape(s["latent"].shape)

    def quantized(self, name: str) -> torch.Tensor:
        """scale * level of the latent weights, masked: what the model holds between steps."""
        s = self.state[name]
        rows = self.levels[name][_rows(self.codes(name), self.schemes[name].per_channel)] * s["scale"].unsqueeze(1)
        return rows.reshape(s["latent"].shape) * s["mask"]

    @torch.no_grad()
    def _requantize(self) -> None:
        for n, p in self.params.items():
            self._held[n] = self.quantized(n)
            p.copy_(self._held[n])

    @torch.no_grad()
    def apply(self) -> None:
        """Move each step's change onto the latent weights, then re-quantize (one quantization per tensor)."""
        for n, p in self.params.items():
            s = self.state[n]
            s["latent"] += (p - self._held[n]) * s["mask"]
        self._requantize()

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": {n: {k: v.clone() for k, v in s.items()} for n, s in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, tensors in state["tensors"].items():
            self.state[n] = {k: v.to(self.params[n].device) for k, v in tensors.items()}
            self.state[n]["mask"] = self.state[n]["mask"].bool()
        self._requantize()


def bits_needed(scheme: QuantScheme) -> int:
    """Bits of one stored code: ceil(log2 |L|)."""
    return max(1, math.ceil(math.log2(len(scheme.levels()))))
