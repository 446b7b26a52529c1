"""Optional dependencies, imported only by the feature that needs them.

prunus imports without torch-pruning, onnx, onnxruntime, opacus, matplotlib or numba; calling
surgery, export, DP-SGD, the audit's or the report's plots or the BCNN engine without them raises
one clear :class:`~prunus.errors.MissingDependencyError`
naming the package and how to install it, instead of a bare ``ImportError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from prunus.errors import MissingDependencyError

#: import name -> (pip package, extra of prunus that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "torch_pruning": ("torch-pruning", "surgery"),
    "onnx": ("onnx", "surgery"),
    "onnxruntime": ("onnxruntime", "surgery"),
    "opacus": ("opacus", "privacy"),
    "matplotlib": ("matplotlib", "privacy"),
    "numba": ("numba", "bcnn"),
}


def require(module: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying that ``purpose`` needs it.

    ``extra`` names the extra of prunus to install when the feature's own extra is not the package's usual one
    (matplotlib: ``privacy`` for the audit, ``report`` for ``prunus report``).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        package, usual = PACKAGES.get(module, (module, "surgery"))
        extra = extra or usual
        raise MissingDependencyError(
            f"{purpose} needs the optional package {package}, which is not installed; "
            f"install it with: pip install 'prunus[{extra}]' (or pip install {package})"
        ) from None
