"""Membership-inference metrics, scores, thresholds and splits on inputs with known answers (no training)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import prunus.privacy.attacks as attacks
from prunus.errors import CheckpointError, ConfigError
from prunus.privacy.attacks import (
    Thresholds,
    lira_attack,
    lira_phi,
    lira_scores,
    loss_score,
    mentr_score,
    metric_attack,
)
from prunus.privacy.metrics import balanced_accuracy, choose_threshold, evaluate_attack, roc_curve
from prunus.privacy.splits import MembershipSplit, balanced_inclusion, make_split


def labels(members, nonmembers):
    return np.r_[np.ones(members, bool), np.zeros(nonmembers, bool)]


def test_perfectly_separable_scores():
    scores = np.r_[np.arange(2000) + 5000.0, np.arange(3000.0)]
    r = evaluate_attack("x", scores, labels(2000, 3000), threshold=4000.0)
    assert r.auc == 1.0
    assert r.tpr_at_01pct_fpr == 1.0 and r.tpr_at_1pct_fpr == 1.0
    assert r.balanced_accuracy == 1.0 and r.best_balanced_accuracy == 1.0
    assert (r.members, r.nonmembers) == (2000, 3000)
    assert r.fpr_resolution == pytest.approx(1 / 3000)
    d = r.to_dict(roc_points=50)
    assert d["members"] == 2000 and d["nonmembers"] == 3000 and len(d["roc"]["fpr"]) <= 60


def test_identical_distributions_give_chance():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20000)
    r = evaluate_attack("x", scores, labels(10000, 10000), threshold=0.0)
    assert abs(r.auc - 0.5) < 0.015
    assert abs(r.balanced_accuracy - 0.5) < 0.015
    assert r.tpr_at_1pct_fpr < 0.02 and r.tpr_at_01pct_fpr < 0.004
    assert np.all(np.diff(r.fpr) >= 0) and r.fpr[0] == 0 and r.fpr[-1] == 1 and r.tpr[-1] == 1


def test_hand_made_example():
    scores = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1]  # members first
    m = labels(3, 3)
    # pairs (member > non-member): 0.9 and 0.8 beat all three, 0.3 beats two -> 8/9
    assert evaluate_attack("x", scores, m).auc == pytest.approx(8 / 9)
    assert balanced_accuracy(scores, m, 0.5) == pytest.approx(2 / 3)  # TPR 2/3, TNR 2/3
    assert balanced_accuracy(scores, m, 0.25) == pytest.approx(5 / 6)  # TPR 1, TNR 2/3
    fpr, tpr, thr = roc_curve(scores, m)
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert choose_threshold(scores, m) == pytest.approx(0.25)  # between 0.3 and 0.2


def test_ties_and_agreement_with_sklearn():
    assert evaluate_attack("x", np.ones(10), labels(5, 5)).auc == 0.5
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, 3000).astype(float)  # many ties
    m = rng.random(3000) < 0.4 + 0.01 * scores
    assert evaluate_attack("x", scores, m).auc == pytest.approx(roc_auc_score(m, scores), abs=1e-12)


def test_tpr_at_low_fpr_exact():
    # 1000 non-members score 0..999; 100 members above them all, 100 at 997.5 (two non-members above)
    non = np.arange(1000.0)
    mem = np.r_[np.full(100, 999.5), np.full(100, 997.5)]
    r = evaluate_attack("x", np.r_[mem, non], labels(200, 1000))
    assert r.tpr_at_01pct_fpr == 0.5  # 0.1% of 1000 allows one false positive, the lower members need two
    assert r.tpr_at_1pct_fpr == 1.0


def test_score_functions_are_stable_and_exact():
    z = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [100.0, 0.0, 0.0]])
    y = np.array([0, 2, 0])
    p = torch.softmax(torch.tensor(z), 1).numpy()
    phi = lira_phi(z, y)
    assert phi[:2] == pytest.approx(np.log(p[[0, 1], y[:2]] / (1 - p[[0, 1], y[:2]])))
    assert phi[2] == pytest.approx(100 - np.log(2))  # p_y rounds to 1.0: the naive formula gives inf
    assert loss_score(z, y)[:2] == pytest.approx(np.log(p[[0, 1], y[:2]]))
    naive = []
    for i in range(2):
        py = p[i, y[i]]
        naive.append(-(1 - py) * np.log(py) - sum(p[i, k] * np.log(1 - p[i, k]) for k in range(3) if k != y[i]))
    assert mentr_score(z, y)[:2] == pytest.approx(-np.array(naive))
    assert np.isfinite(mentr_score(z, y)).all()


def test_metric_thresholds_come_from_reference_data_only(monkeypatch):
    """A spy sees every threshold choice: only reference arrays, and the threshold is the reference's."""
    rng = np.random.default_rng(0)
    n = 200
    ref_logits = np.zeros((2 * n, 10))
    ref_labels = rng.integers(0, 10, 2 * n)
    ref_member = labels(n, n)
    # reference: members have loss ~0.01, non-members ~1 -> loss threshold between
    ref_logits[np.arange(2 * n), ref_labels] = np.where(ref_member, 7.0, 1.5)
    # target: members and non-members both confident, but members more so; the best threshold on
    # the *target* would be near -0.002 loss, the reference's near -0.1
    tgt_logits = np.zeros((2 * n, 10))
    tgt_labels = rng.integers(0, 10, 2 * n)
    tgt_member = labels(n, n)
    tgt_logits[np.arange(2 * n), tgt_labels] = np.where(tgt_member, 12.0, 8.0)
    seen = []
    real = attacks.choose_threshold

    def spy(scores, is_member):
        seen.append((np.asarray(scores).copy(), np.asarray(is_member).copy()))
        return real(scores, is_member)

    monkeypatch.setattr(attacks, "choose_threshold", spy)
    r = metric_attack("loss", tgt_logits, tgt_labels, tgt_member, ref_logits=ref_logits, ref_labels=ref_labels,
                      ref_is_member=ref_member)
    assert len(seen) == 1
    assert np.array_equal(seen[0][0], loss_score(ref_logits, ref_labels)) and np.array_equal(seen[0][1], ref_member)
    assert r.threshold == pytest.approx(real(loss_score(ref_logits, ref_labels), ref_member))
    # the reference threshold calls every target example a member: balanced accuracy 50% although AUC is 1
    assert r.auc == 1.0 and r.balanced_accuracy == 0.5
    assert r.best_balanced_accuracy == 1.0  # what a threshold fitted on the target would (dishonestly) report
    assert r.threshold_source == ("one threshold maximising balanced accuracy on shadow models' own members and "
                                  "non-members (attacker pool)")


