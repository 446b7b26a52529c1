"""Membership-inference attacks against any classifier, from its logits.

Every attack gives one score per example, *higher = more likely a member*, and is
evaluated by :func:`prunus.privacy.metrics.evaluate_attack`.  Attacks only ever see
a model's outputs on single, un-augmented queries (one forward pass per example in
eval mode); Carlini et al. also average over augmented queries, which makes LiRA
stronger on augmented training, so the numbers here are for single queries.

Metric attacks (Yeom et al. 2018; Song & Mittal 2021), :data:`METRIC_ATTACKS`:

* ``loss``: minus the cross-entropy of the true label;
* ``confidence``: the largest softmax probability;
* ``entropy``: minus the entropy of the softmax;
* ``mentr``: minus Song & Mittal's modified entropy
  ``-(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)`` (monotone in the correctness
  *and* the confidence of the prediction).

Their thresholds (:class:`Thresholds`, global or one per class) are chosen by
:func:`~prunus.privacy.metrics.choose_threshold` on *shadow models'* scores on their own
members and non-members (drawn from the attacker's pool), never on the target's members.

Shadow-model attack (Shokri et al. 2017), :class:`ShadowAttack`: an MLP (scikit-learn)
trained on shadow models' outputs labelled in/out, one global model or one per class.

LiRA (Carlini et al. 2022), :func:`lira_scores`: the logit-scaled confidence
``phi = log(p_y / (1 - p_y))`` (computed as ``z_y - logsumexp_{i != y} z_i``) is modelled
per example by Gaussians fitted to reference models that did (IN) or did not (OUT)
train on the example.  Online: the log-likelihood ratio ``log N(phi; mu_in, s_in) -
log N(phi; mu_out, s_out)``; offline: the one-sided test against OUT only, scored by
``(phi - mu_out) / s_out`` (monotone in ``Pr[Z <= phi]``, so it has the same ROC).
Variances are per example, or one global variance per side (Carlini's choice below 64
reference models; the default here, see :func:`lira_scores`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prunus.privacy.metrics import AttackMetrics, choose_threshold, evaluate_attack

# -- model outputs ----------------------------------------------------------------------------


@torch.no_grad()
def model_logits(model: nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu",
                 batch_size: int = 1000) -> np.ndarray:
    """Logits of ``model`` (eval mode, no augmentation) on ``images``, as float64 numpy (N, classes)."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs).double().numpy()


def _prepare(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if z.dim() != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits must be (N, classes) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    return z, y


def loss_score(logits, labels) -> np.ndarray:
    """Minus the cross-entropy loss of the true label (members have low loss)."""
    z, y = _prepare(logits, labels)
    return (-F.cross_entropy(z, y, reduction="none")).numpy()


def confidence_score(logits, labels) -> np.ndarray:
    """The largest predicted probability (label-free)."""
    z, _ = _prepare(logits, labels)
    return torch.softmax(z, 1).max(1).values.numpy()


def entropy_score(logits, labels) -> np.ndarray:
    """Minus the entropy of the prediction (label-free)."""
    z, _ = _prepare(logits, labels)
    logp = torch.log_softmax(z, 1)
    return (logp.exp() * logp).sum(1).numpy()


def _log1m_softmax(z: torch.Tensor) -> torch.Tensor:
    """log(1 - p_i) for every class, stable also where p_i is close to 1."""
    p = torch.softmax(z, 1)
    out = torch.log1p(-p.clamp(max=0.5))
    top = z.argmax(1)
    masked = z.clone()
    masked[torch.arange(len(z)), top] = -torch.inf
    # only the top class can have p > 1/2: log(1 - p_top) = logsumexp(others) - logsumexp(all)
    exact = torch.logsumexp(masked, 1) - torch.logsumexp(z, 1)
    rows = torch.arange(len(z))
    out[rows, top] = torch.where(p[rows, top] > 0.5, exact, out[rows, top])
    return out


def mentr_score(logits, labels) -> np.ndarray:
    """Minus Song & Mittal's modified entropy (low for confident correct predictions: members)."""
    z, y = _prepare(logits, labels)
    logp = torch.log_softmax(z, 1)
    log1m = _log1m_softmax(z)
    rows = torch.arange(len(y))
    p = logp.exp()
    term_y = -log1m[rows, y].exp() * logp[rows, y]  # -(1 - p_y) log p_y
    others = -(p * log1m)  # -p_i log(1 - p_i)
    others[rows, y] = 0.0
    return (-(term_y + others.sum(1))).numpy()


def lira_phi(logits, labels) -> np.ndarray:
    """Logit-scaled confidence ``log(p_y / (1 - p_y)) = z_y - logsumexp_{i != y} z_i`` (stable)."""
    z, y = _prepare(logits, labels)
    rows = torch.arange(len(y))
    others = z.clone()
    others[rows, y] = -torch.inf
    return (z[rows, y] - torch.logsumexp(others, 1)).numpy()


METRIC_ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "loss": loss_score, "confidence": confidence_score, "entropy": entropy_score, "mentr": mentr_score,
}


