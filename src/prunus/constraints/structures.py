"""Sparsity structures: the groups each one prunes, its ratio rules, and the rounding of counts.

Pure data and validation; the projections onto these sets are in :mod:`prunus.constraints.sparsity`.

Layouts
-------
A weight is ``(out, in)`` (Linear) or ``(out, in, kh, kw)`` (Conv2d; any trailing
kernel dims work where the structure allows).  The *GEMM view* is
``w.reshape(out, -1)``: ``out`` rows and ``in*kh*kw`` columns.

The sets
--------
Each structure partitions the entries of ``w`` into *groups*; the set is
``S = {V : at most k groups of V are nonzero}`` (plus a support rule for
``pattern`` and ``nm``).  With ``G`` groups and pruning ratio ``r``:

============  ===========================================  ==========================================
structure     groups                                        S
============  ===========================================  ==========================================
unstructured  single entries                                at most ``numel - num_pruned(r, numel)`` nonzeros
filter        output channels ``w[o]`` (dim 0)              ``num_pruned(r, out)`` filters are zero
channel       input channels ``w[:, i]`` (dim 1, all kh·kw) ``num_pruned(r, in)`` channels are zero
column        columns of the GEMM view (``in*kh*kw``)       ``num_pruned(r, in*kh*kw)`` columns are zero
block:BHxBW   ``BH x BW`` tiles of the GEMM view            ``num_pruned(r, #blocks)`` blocks are zero
nm:N:M        ``M`` consecutive input channels at each      at most ``N`` nonzeros per group; ratio fixed
              ``(out, kh, kw)`` position (the layout of     at ``1 - N/M``
              sparse tensor cores: ``w.movedim(1, -1)``)
pattern       3x3 kernels ``w[o, i]``                       every kernel's support lies inside one library
                                                            pattern, and at most ``k`` kernels are nonzero
============  ===========================================  ==========================================

``pattern`` (PatDNN): the default library is the 56 patterns of 4 of the 9 kernel
positions (flat index ``3*row + col``) that contain the centre (index 4); a custom
library of equal-size patterns may be given.  Pattern pruning is combined with
kernel (connectivity) pruning so that the ratio is met:
``k = round_half_up((1 - r) * numel / pattern_size)`` kernels survive (clipped to
the kernel count), each keeping exactly its best pattern.  The mask therefore has
``numel - k * pattern_size`` zeros: of all counts achievable this way (``numel``
minus a multiple of ``pattern_size``) it is the one nearest to ``r * numel``
(a tie goes to the smaller zero count), i.e. within ``pattern_size / 2`` of
``r * numel`` and within ``(pattern_size + 1) // 2`` of ``num_pruned(r, numel)``
(2 for the default 4-entry library).  Since a kernel keeps at most ``pattern_size`` of 9 entries, the
ratio must be at least ``(9 - pattern_size) / 9`` (:meth:`Structure.min_ratio`).

Rounding rule
-------------
``num_pruned(r, total) = floor(r * total + 0.5)`` (round half up), clipped to
``[0, total]``.  The product is computed in float64; a product within a relative
``1e-9`` below a half counts as the half, so that a decimal ratio whose binary
value is a hair small still rounds as written (``0.285 * 100`` is
``28.499999999999996`` in float64; ``num_pruned(0.285, 100)`` is 29).  The count is
of *mask* entries: an entry that was already 0 may be "kept".  Note that a ratio
below 1 can still prune every group of a small tensor (``num_pruned(0.9, 2) == 2``).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from prunus.errors import ConfigError

STRUCTURES: tuple[str, ...] = ("unstructured", "filter", "channel", "column", "pattern", "block", "nm")


#: PatDNN's candidate set: every 4-of-9 pattern of a 3x3 kernel that contains the centre (index 4),
#: in lexicographic order (this order breaks ties between equally good patterns).
DEFAULT_PATTERNS: tuple[tuple[int, ...], ...] = tuple(p for p in itertools.combinations(range(9), 4) if 4 in p)


_DEFAULT_BLOCK = (4, 1)


_DEFAULT_NM = (2, 4)


_RATIO_TOL = 1e-9


_SPEC_HELP = "unstructured, filter, channel, column, pattern, block:RxC (e.g. block:4x1) or nm:N:M (e.g. nm:2:4)"


class StructureError(ConfigError):
    """A sparsity structure is invalid, or does not fit a tensor's shape, or the ratio is invalid for it."""


