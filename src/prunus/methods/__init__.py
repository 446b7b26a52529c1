"""Constrained pruning methods with one interface: penalty(), step(), hard_prune(), state_dict()."""

from prunus.methods.admm import ADMM
from prunus.methods.base import PruningMethod, batch_closure
from prunus.methods.magnitude import Magnitude
from prunus.methods.reweighted import Reweighted
from prunus.methods.slr import SLR

METHODS = {"slr": SLR, "admm": ADMM, "reweighted": Reweighted, "magnitude": Magnitude}

__all__ = ["ADMM", "SLR", "Magnitude", "Reweighted", "PruningMethod", "METHODS", "batch_closure"]