# -- thresholds chosen on reference data ----------------------------------------------------------


@dataclass
class Thresholds:
    """A global threshold, optionally refined per class; predict "member" when ``score >= threshold``."""

    global_: float
    per_class: dict[int, float] | None = None
    source: str = ""

    @classmethod
    def fit(cls, ref_scores, ref_labels, ref_is_member, *, per_class: bool = False, min_per_side: int = 5,
            source: str = "reference data") -> "Thresholds":
        """Choose the balanced-accuracy-optimal threshold on reference data only.

        Per class (Song & Mittal 2021), each class with at least ``min_per_side`` reference
        members and non-members gets its own; other classes use the global threshold.
        """
        s = np.asarray(ref_scores, dtype=np.float64)
        y = np.asarray(ref_labels)
        m = np.asarray(ref_is_member, dtype=bool)
        glob = choose_threshold(s, m)
        classes = None
        if per_class:
            classes = {}
            for c in np.unique(y):
                sel = y == c
                if m[sel].sum() >= min_per_side and (~m[sel]).sum() >= min_per_side:
                    classes[int(c)] = choose_threshold(s[sel], m[sel])
        return cls(glob, classes, source)

    def predict(self, scores, labels) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        t = np.full(len(s), self.global_)
        if self.per_class:
            y = np.asarray(labels)
            for c, value in self.per_class.items():
                t[y == c] = value
        return s >= t


def metric_attack(
    name: str,
    logits,
    labels,
    is_member,
    *,
    ref_logits,
    ref_labels,
    ref_is_member,
    per_class: bool = False,
    ref_source: str = "shadow models' own members and non-members (attacker pool)",
) -> AttackMetrics:
    """A metric attack on the target; its threshold comes from ``ref_*`` (shadow models), never from the target."""
    score = METRIC_ATTACKS[name]
    thresholds = Thresholds.fit(score(ref_logits, ref_labels), ref_labels, ref_is_member, per_class=per_class,
                                source=ref_source)
    scores = score(logits, labels)
    how = "per-class thresholds" if per_class else "one threshold"
    return evaluate_attack(
        name, scores, is_member, threshold=None if per_class else thresholds.global_,
        predictions=thresholds.predict(scores, labels),
        threshold_source=f"{how} maximising balanced accuracy on {ref_source}",
        extra={"per_class_thresholds": thresholds.per_class} if per_class else {},
    )


# -- Shokri et al.'s shadow-model attack -------------------------------------------------------------


def _shadow_features(logits, labels, per_class: bool) -> np.ndarray:
    z, y = _prepare(logits, labels)
    logp = torch.log_softmax(z, 1).clamp(min=-30.0)
    if per_class:  # Shokri: the prediction vector, one attack model per class
        return logp.exp().numpy()
    probs_sorted = logp.exp().sort(1, descending=True).values
    return torch.cat([probs_sorted, logp[torch.arange(len(y)), y][:, None]], 1).numpy()


