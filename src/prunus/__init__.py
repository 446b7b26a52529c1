"""prunus: optimization-based model compression for PyTorch (SLR, ADMM, reweighted, MCMIA, BCNN)."""

__version__ = "0.1.0"

from prunus.errors import CheckpointError, ConfigError, DataError, PrunusError  # noqa: E402

__all__ = ["__version__", "PrunusError", "ConfigError", "DataError", "CheckpointError"]