def _shape_str(shape: Sequence[int]) -> str:
    return str(tuple(int(d) for d in shape))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Structure:
    """What to prune: a structure name and its options; validated on construction (:class:`StructureError`).

    ``block`` is ``(rows, cols)`` of a tile of the GEMM view (``"block"`` only), ``n``/``m`` mean keep ``n``
    of every ``m`` (``"nm"`` only), ``patterns`` is a library of 3x3 kernel patterns as flat indices 0..8
    (``"pattern"`` only; ``None`` is :data:`DEFAULT_PATTERNS`).  Options of another structure must be left at
    their defaults.
    """

    name: str
    block: tuple[int, int] = _DEFAULT_BLOCK
    n: int = _DEFAULT_NM[0]
    m: int = _DEFAULT_NM[1]
    patterns: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or name not in STRUCTURES:
            raise StructureError(f"unknown sparsity structure {name!r}; use one of {_SPEC_HELP}")
        # block
        block = self.block
        if not isinstance(block, (tuple, list)) or len(block) != 2 or not all(_is_int(b) and b >= 1 for b in block):
            raise StructureError(
                f"block={block!r} is invalid; a block is two positive integers (rows, cols), e.g. (4, 1)"
            )
        object.__setattr__(self, "block", (int(block[0]), int(block[1])))
        if name != "block" and self.block != _DEFAULT_BLOCK:
            raise StructureError(f"block={self.block} applies only to the 'block' structure, not to {name!r}")
        # n:m
        if not (_is_int(self.n) and _is_int(self.m) and 1 <= self.n <= self.m):
            raise StructureError(f"n={self.n!r}, m={self.m!r} is invalid; N:M sparsity needs integers 1 <= n <= m")
        if name != "nm" and (self.n, self.m) != _DEFAULT_NM:
            raise StructureError(f"n={self.n}, m={self.m} applies only to the 'nm' structure, not to {name!r}")
        # patterns
        if self.patterns is not None:
            if name != "pattern":
                raise StructureError(f"a pattern library applies only to the 'pattern' structure, not to {name!r}")
            object.__setattr__(self, "patterns", _normalize_patterns(self.patterns))

    # -- spec strings ---------------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: "str | dict | Structure") -> "Structure":
        """Parse ``"filter"``, ``"block:8x8"``, ``"nm:2:4"`` (or ``"2:4"``), ``"pattern"``, ``"pattern:0134,1345"``
        or a dict such as ``{"name": "block", "block": [8, 8]}`` / ``{"name": "nm", "n": 2, "m": 4}``."""
        if isinstance(spec, Structure):
            return spec
        if isinstance(spec, dict):
            return cls._parse_dict(spec)
        if not isinstance(spec, str):
            raise StructureError(f"a sparsity structure is a string or a mapping, not {type(spec).__name__}: {spec!r}")
        s = spec.strip().lower().replace(" ", "")
        if s in STRUCTURES:
            return cls(s)
        mt = re.fullmatch(r"block:(\d+)[x*](\d+)", s)
        if mt:
            return cls("block", block=(int(mt.group(1)), int(mt.group(2))))
        mt = re.fullmatch(r"(?:nm:)?(\d+):(\d+)", s)
        if mt:
            return cls("nm", n=int(mt.group(1)), m=int(mt.group(2)))
        mt = re.fullmatch(r"pattern:([0-8]+(?:,[0-8]+)*)", s)
        if mt:
            return cls("pattern", patterns=tuple(tuple(int(c) for c in p) for p in mt.group(1).split(",")))
        raise StructureError(f"cannot parse sparsity structure {spec!r}; use one of {_SPEC_HELP}")

    @classmethod
    def _parse_dict(cls, spec: dict) -> "Structure":
        allowed = {"name", "block", "n", "m", "patterns"}
        unknown = sorted(str(k) for k in spec if k not in allowed)
        if unknown:
            raise StructureError(
                f"sparsity structure {spec!r} has unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        if "name" not in spec:
            raise StructureError(f"sparsity structure {spec!r} has no 'name'; use one of {', '.join(STRUCTURES)}")
        kwargs = dict(spec)
        name = kwargs.pop("name")
        if isinstance(name, str):
            name = name.strip().lower()
        if isinstance(kwargs.get("block"), str):
            mt = re.fullmatch(r"\s*(\d+)\s*[x*]\s*(\d+)\s*", kwargs["block"])
            if not mt:
                raise StructureError(f"block={kwargs['block']!r} is invalid; write it as RxC, e.g. 4x1")
            kwargs["block"] = (int(mt.group(1)), int(mt.group(2)))
        if isinstance(kwargs.get("patterns"), list):
            kwargs["patterns"] = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in kwargs["patterns"])
        return cls(name, **kwargs)

    def __str__(self) -> str:
        if self.name == "block":
            return f"block:{self.block[0]}x{self.block[1]}"
        if self.name == "nm":
            return f"nm:{self.n}:{self.m}"
        if self.name == "pattern" and self.patterns is not None:
            return "pattern:" + ",".join("".join(str(i) for i in p) for p in self.patterns)
        return self.name

    # -- properties -----------------------------------------------------------------------------------------------

    @property
    def library(self) -> tuple[tuple[int, ...], ...]:
        """The pattern library in use (``"pattern"`` only): :attr:`patterns` or :data:`DEFAULT_PATTERNS`."""
        return DEFAULT_PATTERNS if self.patterns is None else self.patterns

    @property
    def pattern_size(self) -> int:
        """Entries kept per surviving 3x3 kernel (``"pattern"`` only)."""
        return len(self.library[0])

    def fixed_ratio(self) -> float | None:
        """``1 - n/m`` for ``"nm"`` (its ratio cannot be chosen); ``None`` for the others."""
        return 1.0 - self.n / self.m if self.name == "nm" else None

    def min_ratio(self, shape: torch.Size | Sequence[int] | None = None) -> float:
        """The smallest ratio the structure can reach: ``(9 - pattern_size) / 9`` for ``"pattern"``, else 0."""
        return (9 - self.pattern_size) / 9 if self.name == "pattern" else 0.0

    def check(self, shape: torch.Size | Sequence[int]) -> None:
        """Raise :class:`StructureError` (one sentence naming the shape and the structure) if it cannot apply."""
        shape = tuple(int(d) for d in shape)
        where = f"shape {_shape_str(shape)}"
        if self.name == "unstructured":
            return
        if self.name == "pattern":
            if len(shape) != 4 or shape[2:] != (3, 3):
                raise StructureError(
                    f"pattern pruning applies only to 3x3 convolution weights (out, in, 3, 3), not to {where}"
                )
            return
        if len(shape) < 2:
            raise StructureError(
                f"{self} pruning needs a weight with at least 2 dimensions (out, in, ...), not {where}; "
                "leave 1-D tensors such as biases unpruned or prune them unstructured"
            )
        if self.name == "block":
            rows, cols = shape[0], math.prod(shape[1:])
            bh, bw = self.block
            if rows % bh or cols % bw:
                bad = f"{rows} rows" if rows % bh else f"{cols} columns"
                by = bh if rows % bh else bw
                raise StructureError(
                    f"{self} does not tile {where}: its GEMM view is ({rows}, {cols}) and {bad} "
                    f"are not a multiple of {by}"
                )
        elif self.name == "nm" and shape[1] % self.m:
            raise StructureError(
                f"{self} groups {self.m} consecutive input channels, but {where} has {shape[1]} input channels, "
                f"which is not a multiple of {self.m}"
            )


