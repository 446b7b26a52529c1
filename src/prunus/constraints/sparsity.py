"""Sparsity constraint sets and their exact Euclidean projections.

Pure math on tensors: nothing here knows about models, training or recipes.
ADMM and SLR call :func:`project` every round (``Z = Π_S(W + U)``) and the final
hard prune uses it too, so every projection is a handful of vectorised torch ops
(no Python loop over groups) and is deterministic. The structures themselves
(:class:`~prunus.constraints.structures.Structure`) are described in
:mod:`prunus.constraints.structures`.

Ties
----
Groups are ranked by energy, largest first; equal energies are ranked by index
(the lower flat index is kept; for blocks, row-major over the block grid; for
``pattern``, kernels in ``(out, in)`` order and patterns in library order).  The
result is deterministic and :func:`project` is idempotent: projecting a
projection returns the same tensor and the same mask.  NaN energies rank as
``+inf`` (kept), so a diverged weight stays visible instead of being zeroed.

Why these are exact projections
-------------------------------
For a fixed support mask ``M``, the nearest point of ``{V : supp V ⊆ M}`` is
``W ⊙ M``, at squared distance ``‖W‖² − Σ_{kept groups} E_g`` where ``E_g`` is
the group's energy (sum of squares, :func:`group_scores`).  The groups are
disjoint, so minimising the distance over the feasible supports means keeping
the feasible set of groups of largest total energy; when the only rule is "at
most k groups" that is the k groups of largest energy (keeping more never hurts,
so exactly k are kept).  ``nm`` separates per group of M: keep the N largest
magnitudes in each.  ``pattern`` separates per kernel: a kernel either is zero
(removing all its energy) or keeps one library pattern ``P`` (removing all but
``E(P)``); so a surviving kernel keeps its best pattern, and the distance is
``‖W‖² − Σ_{surviving} max_P E(P)``, minimised by letting the k kernels of
largest best-pattern energy survive.  Ranking is done on energies computed in
floating point, so "exact" means exact up to the rounding of those sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from prunus.constraints.structures import (
    _RATIO_TOL,
    Structure,
    StructureError,
    _ratio_value,
    _round_half_up,
    _shape_str,
    num_pruned,
)


def _gemm(t: torch.Tensor) -> torch.Tensor:
    """The GEMM view ``(dim 0, product of the rest)`` (``reshape(out, -1)`` fails on empty tensors)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _score_dtype(w: torch.Tensor) -> torch.dtype:
    if not w.is_floating_point():
        raise TypeError(f"sparsity projections need a floating-point tensor, not {w.dtype}")
    return torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype


def _nan_to_inf(s: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(s, nan=math.inf) if bool(torch.isnan(s).any()) else s


def _keep_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask over a 1-D score vector keeping the ``keep`` largest; ties go to the lower index.

    Same result as ``sort(descending=True, stable=True)[:keep]`` but O(n): select the threshold with
    ``kthvalue``, keep everything above it, and the first ``need`` (by index) of the entries equal to it.
    """
    n = scores.numel()
    if keep >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if keep <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    scores = _nan_to_inf(scores)
    threshold = torch.kthvalue(scores, n - keep + 1).values
    above = scores > threshold
    need = keep - int(above.sum())
    equal = scores == threshold
    return above | (equal & (torch.cumsum(equal, 0) <= need))


def _keep_per_row(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask over ``(rows, m)`` keeping the ``keep`` largest of each row; ties go to the lower index."""
    scores = _nan_to_inf(scores)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, order[:, :keep], True)


