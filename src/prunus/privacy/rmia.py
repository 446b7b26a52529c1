"""RMIA, the relative membership-inference attack (Zarifzadeh, Liu, Shokri & Shokri, ICML 2024).

The attacker asks how much more likely the target makes ``x`` than the population does, and
compares that with population examples ``z``:

    LR(x) = Pr(x | theta) / Pr(x),   score(x) = mean_z 1[ LR(x) / LR(z) > gamma ]

``Pr(x | theta)``: the target's softmax probability of the true label.  ``Pr(x)``: the same
probability averaged over reference models.  *Online* (IN and OUT reference models for every
example): the mean over all of them.  *Offline* (OUT models only): the OUT mean corrected for the
missing IN half by the paper's linear approximation ``Pr(x) = ((1 + a) p_out + (1 - a)) / 2``,
with ``a`` chosen on the reference models alone (each in turn as a pseudo-target; the ``a`` of
the best mean AUC).  *One reference model*: offline with, for each example, the first reference
model that did not train on it (the paper's cheapest setting).

The population ``z`` is the audited examples themselves (members and non-members alike; the
attacker does not know which is which), so the score needs no extra queries.  For a fixed ``z``
the score is a non-decreasing function of ``LR(x)``: ``gamma`` moves ties, not the ranking.
"""

from __future__ import annotations

import numpy as np
import torch

from prunus.privacy.metrics import AttackMetrics, auc, choose_threshold, evaluate_attack, roc_curve

#: the linear approximation's ``a`` tried by offline RMIA (chosen on reference models only)
A_GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def true_label_probability(logits, labels) -> np.ndarray:
    """Softmax probability of each example's label, (..., n) for logits (..., n, classes)."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    logp = torch.log_softmax(z, dim=-1)
    return logp.gather(-1, y.expand(*logp.shape[:-1]).unsqueeze(-1)).squeeze(-1).exp().numpy()


def population_probability(p_ref: np.ndarray, inclusion: np.ndarray, *, online: bool, a: float = 0.0,
                           single: bool = False) -> np.ndarray:
    """``Pr(x)`` per example from the reference models' ``p_ref`` (models, n); NaN where a side has no model."""
    inc = np.asarray(inclusion, dtype=bool)
    if online:
        return p_ref.mean(0)
    out = ~inc
    if single:  # the first reference model that is OUT on each example
        first = np.argmax(out, axis=0)
        p_out = np.where(out.any(0), p_ref[first, np.arange(p_ref.shape[1])], np.nan)
    else:
        with np.errstate(invalid="ignore"):
            p_out = np.where(out, p_ref, 0.0).sum(0) / out.sum(0)
    return 0.5 * ((1 + a) * p_out + (1 - a))


def rmia_scores(p_target: np.ndarray, p_population: np.ndarray, *, gamma: float = 1.0) -> np.ndarray:
    """``score(x) = mean_z 1[LR(x) / LR(z) > gamma]`` with ``z`` = every example that has a ``Pr(z)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = p_target / p_population
    ref = np.sort(lr[np.isfinite(lr)])
    scores = np.searchsorted(ref, lr / gamma, side="left") / max(len(ref), 1)
    return np.where(np.isfinite(lr), scores, np.nan)


def _pseudo_target_scores(p_ref: np.ndarray, inc: np.ndarray, k: int, online: bool, a: float, single: bool,
                          gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference model ``k`` attacked with the others: its scores and its own membership (NaN-free)."""
    others = np.arange(len(p_ref)) != k
    pop = population_probability(p_ref[others], inc[others], online=online, a=a, single=single)
    s = rmia_scores(p_ref[k], pop, gamma=gamma)
    ok = ~np.isnan(s)
    return s[ok], inc[k][ok]


def choose_a(p_ref: np.ndarray, inc: np.ndarray, *, single: bool, gamma: float, calibration_models: int) -> float:
    """The offline approximation's ``a`` with the best mean AUC over reference models played as targets."""
    best, best_auc = A_GRID[0], -1.0
    for a in A_GRID:
        aucs = []
        for k in range(min(calibration_models, len(p_ref))):
            s, m = _pseudo_target_scores(p_ref, inc, k, False, a, single, gamma)
            if m.any() and (~m).any():
                aucs.append(auc(*roc_curve(s, m)[:2]))
        if aucs and float(np.mean(aucs)) > best_auc:
            best, best_auc = a, float(np.mean(aucs))
    return best


def rmia_attack(target_logits, labels, is_member, ref_logits, inclusion, *, online: bool = True,
                single: bool = False, gamma: float = 1.0, calibration_models: int = 8) -> AttackMetrics:
    """RMIA on the target from the reference models' logits (models, n, classes) on the same examples.

    The balanced-accuracy threshold is chosen like LiRA's: on reference models played as targets.
    """
    inc = np.asarray(inclusion, dtype=bool)
    p_ref = true_label_probability(ref_logits, labels)
    p_target = true_label_probability(target_logits, labels)
    a = None if online else choose_a(p_ref, inc, single=single, gamma=gamma, calibration_models=calibration_models)
    pop = population_probability(p_ref, inc, online=online, a=a or 0.0, single=single)
    scores = rmia_scores(p_target, pop, gamma=gamma)
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} examples have no OUT reference model; train more reference "
                         "models")
    pairs = [_pseudo_target_scores(p_ref, inc, k, online, a or 0.0, single, gamma)
             for k in range(min(calibration_models, len(p_ref)))] if len(p_ref) > 1 else []
    ref_s = np.concatenate([s for s, _ in pairs]) if pairs else np.array([])
    ref_m = np.concatenate([m for _, m in pairs]) if pairs else np.array([], dtype=bool)
    threshold, source = None, "none (too few reference models to calibrate a threshold)"
    if len(ref_s) and ref_m.any() and (~ref_m).any():
        threshold = choose_threshold(ref_s, ref_m)
        source = f"best balanced accuracy over {len(pairs)} reference models, each scored as a pseudo-target"
    name = "rmia-online" if online else ("rmia-1ref" if single else "rmia-offline")
    return evaluate_attack(name, scores, is_member, threshold=threshold, threshold_source=source,
                           extra={"reference_models": 1 if single else len(p_ref), "gamma": gamma, "a": a,
                                  "population": "the audited examples"})
