"""Constrained pruning methods with one interface: penalty(), step(), hard_prune(), state_dict().

:mod:`prunus.methods.registry` lists them with their options (one dataclass per method).
"""

from prunus.methods.admm import ADMM
from prunus.methods.base import PruningMethod, batch_closure
from prunus.methods.magnitude import Magnitude
from prunus.methods.registry import METHODS, build_method, method_options
from prunus.methods.reweighted import Reweighted
from prunus.methods.slr import SLR

__all__ = ["ADMM", "SLR", "Magnitude", "Reweighted", "PruningMethod", "METHODS", "batch_closure", "build_method",
           "method_options"]
