"""Defenses against membership inference, one strategy per module, all run by :func:`run_defense`.

* :mod:`~prunus.privacy.defenses.config`: :class:`DefenseConfig`, what ``prunus defend`` runs;
* :mod:`~prunus.privacy.defenses.game`: the min-max game (adversarial regularization);
* :mod:`~prunus.privacy.defenses.relaxloss`: RelaxLoss;
* :mod:`~prunus.privacy.defenses.prune`: pruning alone, and MCMIA (pruning + the game);
* :mod:`~prunus.privacy.defenses.dpsgd`: DP-SGD with opacus;
* :mod:`~prunus.privacy.defenses.context`: the shared :class:`DefenseContext`, built and checked before anything
  is written;
* :mod:`~prunus.privacy.defenses.run`: :func:`run_defense`, which dispatches to a strategy and saves the result.
"""

from prunus.privacy.defenses.config import DEFENSES, DefenseConfig
from prunus.privacy.defenses.context import load_defended
from prunus.privacy.defenses.game import AdversarialRegularizer
from prunus.privacy.defenses.relaxloss import RelaxLoss
from prunus.privacy.defenses.run import run_defense

__all__ = ["DEFENSES", "AdversarialRegularizer", "DefenseConfig", "RelaxLoss", "load_defended", "run_defense"]
