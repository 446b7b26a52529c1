"""Membership inference: honest leakage measurements and defenses (MCMIA, arXiv 2008.13578).

* :mod:`prunus.privacy.splits`: members / evaluation non-members / attacker pool, recorded in checkpoints;
* :mod:`prunus.privacy.metrics`: ROC, AUC, TPR at low FPR, balanced accuracy at a threshold fixed on reference data;
* :mod:`prunus.privacy.attacks`: metric attacks (loss, confidence, entropy, modified entropy), Shokri's
  shadow-model attack, LiRA (online and offline);
* :mod:`prunus.privacy.defenses`: pruning, adversarial regularization (the min-max game), MCMIA, DP-SGD;
* :mod:`prunus.privacy.audit`: what ``prunus audit`` runs (:mod:`~prunus.privacy.audit_config` names the attacks;
  :mod:`~prunus.privacy.references` trains the shadow and reference models; :mod:`~prunus.privacy.report` writes
  the table and the ROC plots);
* :mod:`prunus.privacy.bank`: shadow/reference models' outputs, trained once per split and shared by audits.

Importing this package needs neither opacus nor matplotlib; DP-SGD and the plots ask for them when used.
"""

from prunus.privacy.bank import ReferenceBank
from prunus.privacy.metrics import AttackMetrics, choose_threshold, evaluate_attack, roc_curve
from prunus.privacy.splits import MembershipSplit, SplitRecord, make_split, split_of_checkpoint

__all__ = ["AttackMetrics", "MembershipSplit", "ReferenceBank", "SplitRecord", "choose_threshold", "evaluate_attack",
           "make_split", "roc_curve", "split_of_checkpoint"]
