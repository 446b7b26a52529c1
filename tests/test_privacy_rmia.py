"""RMIA (Zarifzadeh et al. 2024): exact scores on small cases, and on a simulated target it sees through
per-example difficulty that fools an attack on the raw confidence."""

import numpy as np
import pytest

from prunus.privacy.metrics import auc, roc_curve
from prunus.privacy.rmia import population_probability, rmia_attack, rmia_scores, true_label_probability


def test_scores_are_the_share_of_population_examples_beaten():
    p_target = np.array([0.9, 0.5, 0.1])
    p_pop = np.array([0.5, 0.5, 0.5])  # LR = 1.8, 1.0, 0.2
    assert rmia_scores(p_target, p_pop).tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    # gamma 2: x must beat z by a factor 2: 1.8/2 = 0.9 beats only 0.2; 1.0/2 beats 0.2; 0.2/2 nothing
    assert rmia_scores(p_target, p_pop, gamma=2.0).tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])


def test_population_probability_online_offline_and_one_model():
    p_ref = np.array([[0.8, 0.2, 0.6], [0.4, 0.6, 0.2], [0.6, 0.4, 0.4]])
    inc = np.array([[True, False, True], [False, True, False], [False, False, False]])
    assert population_probability(p_ref, inc, online=True).tolist() == pytest.approx([0.6, 0.4, 0.4])
    # offline: mean over OUT models (0.5, 0.3, 0.3), then ((1 + a) p_out + (1 - a)) / 2 with a = 0.5
    assert population_probability(p_ref, inc, online=False, a=0.5).tolist() == pytest.approx(
        [0.5 * (1.5 * 0.5 + 0.5), 0.5 * (1.5 * 0.3 + 0.5), 0.5 * (1.5 * 0.3 + 0.5)])
    # one model: the first OUT one per example (models 1, 0, 1)
    assert population_probability(p_ref, inc, online=False, a=1.0, single=True).tolist() == pytest.approx(
        [0.4, 0.2, 0.2])


def test_true_label_probability_is_the_softmax_of_the_label():
    logits = np.array([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [3.0, 1.0]]])
    labels = np.array([0, 1])
    p = true_label_probability(logits, labels)
    assert p.shape == (2, 2)
    assert p[0].tolist() == pytest.approx([1 / (1 + np.exp(-2.0)), 0.5])
    assert p[1, 1] == pytest.approx(1 / (1 + np.exp(2.0)))


def simulated(n=2000, models=8, seed=0):
    """Per-example difficulty d_i spreads the confidences widely; training on an example adds 1.5 to its logit gap."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 2.0, n)
    labels = np.zeros(n, dtype=np.int64)

    def logits(member):
        gap = d + 1.5 * member + rng.normal(0.0, 0.3, n)
        return np.stack([gap, np.zeros(n)], axis=1)

    is_member = rng.random(n) < 0.5
    inclusion = rng.permuted(np.repeat([[True], [False]], models // 2, axis=0).repeat(n, 1), axis=0)  # half IN each
    ref = np.stack([logits(inclusion[k]) for k in range(models)])
    return logits(is_member), labels, is_member, ref, inclusion


def test_rmia_calibrates_per_example_difficulty_away():
    target, labels, is_member, ref, inclusion = simulated()
    raw = auc(*roc_curve(true_label_probability(target, labels), is_member)[:2])
    online = rmia_attack(target, labels, is_member, ref, inclusion, online=True)
    offline = rmia_attack(target, labels, is_member, ref, inclusion, online=False)
    single = rmia_attack(target, labels, is_member, ref, inclusion, online=False, single=True)
    assert raw < 0.75  # the confidence alone mostly measures difficulty
    assert online.auc > 0.95 and offline.auc > 0.9 and single.auc > 0.85
    assert online.auc > raw + 0.2
    assert (online.attack, offline.attack, single.attack) == ("rmia-online", "rmia-offline", "rmia-1ref")
    assert single.extra["reference_models"] == 1 and offline.extra["a"] in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert online.balanced_accuracy > 0.85  # the threshold chosen on reference models carries over
