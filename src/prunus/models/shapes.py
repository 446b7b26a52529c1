"""The channel counts of a physically pruned model, recorded in its checkpoint so it loads without guessing.

A checkpoint rebuilds its model from ``meta["model"] = {name, in_channels,
num_classes, options}``.  After surgery the layers are narrower than the builder
makes them, so the record also lists every conv/linear/BatchNorm layer's channel
counts (``meta["model"]["layers"]``, plain JSON: no pickle, nothing that runs code)::

    {"conv1": {"in_channels": 1, "out_channels": 5, "groups": 1},
     "bn1": {"num_features": 5}, "fc1": {"in_features": 125, "out_features": 120}}

Loading builds the dense model, :func:`apply_layer_shapes` narrows those layers
(with uninitialised tensors of the recorded shapes), and the state dict fills them;
``load_state_dict`` still checks every tensor's shape.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from prunus.errors import CheckpointError

__all__ = ["layer_shapes", "apply_layer_shapes"]

_CONV_KEYS = ("in_channels", "out_channels", "groups")
_LINEAR_KEYS = ("in_features", "out_features")
_BN_KEYS = ("num_features",)


def _keys(module: nn.Module) -> tuple[str, ...] | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return _CONV_KEYS
    if isinstance(module, nn.Linear):
        return _LINEAR_KEYS
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _BN_KEYS
    return None


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channel counts of every conv, Linear and BatchNorm layer, by module name (JSON-able)."""
    out = {}
    for name, m in model.named_modules():
        keys = _keys(m)
        if keys is not None:
            out[name] = {k: int(getattr(m, k)) for k in keys}
    return out


def apply_layer_shapes(model: nn.Module, shapes: Any, source: str = "checkpoint") -> nn.Module:
    """Narrow ``model``'s layers in place to the recorded channel counts; their tensors are then uninitialised.

    A record that does not fit the model (an unknown layer, another layer type, a bad count)
    is one :class:`CheckpointError` naming ``source`` and the layer.
    """
    if not isinstance(shapes, dict):
        raise CheckpointError(f"{source}: model.layers must map layer names to channel counts")
    modules = dict(model.named_modules())
    for name, counts in shapes.items():
        m = modules.get(name)
        keys = _keys(m) if m is not None else None
        if keys is None:
            raise CheckpointError(
                f"{source}: the recorded layer {name!r} is not a conv/linear/BatchNorm layer of the model"
            )
        if not isinstance(counts, dict) or set(counts) != set(keys) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in counts.values()
        ):
            raise CheckpointError(f"{source}: layer {name!r} needs positive integers {', '.join(keys)}, got {counts!r}")
        if all(getattr(m, k) == v for k, v in counts.items()):
            continue
        _narrow(m, counts, f"{source}: layer {name!r}")
    return model


def _empty_like(p: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if p is None:
        return None
    return torch.empty(shape, dtype=p.dtype, device=p.device)


def _narrow(m: nn.Module, counts: dict[str, int], where: str) -> None:
    if isinstance(m, nn.modules.conv._ConvNd):
        cin, cout, groups = counts["in_channels"], counts["out_channels"], counts["groups"]
        if cin % groups or cout % groups:
            raise CheckpointError(f"{where}: {cin} input and {cout} output channels do not split into {groups} groups")
        if m.transposed:
            raise CheckpointError(f"{where}: transposed convolutions cannot be narrowed")
        m.in_channels, m.out_channels, m.groups = cin, cout, groups
        m.weight = nn.Parameter(_empty_like(m.weight, (cout, cin // groups, *m.kernel_size)), m.weight.requires_grad)
        if m.bias is not None:
            m.bias = nn.Parameter(_empty_like(m.bias, (cout,)), m.bias.requires_grad)
    elif isinstance(m, nn.Linear):
        m.in_features, m.out_features = counts["in_features"], counts["out_features"]
        m.weight = nn.Parameter(_empty_like(m.weight, (m.out_features, m.in_features)), m.weight.requires_grad)
        if m.bias is not None:
            m.bias = nn.Parameter(_empty_like(m.bias, (m.out_features,)), m.bias.requires_grad)
    else:
        c = counts["num_features"]
        m.num_features = c
        if m.weight is not None:
            m.weight = nn.Parameter(_empty_like(m.weight, (c,)), m.weight.requires_grad)
            m.bias = nn.Parameter(_empty_like(m.bias, (c,)), m.bias.requires_grad)
        if m.running_mean is not None:
            m.running_mean = _empty_like(m.running_mean, (c,))
            m.running_var = _empty_like(m.running_var, (c,))
