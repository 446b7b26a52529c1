"""Compression statistics: per-layer zeros, MACs (dense, nonzero, with zero channels removed), the compression
report."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from rich.table import Table

from prunus.plan.recipe import Plan


# -- compression statistics ------------------------------------------------------------
@dataclass
class LayerStats:
    name: str
    shape: tuple[int, ...]
    structure: str
    ratio: float
    zeros: int
    numel: int

    @property
    def achieved(self) -> float:
        return self.zeros / self.numel


@dataclass
class MacCount:
    """Multiply-accumulates of Conv2d and Linear layers for one input.

    ``dense``: output elements x (in_channels / groups) x kernel area (in_features for
    Linear). ``nonzero``: each layer scaled by its weight density, what a sparse kernel
    executes. ``structural``: what is left once all-zero filters (output channels) and
    the input channels they leave empty are removed, what a physically smaller dense
    model executes. BN, pooling and activations are not counted.
    """

    dense: int
    nonzero: int
    structural: int


def _support_copy(model: nn.Module) -> nn.Module:
    """A copy whose every weight/bias is 1 where the original is nonzero, else 0.

    Fed with ones, every activation is >= 0, so ReLUs never hide a path: a channel
    is 0 exactly when no nonzero weight or bias leads to it. BatchNorm becomes
    x * (gamma != 0) + (beta != 0), so a pruned filter followed by BN with a nonzero
    beta counts as alive (its constant is still used until surgery folds it away).
    """
    support = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in support.modules():
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if isinstance(p, torch.Tensor):
                    p.copy_((p != 0).to(p.dtype))
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
    return support


def count_macs(model: nn.Module, example: torch.Tensor) -> MacCount:
    """Count MACs for one input shaped like ``example[:1]``, with forward hooks."""
    dense = nonzero = 0
    for module, w, x, out in _layer_io(model, example[:1]):
        macs = out[0].numel() * w[0].numel()
        dense += macs
        nonzero += macs * int(torch.count_nonzero(w)) // w.numel()
    structural = 0
    for module, w, x, out in _layer_io(_support_copy(model), torch.ones_like(example[:1])):
        positions = out[0].numel() // w.shape[0]
        live_out = int((out[0].reshape(w.shape[0], -1) != 0).any(1).sum())
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            live_in = w.shape[1]  # grouped/depthwise: empty inputs not subtracted (conservative)
        else:
            live_in = int((x[0].reshape(w.shape[1], -1) != 0).any(1).sum())
        structural += positions * live_out * live_in * (w[0].numel() // w.shape[1])
    return MacCount(dense, nonzero, structural)


def _layer_io(model: nn.Module, x: torch.Tensor):
    """(module, weight, input, output) of every Conv2d/Linear in one eval-mode forward."""
    seen = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: seen.append((mod, mod.weight.detach(), inp[0], out)))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


@dataclass
class CompressionReport:
    """Per-layer sparsity plus totals; ``compression`` = planned weights / their nonzeros."""

    layers: list[LayerStats]
    params_total: int
    params_nonzero: int
    macs_dense: int
    macs_nonzero: int
    macs_structural: int

    @classmethod
    def of(cls, model: nn.Module, plan: Plan, probe: torch.Tensor) -> "CompressionReport":
        """``probe``: an input batch (only its shape matters; MACs are per input, see :class:`MacCount`)."""
        params = dict(model.named_parameters())
        scope = "global " if plan.global_unstructured else ""  # the ratio then holds over all layers together
        layers = [
            LayerStats(t.name, tuple(params[t.name].shape), scope + str(t.structure), t.ratio,
                       int((params[t.name] == 0).sum()), params[t.name].numel())
            for t in plan.resolve(model)
        ]
        total = sum(p.numel() for p in params.values())
        nonzero = sum(int(torch.count_nonzero(p)) for p in params.values())
        macs = count_macs(model, probe)
        return cls(layers, total, nonzero, macs.dense, macs.nonzero, macs.structural)

    @property
    def planned(self) -> int:
        return sum(s.numel for s in self.layers)

    @property
    def compression(self) -> float:
        kept = self.planned - sum(s.zeros for s in self.layers)
        return self.planned / max(kept, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [dict(vars(s), achieved=s.achieved) for s in self.layers],
            "params_total": self.params_total,
            "params_nonzero": self.params_nonzero,
            "macs_dense": self.macs_dense,
            "macs_nonzero": self.macs_nonzero,
            "macs_structural": self.macs_structural,
            "planned_weights": self.planned,
            "compression": self.compression,
        }

    def table(self) -> Table:
        t = Table(title=f"compression {self.compression:.1f}x of the planned weights")
        for col in ("layer", "shape", "structure", "asked", "zeros", "achieved"):
            t.add_column(col, justify="left" if col in ("layer", "structure") else "right")
        for s in self.layers:
            t.add_row(s.name, "x".join(map(str, s.shape)), s.structure, f"{s.ratio:.2%}", f"{s.zeros}/{s.numel}",
                      f"{s.achieved:.2%}")
        t.caption = (
            f"parameters {self.params_total:,} -> {self.params_nonzero:,} nonzero; "
            f"MACs per input {self.macs_dense:,} -> {self.macs_nonzero:,} nonzero, "
            f"{self.macs_structural:,} with zero channels removed (conv+linear)"
        )
        return t
