"""Rebuild a checkpoint's model from its recorded architecture and load its weights (no code is unpickled)."""

from __future__ import annotations

import os

import torch.nn as nn

from prunus._optional import require
from prunus.errors import CheckpointError
from prunus.io import Checkpoint, load_checkpoint, resolve_checkpoint
from prunus.models import build_model
from prunus.models.shapes import apply_layer_shapes


def load_model(path: str | os.PathLike) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a checkpoint's model from its recorded architecture and load its weights.

    A physically pruned model (see :mod:`prunus.deploy.surgery`) also records its layers' channel
    counts (``meta["model"]["layers"]``, :mod:`prunus.models.shapes`); they are applied first.
    A DP-SGD model records ``norm: groupnorm``: its BatchNorms are replaced as opacus did.
    """

    ckpt = load_checkpoint(resolve_checkpoint(path))
    record = ckpt.meta.get("model")
    if not isinstance(record, dict) or "name" not in record:
        raise CheckpointError(f"checkpoint {ckpt.path} does not record its model architecture")
    model = build_model(
        record["name"], in_channels=record["in_channels"], num_classes=record["num_classes"],
        **record.get("options", {})
    )
    if record.get("norm") == "groupnorm":  # trained with DP-SGD: opacus replaced BatchNorm with GroupNorm

        require("opacus", f"checkpoint {ckpt.path} (trained with DP-SGD, GroupNorm in place of BatchNorm)")
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)
    if "layers" in record:  # a physically pruned model: narrow the layers to the recorded channel counts

        apply_layer_shapes(model, record["layers"], f"checkpoint {ckpt.path}")
    load_weights(model, ckpt, f"model {record['name']}")
    return model, ckpt


def load_weights(model: nn.Module, checkpoint: Checkpoint, what: str) -> None:
    """Load a checkpoint's weights; a shape or name mismatch is one CheckpointError line."""
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit {what} ({first})") from None
