"""prunus: optimization-based model compression for PyTorch (SLR, ADMM, reweighted, MCMIA, BCNN).

The names a user reaches for first::

    from prunus import Plan, SLR, ADMM, Reweighted, MaskKeeper, load_dataset, build_model

Everything else lives in the package of its pipeline stage (see docs/architecture.md):
``constraints`` -> ``plan`` -> ``methods`` -> ``harden`` -> ``train`` -> ``deploy``, with
``privacy``, ``bcnn``, ``data``, ``models``, ``jobs`` and ``cli`` beside them.
"""

__version__ = "0.1.0"

from prunus.data import load_dataset  # noqa: E402
from prunus.errors import CheckpointError, ConfigError, DataError, PrunusError  # noqa: E402
from prunus.harden.keepers import MaskKeeper, QuantKeeper  # noqa: E402
from prunus.methods import ADMM, SLR, Magnitude, Reweighted  # noqa: E402
from prunus.models import build_model  # noqa: E402
from prunus.models.loading import load_model  # noqa: E402
from prunus.plan.quant import QuantPlan  # noqa: E402
from prunus.plan.recipe import Plan  # noqa: E402

__all__ = ["__version__", "Plan", "QuantPlan", "SLR", "ADMM", "Reweighted", "Magnitude", "MaskKeeper", "QuantKeeper",
           "load_dataset", "build_model", "load_model", "PrunusError", "ConfigError", "DataError", "CheckpointError"]
