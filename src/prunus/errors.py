"""User-facing errors.

A :class:`PrunusError` is a *user* mistake (bad recipe, missing or corrupt data,
a ratio of 1.3, an unknown model name).  Its message is one sentence that names
the file or field at fault and how to fix it.  The CLI prints it on one line and
exits with code 2, with no traceback; bugs in prunus itself stay ordinary
exceptions so they are never mistaken for user errors.
"""

from __future__ import annotations


class PrunusError(Exception):
    """A mistake the user can fix; the CLI reports it in one line, exit code 2."""


class DataError(PrunusError):
    """A dataset is missing, truncated, corrupt or in an unexpected format."""


class ConfigError(PrunusError):
    """A command-line value, recipe field or model/dataset name is invalid."""


class CheckpointError(PrunusError):
    """A checkpoint or run directory is missing, incomplete or corrupt."""


class MissingDependencyError(PrunusError):
    """An optional package that a feature needs (e.g. torch-pruning for surgery) is not installed."""


class SurgeryError(PrunusError):
    """Removing pruned channels would change the model's outputs, so prunus refused to do it."""


class ExportError(PrunusError):
    """An exported model does not reproduce PyTorch's outputs, or could not be written."""


class TrainingDiverged(PrunusError):
    """The training loss (or a method's penalty) became NaN or infinite; the last good checkpoint is kept."""