def _pattern_table(structure: Structure, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(9, P)`` 0/1 matrix: column p marks the positions of library pattern p."""
    lib = structure.library
    table = torch.zeros(9, len(lib), dtype=dtype, device=device)
    for p, pattern in enumerate(lib):  # at most C(9, k) <= 126 patterns: setup, not a loop over groups
        table[list(pattern), p] = 1
    return table


def _pattern_energies(w: torch.Tensor, structure: Structure) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best-pattern energy per kernel ``(K,)``, best pattern index ``(K,)``, table ``(9, P)``)."""
    sq = w.detach().reshape(-1, 9).to(_score_dtype(w)).square()
    table = _pattern_table(structure, w.device, sq.dtype)
    energies = sq @ table  # (K, P)
    best = torch.argmax(energies, dim=1)  # documented: the first maximal index
    return energies.gather(1, best.unsqueeze(1)).squeeze(1), best, table


def group_scores(w: torch.Tensor, structure: Structure | str | dict) -> torch.Tensor:
    """Per-group energy (sum of squares) that the projection ranks by.

    Shapes (``w`` is ``(out, in, *kernel)``; ``cols = in * prod(kernel)``):
    unstructured and nm: ``w.shape`` (entries; nm ranks them within each group of m input channels);
    filter ``(out,)``; channel ``(in,)``; column ``(cols,)``; block ``(out/bh, cols/bw)``;
    pattern ``(out, in)``: each kernel's best-pattern energy (what kernel selection ranks by).
    In ``w``'s dtype, or float32 for 16-bit floats.  (For unstructured and nm the projection ranks by ``|w|``,
    the same order without the underflow of squaring.)
    """
    structure = Structure.parse(structure)
    structure.check(w.shape)
    w = w.detach()
    sq = w.to(_score_dtype(w)).square()
    name = structure.name
    if name in ("unstructured", "nm"):
        return sq
    if name == "filter":
        return _gemm(sq).sum(1)
    if name == "channel":
        return _gemm(sq.transpose(0, 1)).sum(1)
    if name == "column":
        return _gemm(sq).sum(0)
    if name == "block":
        bh, bw = structure.block
        rows, cols = w.shape[0], math.prod(w.shape[1:])
        return sq.reshape(rows // bh, bh, cols // bw, bw).sum((1, 3))
    if name == "pattern":
        return _pattern_energies(w, structure)[0].reshape(w.shape[0], w.shape[1])
    raise AssertionError(name)


def group_sums(t: torch.Tensor, structure: Structure | str | dict) -> torch.Tensor:
    """Each entry replaced by the sum of ``t`` over the entry's group, in ``t``'s shape.

    The groups are the structure's (see the module docstring): single entries for unstructured and nm,
    output channels, input channels, GEMM columns, blocks, and whole 3x3 kernels for pattern.  With ``t``
    the squared weights this is every entry's group energy, what a group penalty weighs the entry by.
    """
    structure = Structure.parse(structure)
    structure.check(t.shape)
    shape, name = t.shape, structure.name
    if name in ("unstructured", "nm"):
        return t.clone()
    if name == "filter":
        return _gemm(t).sum(1).reshape((-1,) + (1,) * (t.dim() - 1)).expand(shape).contiguous()
    if name == "channel":
        return t.sum([d for d in range(t.dim()) if d != 1], keepdim=True).expand(shape).contiguous()
    if name == "column":
        return _gemm(t).sum(0, keepdim=True).expand(shape[0], -1).reshape(shape).contiguous()
    if name == "block":
        bh, bw = structure.block
        rows, cols = shape[0], math.prod(shape[1:])
        tiles = t.reshape(rows // bh, bh, cols // bw, bw).sum((1, 3), keepdim=True)
        return tiles.expand(-1, bh, -1, bw).reshape(shape).contiguous()
    if name == "pattern":
        return t.reshape(-1, 9).sum(1, keepdim=True).expand(-1, 9).reshape(shape).contiguous()
    raise AssertionError(name)


def project(
    w: torch.Tensor, structure: Structure | str | dict, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean projection of ``w`` onto the structure's set at ``ratio`` (see the module docstring).

    Returns ``(projected, mask)``: a new tensor of ``w``'s shape, dtype and device (not attached to autograd)
    and a bool mask of ``w.shape`` (False = pruned); ``projected == where(mask, w, 0)``.  ``w`` is not modified.
    Raises :class:`StructureError` if the structure does not fit ``w.shape`` or the ratio is invalid for it.
    """
    structure = Structure.parse(structure)
    shape = tuple(w.shape)
    what = f"shape {_shape_str(shape)} with {structure}"
    r = _ratio_value(ratio, what)
    structure.check(shape)
    w = w.detach()
    name = structure.name
    dtype = _score_dtype(w)

    if name == "nm":
        fixed = structure.fixed_ratio()
        if abs(r - fixed) > _RATIO_TOL:
            raise StructureError(
                f"cannot prune {what} at ratio {r!r}: {structure} keeps {structure.n} of every {structure.m} entries, "
                f"so the ratio of {structure} is {fixed:.3g}"
            )
        moved = w.movedim(1, -1)  # (out, *kernel, in): groups of m consecutive input channels
        scores = moved.reshape(-1, structure.m).abs().to(dtype)
        mask = _keep_per_row(scores, structure.n).reshape(moved.shape).movedim(-1, 1)
    elif name == "pattern":
        low = structure.min_ratio(shape)
        if r < low - _RATIO_TOL:
            raise StructureError(
                f"cannot prune {what} at ratio {r!r}: pattern pruning keeps {structure.pattern_size} of 9 entries "
                f"per kernel, so the ratio must be at least {math.ceil(low * 1000) / 1000:.3f}"
            )
        best_energy, best, table = _pattern_energies(w, structure)
        kernels = best.numel()
        keep = min(max(_round_half_up((1.0 - r) * w.numel() / structure.pattern_size), 0), kernels)
        alive = _keep_mask(best_energy, keep)
        mask = (table.t().bool()[best] & alive.unsqueeze(1)).reshape(shape)
    elif name == "unstructured":
        n = w.numel()
        mask = _keep_mask(w.reshape(-1).abs().to(dtype), n - num_pruned(r, n)).reshape(shape)
    else:
        scores = group_scores(w, structure)
        groups = scores.numel()
        keep = _keep_mask(scores.reshape(-1), groups - num_pruned(r, groups))
        if name == "filter":
            mask = keep.reshape((-1,) + (1,) * (w.dim() - 1)).expand(shape)
        elif name == "channel":
            mask = keep.reshape((1, -1) + (1,) * (w.dim() - 2)).expand(shape)
        elif name == "column":
            mask = keep.reshape(1, -1).expand(shape[0], -1).reshape(shape)
        else:  # block
            bh, bw = structure.block
            grid = keep.reshape(scores.shape)
            mask = grid[:, None, :, None].expand(-1, bh, -1, bw).reshape(shape)
        mask = mask.contiguous()
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)), mask


def project_global(ws: Sequence[torch.Tensor], ratio: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Unstructured projection with ONE ratio shared by all tensors (magnitudes compete across tensors).

    The masks have ``num_pruned(ratio, total numel)`` False entries in all; the result equals the unstructured
    projection of the concatenation of the flattened tensors (ties go to the earlier tensor, then the lower index).
    """
    ws = [w.detach() for w in ws]
    total = sum(w.numel() for w in ws)
    r = _ratio_value(ratio, f"{len(ws)} tensors ({total} entries) globally")
    if not ws:
        return []
    devices = {w.device for w in ws}
    if len(devices) > 1:
        raise ValueError(f"project_global needs all tensors on one device, got {sorted(map(str, devices))}")
    dtype = torch.float64 if any(_score_dtype(w) == torch.float64 for w in ws) else torch.float32
    scores = torch.cat([w.reshape(-1).abs().to(dtype) for w in ws])
    keep = _keep_mask(scores, total - num_pruned(r, total))
    out = []
    for w, m in zip(ws, torch.split(keep, [w.numel() for w in ws])):
        mask = m.reshape(w.shape)
        out.append((torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)), mask))
    return out


@dataclass(frozen=True)
class SparsitySet:
    """"At most k groups of ``structure`` nonzero" at pruning ``ratio``: a
    :class:`~prunus.constraints.base.Constraint`."""

    structure: Structure
    ratio: float
    kept_entries_free: ClassVar[bool] = True

    @property
    def removes_filters(self) -> bool:
        return self.structure.name == "filter"

    def project(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return project(w, self.structure, self.ratio)