class ShadowAttack:
    """Shokri et al. (2017): an attack classifier trained on shadow models' outputs (in = 1, out = 0).

    ``per_class=False``: one MLP on the sorted probability vector plus ``log p_y``;
    ``per_class=True``: one MLP per true class on the probability vector (classes the
    shadow data lacks fall back to the global model).
    """

    def __init__(self, *, per_class: bool = False, hidden: tuple[int, ...] = (64,), seed: int = 0, max_iter: int = 300):
        self.per_class, self.hidden, self.seed, self.max_iter = per_class, hidden, seed, max_iter
        self.models: dict[int | None, object] = {}

    def _new(self):
        return make_pipeline(StandardScaler(), MLPClassifier(self.hidden, max_iter=self.max_iter,
                                                             random_state=self.seed,
                                                             early_stopping=False))

    def fit(self, logits, labels, is_member) -> "ShadowAttack":
        m = np.asarray(is_member, dtype=bool)
        y = np.asarray(labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.models[None] = self._new().fit(_shadow_features(logits, labels, False), m)
            if self.per_class:
                feats = _shadow_features(logits, labels, True)
                for c in np.unique(y):
                    sel = y == c
                    if m[sel].any() and (~m[sel]).any():
                        self.models[int(c)] = self._new().fit(feats[sel], m[sel])
        return self

    def score(self, logits, labels) -> np.ndarray:
        """Probability of "member" per example."""
        y = np.asarray(labels)
        out = self.models[None].predict_proba(_shadow_features(logits, labels, False))[:, 1]
        if self.per_class:
            feats = _shadow_features(logits, labels, True)
            for c, model in self.models.items():
                if c is not None and (y == c).any():
                    out[y == c] = model.predict_proba(feats[y == c])[:, 1]
        return out

    def attack(self, logits, labels, is_member) -> AttackMetrics:
        scores = self.score(logits, labels)
        return evaluate_attack(
            "shadow" + ("-per-class" if self.per_class else ""), scores, is_member, threshold=0.5,
            threshold_source="the attack classifier's decision (p >= 0.5), "
                             "learnt on shadow models' balanced in/out data",
        )


# -- LiRA ----------------------------------------------------------------------------------------------

MIN_STD = 1e-3  # floor for fitted standard deviations (a constant phi must not give an infinite ratio)


def _masked_mean_std(phi: np.ndarray, mask: np.ndarray, global_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of ``phi`` over the models where ``mask`` holds; NaN where none do."""
    count = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, phi, 0.0).sum(0) / count
        dev = np.where(mask, phi - mean[None, :], 0.0)
        if global_variance:
            pooled = float(np.sqrt((dev ** 2).sum() / max(int(count.sum()) - int((count > 0).sum()), 1)))
            std = np.full(phi.shape[1], max(pooled, MIN_STD))
        else:
            std = np.sqrt((dev ** 2).sum(0) / np.maximum(count - 1, 1))
            std = np.maximum(std, MIN_STD)
    std = np.where(count > 0, std, np.nan)
    return mean, std


def lira_scores(phi_target, phi_ref, inclusion, *, online: bool = True,
                global_variance: bool | None = None) -> np.ndarray:
    """LiRA scores (higher = member) of ``phi_target`` (n,) given reference ``phi_ref`` (models, n).

    ``inclusion[k, i]`` tells whether reference model ``k`` trained on example ``i``.
    ``global_variance=None`` uses one variance per side when fewer than 64 reference models
    are available on a side, per-example variances otherwise (Carlini et al.).  Examples with
    no IN model (online) or no OUT model get NaN.
    """
    phi_ref = np.asarray(phi_ref, dtype=np.float64)
    inc = np.asarray(inclusion, dtype=bool)
    x = np.asarray(phi_target, dtype=np.float64)
    if phi_ref.shape != inc.shape or phi_ref.shape[1:] != x.shape:
        raise ValueError(f"phi_ref {phi_ref.shape}, inclusion {inc.shape} and phi_target {x.shape} do not match")
    if global_variance is None:
        global_variance = min(int(inc.sum(0).min()), int((~inc).sum(0).min())) < 64 if online else \
            int((~inc).sum(0).min()) < 64
    mu_out, s_out = _masked_mean_std(phi_ref, ~inc, global_variance)
    if not online:
        return (x - mu_out) / s_out
    mu_in, s_in = _masked_mean_std(phi_ref, inc, global_variance)

    def logpdf(v, mu, s):
        return -0.5 * ((v - mu) / s) ** 2 - np.log(s)

    return logpdf(x, mu_in, s_in) - logpdf(x, mu_out, s_out)


def lira_attack(
    phi_target, is_member, phi_ref, inclusion, *, online: bool = True, global_variance: bool | None = None,
    calibration_models: int = 8,
) -> AttackMetrics:
    """LiRA on the target, with a balanced-accuracy threshold calibrated on the reference models only.

    Calibration: each of up to ``calibration_models`` reference models in turn plays the
    target, scored with the *other* reference models; the threshold that maximises the
    balanced accuracy over these pseudo-targets' own IN/OUT examples is then applied to
    the real target.  The target's membership is used for nothing but the evaluation.
    """
    phi_ref = np.asarray(phi_ref, dtype=np.float64)
    inc = np.asarray(inclusion, dtype=bool)
    n_models = len(phi_ref)
    scores = lira_scores(phi_target, phi_ref, inc, online=online, global_variance=global_variance)
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} examples have no {'IN or ' if online else ''}OUT "
                         "reference model; "
                         "train more reference models")
    ref_s, ref_m = [], []
    for k in range(min(calibration_models, n_models)):
        others = np.arange(n_models) != k
        s = lira_scores(phi_ref[k], phi_ref[others], inc[others], online=online, global_variance=global_variance)
        ok = ~np.isnan(s)
        ref_s.append(s[ok])
        ref_m.append(inc[k][ok])
    ref_s_all = np.concatenate(ref_s) if ref_s else np.array([])
    ref_m_all = np.concatenate(ref_m) if ref_m else np.array([], dtype=bool)
    if len(ref_s_all) and ref_m_all.any() and (~ref_m_all).any():
        threshold = choose_threshold(ref_s_all, ref_m_all)
        source = (f"best balanced accuracy over {len(ref_s)} reference models, each scored as a pseudo-target "
                  f"by the other {n_models - 1}")
    elif online:
        threshold, source = 0.0, "likelihood ratio 1 (Bayes decision at equal priors; too few models to calibrate)"
    else:
        threshold, source = None, "none (too few reference models to calibrate a threshold)"
    name = "lira-online" if online else "lira-offline"
    gv = global_variance
    if gv is None:
        sides = [inc.sum(0).min(), (~inc).sum(0).min()] if online else [(~inc).sum(0).min()]
        gv = int(min(sides)) < 64
    return evaluate_attack(name, scores, is_member, threshold=threshold, threshold_source=source,
                           extra={"reference_models": n_models, "global_variance": bool(gv),
                                  "in_models_per_example_min": int(inc.sum(0).min()),
                                  "out_models_per_example_min": int((~inc).sum(0).min())})
