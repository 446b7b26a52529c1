"""The smallest pruning ratio that reaches a target, for any monotone measure of a plan family.

A MAC reduction, a live-weight compression or a file size grows with the ratio of a plan family
(uniform filter pruning, an early-heavy allocation, ...); what a user asks for is the target
("2x fewer MACs", "20x fewer live weights"), so these searches find the ratio.
"""

from __future__ import annotations

from typing import Callable, Sequence


def smallest_ratio(reaches: Callable[[float], bool], *, lo: float = 0.0, hi: float = 0.99, steps: int = 14) -> float:
    """The smallest ratio in ``(lo, hi]`` with ``reaches(ratio)``, to ``(hi - lo) / 2**steps`` (bisection).

    ``reaches`` must be monotone (once true, true for every larger ratio) and true at ``hi``;
    raises ValueError when it is not true at ``hi``.
    """
    if not reaches(hi):
        raise ValueError(f"the target is out of reach: even ratio {hi} does not reach it")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if not reaches(mid) else (lo, mid)
    return hi


def smallest_on_grid(reaches: Callable[[float], bool], grid: Sequence[float]) -> float:
    """The smallest ratio of the sorted ``grid`` with ``reaches(ratio)`` (binary search; ``reaches`` monotone).

    Raises ValueError when no ratio of the grid reaches the target.
    """
    lo, hi = 0, len(grid) - 1
    if not reaches(grid[hi]):
        raise ValueError(f"the target is out of reach: even ratio {grid[hi]} does not reach it")
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(grid[mid]) else (mid + 1, hi)
    return grid[lo]
