"""How well an attack tells members from non-members: ROC, AUC, TPR at low FPR, balanced accuracy.

Every attack produces one score per example, *higher = more likely a member*.
:func:`evaluate_attack` turns (scores, is_member) into an :class:`AttackMetrics`:

* the ROC curve over every threshold (numpy, ties handled as one step), and its AUC
  (trapezoidal, so tied scores count one half, as in the Mann-Whitney statistic);
* ``tpr_at_1pct_fpr`` and ``tpr_at_01pct_fpr``: the highest TPR among ROC points whose
  FPR is at most 1% / 0.1% (Carlini et al. 2022).  With ``n`` non-members the smallest
  non-zero FPR is ``1/n``; below 1000 non-members, "0.1% FPR" means *no* false positive
  at all, which the result says (``fpr_resolution``);
* the balanced accuracy ``(TPR + TNR) / 2`` at **one fixed threshold chosen beforehand
  on reference data** (:func:`choose_threshold`), never on the evaluated members.  The
  best threshold on the evaluation data itself would be optimistic; it is reported
  separately as ``best_balanced_accuracy`` (an upper bound, labelled as such).

The numbers of members and non-members every figure was computed on are part of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _check(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    m = np.asarray(is_member, dtype=bool).ravel()
    if s.shape != m.shape:
        raise ValueError(f"{len(s)} scores but {len(m)} membership labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("attack scores must be finite")
    if m.all() or not m.any():
        raise ValueError("need at least one member and one non-member")
    return s, m


def roc_curve(scores, is_member) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): predicting "member" when ``score >= thresholds[k]`` gives (fpr[k], tpr[k]).

    Starts at (0, 0) with threshold +inf and ends at (1, 1); one point per distinct score.
    """
    s, m = _check(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(m)[last_of_tie]
    fp = np.cumsum(~m)[last_of_tie]
    tpr = np.r_[0.0, tp / m.sum()]
    fpr = np.r_[0.0, fp / (~m).sum()]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve (trapezoidal rule)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """The highest TPR reachable with FPR <= ``max_fpr``."""
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def balanced_accuracy(scores, is_member, threshold: float) -> float:
    """``(TPR + TNR) / 2`` when predicting "member" for ``score >= threshold``."""
    s, m = _check(scores, is_member)
    pred = s >= threshold
    return float(0.5 * (pred[m].mean() + (~pred[~m]).mean()))


def choose_threshold(ref_scores, ref_is_member) -> float:
    """The threshold with the best balanced accuracy on *reference* data (midpoint between scores).

    Callers pass scores of reference models on their own members/non-members (shadow
    models), never the target's: the threshold is then applied unchanged to the target.
    """
    fpr, tpr, thr = roc_curve(ref_scores, ref_is_member)
    k = int(np.argmax(tpr - fpr))  # = argmax of balanced accuracy
    if k == 0:
        return float(np.inf)
    if k == len(thr) - 1:
        return float(-np.inf)
    return float((thr[k] + thr[k + 1]) / 2)  # between this score and the next lower one


@dataclass
class AttackMetrics:
    """One attack's result on one target, with the counts it was computed on."""

    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    members: int
    nonmembers: int
    balanced_accuracy: float | None  # at ``threshold``, chosen on reference data
    threshold: float | None
    threshold_source: str
    best_balanced_accuracy: float  # best threshold on the evaluated data itself: an optimistic upper bound
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)  # per evaluated example, higher = member
    extra: dict[str, Any] = field(default_factory=dict)
    #: 95% bootstrap intervals (members and non-members resampled separately): metric name -> (low, high)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def fpr_resolution(self) -> float:
        """The smallest non-zero FPR these non-members can measure (1 / non-members)."""
        return 1.0 / self.nonmembers

    def to_dict(self, roc_points: int | None = None) -> dict[str, Any]:
        """JSON-able; the ROC is kept whole or thinned to about ``roc_points`` points (log-spaced in FPR)."""
        fpr, tpr = self.fpr, self.tpr
        if roc_points is not None and len(fpr) > roc_points:
            keep = np.unique(np.r_[0, np.searchsorted(fpr, np.geomspace(self.fpr_resolution, 1, roc_points)),
                                   len(fpr) - 1].clip(0, len(fpr) - 1))
            fpr, tpr = fpr[keep], tpr[keep]
        return {
            "attack": self.attack, "auc": self.auc, "balanced_accuracy": self.balanced_accuracy,
            "threshold": None if self.threshold is None or not np.isfinite(self.threshold) else self.threshold,
            "threshold_source": self.threshold_source,
            "best_balanced_accuracy_on_eval_data": self.best_balanced_accuracy,
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr, "tpr_at_0.1pct_fpr": self.tpr_at_01pct_fpr,
            "members": self.members, "nonmembers": self.nonmembers, "fpr_resolution": self.fpr_resolution,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "extra": self.extra, "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        }


def evaluate_attack(
    attack: str,
    scores,
    is_member,
    *,
    threshold: float | None = None,
    predictions=None,
    threshold_source: str = "none",
    extra: dict[str, Any] | None = None,
    bootstrap: int = 200,
) -> AttackMetrics:
    """Metrics of one attack.  ``threshold`` (chosen on reference data) gives the balanced accuracy;
    ``predictions`` (booleans, e.g. from per-class thresholds) may be given instead.  ``bootstrap``
    resamplings give the 95% intervals (0: none)."""
    s, m = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(s, m)
    if predictions is not None:
        pred = np.asarray(predictions, dtype=bool).ravel()
        bal = float(0.5 * (pred[m].mean() + (~pred[~m]).mean()))
    elif threshold is not None:
        bal = balanced_accuracy(s, m, threshold)
    else:
        bal = None
    return AttackMetrics(
        attack=attack, auc=auc(fpr, tpr), tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(fpr, tpr, 0.001), members=int(m.sum()), nonmembers=int((~m).sum()),
        balanced_accuracy=bal, threshold=threshold, threshold_source=threshold_source,
        best_balanced_accuracy=float(0.5 * (1 + np.max(tpr - fpr))), fpr=fpr, tpr=tpr, scores=s,
        extra=dict(extra or {}),
        ci=bootstrap_intervals(s, m, threshold if predictions is None else None, resamples=bootstrap),
    )


def bootstrap_intervals(scores: np.ndarray, is_member: np.ndarray, threshold: float | None = None, *,
                        resamples: int = 200, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of AUC, TPR at 1% and 0.1% FPR (and the balanced accuracy at ``threshold``).

    Members and non-members are resampled separately, so every resample keeps the evaluated counts
    (a stratified bootstrap: the interval reflects which examples were drawn, not how many of each).
    """
    if resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    members, nonmembers = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    label = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    samples: dict[str, list[float]] = {"auc": [], "tpr_at_1pct_fpr": [], "tpr_at_0.1pct_fpr": []}
    if threshold is not None:
        samples["balanced_accuracy"] = []
    for _ in range(resamples):
        pick = np.r_[rng.choice(members, len(members)), rng.choice(nonmembers, len(nonmembers))]
        s = scores[pick]
        fpr, tpr, _ = roc_curve(s, label)
        samples["auc"].append(auc(fpr, tpr))
        samples["tpr_at_1pct_fpr"].append(tpr_at_fpr(fpr, tpr, 0.01))
        samples["tpr_at_0.1pct_fpr"].append(tpr_at_fpr(fpr, tpr, 0.001))
        if threshold is not None:
            samples["balanced_accuracy"].append(balanced_accuracy(s, label, threshold))
    tail = 100 * (1 - level) / 2
    return {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in samples.items()}