def _normalize_patterns(patterns: Any) -> tuple[tuple[int, ...], ...] | None:
    try:
        lib = tuple(tuple(p) for p in patterns)
    except TypeError:
        raise StructureError(
            f"patterns={patterns!r} is invalid; give a list of patterns of flat 3x3 indices 0..8"
        ) from None
    if not lib:
        raise StructureError("the pattern library is empty; give at least one pattern of flat 3x3 indices 0..8")
    out = []
    for p in lib:
        if not p or not all(_is_int(i) and 0 <= i <= 8 for i in p) or len(set(p)) != len(p):
            raise StructureError(f"pattern {p!r} is invalid; a pattern is distinct flat 3x3 kernel indices 0..8")
        out.append(tuple(sorted(p)))
    if len({len(p) for p in out}) != 1:
        sizes = sorted({len(p) for p in out})
        raise StructureError(
            f"the pattern library mixes sizes {sizes}; all patterns must keep the same number of entries"
        )
    if len(set(out)) != len(out):
        raise StructureError("the pattern library lists a pattern twice; list each pattern once")
    result = tuple(out)
    return None if result == DEFAULT_PATTERNS else result


def _round_half_up(x: float) -> int:
    """floor(x + 0.5), where an x within relative 1e-9 below a half counts as the half."""
    return math.floor(x + 0.5 + 1e-9 * max(1.0, abs(x)))


def num_pruned(ratio: float, total: int) -> int:
    """How many of ``total`` groups a ratio prunes: ``floor(ratio * total + 0.5)`` clipped to ``[0, total]``.

    Round half up, in float64; a product within a relative 1e-9 below a half counts as the half (so
    ``num_pruned(0.285, 100) == 29`` although ``0.285 * 100 == 28.499999999999996`` in float64).
    """
    if not _is_int(total) or total < 0:
        raise ValueError(f"total must be a non-negative integer, not {total!r}")
    r = float(ratio)
    if not math.isfinite(r):
        raise StructureError(f"ratio {r!r} is not a finite number; a pruning ratio must be a number in [0, 1)")
    return min(max(_round_half_up(r * total), 0), total)


def _ratio_value(ratio: Any, what: str) -> float:
    bad = isinstance(ratio, (bool, str, bytes))
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        bad = True
    if bad or not (0.0 <= r < 1.0):  # also rejects NaN
        shown = repr(float(ratio)) if not bad else repr(ratio)
        raise StructureError(f"cannot prune {what} at ratio {shown}: a pruning ratio must be a number in [0, 1)")
    return r