def test_per_class_thresholds():
    s = np.array([1.0, 2.0, 10.0, 20.0, 0.5, 1.5, 9.0, 19.0])
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    m = np.array([0, 1, 0, 1, 0, 1, 0, 1], bool)
    t = Thresholds.fit(s, y, m, per_class=True, min_per_side=1)
    assert t.per_class[0] == pytest.approx(1.25) and t.per_class[1] == pytest.approx(14.5)
    assert t.predict(s, y).tolist() == m.tolist()
    assert not np.array_equal(Thresholds.fit(s, y, m).predict(s, y), m)  # one global threshold cannot do it


def test_lira_uses_per_example_difficulty():
    """Examples differ in difficulty (offset); IN shifts phi by +2. A global phi threshold is weak, LiRA strong."""
    rng = np.random.default_rng(0)
    n, models = 2000, 16
    offset = rng.normal(0, 5, n)
    inc = balanced_inclusion(models, n, seed=3)
    assert (inc.sum(0) == models // 2).all()
    phi_ref = offset + 2.0 * inc + rng.normal(0, 0.5, (models, n))
    member = rng.random(n) < 0.5
    phi = offset + 2.0 * member + rng.normal(0, 0.5, n)
    plain = evaluate_attack("phi", phi, member).auc
    online = lira_attack(phi, member, phi_ref, inc, online=True)
    offline = lira_attack(phi, member, phi_ref, inc, online=False)
    assert plain < 0.65
    assert online.auc > 0.95 and offline.auc > 0.95
    assert online.balanced_accuracy > 0.9  # threshold calibrated on reference models only
    assert online.extra["global_variance"] is True and online.extra["reference_models"] == models
    per_example = lira_scores(phi, phi_ref, inc, global_variance=False)
    assert evaluate_attack("x", per_example, member).auc > 0.9


def test_lira_needs_in_and_out_models():
    inc = np.array([[True, True], [True, False]])
    with pytest.raises(ValueError, match="no IN or OUT"):
        lira_attack(np.zeros(2), np.array([True, False]), np.zeros((2, 2)), inc)


def test_split_is_disjoint_balanced_and_seeded():
    s = make_split("digits", 1438, 300, seed=4)
    assert (len(s.members), len(s.nonmembers), len(s.pool)) == (300, 300, 838)
    allidx = np.concatenate([s.members, s.nonmembers, s.pool])
    assert sorted(allidx.tolist()) == list(range(1438))
    assert make_split("digits", 1438, 300, seed=4).digest == s.digest != make_split("digits", 1438, 300, seed=5).digest
    again = MembershipSplit.from_state_dict(s.state_dict())
    assert again.digest == s.digest and np.array_equal(again.nonmembers, s.nonmembers)
    with pytest.raises(ConfigError, match="--members 800"):
        make_split("digits", 1438, 800)
    bad = s.state_dict()
    bad["pool"] = torch.cat([bad["pool"], bad["members"][:1]])
    with pytest.raises(CheckpointError, match="overlap"):
        MembershipSplit.from_state_dict(bad)


def test_balanced_inclusion_odd():
    inc = balanced_inclusion(5, 1000, seed=0)
    counts = inc.sum(0)
    assert set(counts.tolist()) == {2, 3} and (counts == 3).sum() == 500


def test_bootstrap_intervals_hold_the_estimate_and_shrink_with_more_examples():
    from prunus.privacy.metrics import bootstrap_intervals, evaluate_attack

    rng = np.random.default_rng(0)
    widths = []
    for n in (400, 8000):
        member = np.arange(n) < n // 2
        scores = rng.normal(0.0, 1.0, n) + 0.5 * member
        result = evaluate_attack("x", scores, member, threshold=0.25)
        lo, hi = result.ci["auc"]
        assert lo < result.auc < hi
        assert result.ci["balanced_accuracy"][0] < result.balanced_accuracy < result.ci["balanced_accuracy"][1]
        assert set(result.ci) == {"auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "balanced_accuracy"}
        assert result.to_dict()["ci"]["auc"] == [lo, hi]
        widths.append(hi - lo)
        assert bootstrap_intervals(scores, member, 0.25) == result.ci  # seeded: the same intervals again
    assert widths[1] < widths[0] / 3  # 20x the examples: about sqrt(20) = 4.5x narrower
    separable = np.r_[np.ones(50), np.zeros(50)]
    assert evaluate_attack("x", separable, separable.astype(bool)).ci["auc"] == (1.0, 1.0)
    assert evaluate_attack("x", separable, separable.astype(bool), bootstrap=0).ci == {}
