"""What a model costs to store and to run, and a before/after table of it.

Four numbers, so that "did pruning make it smaller and faster?" has an answer:
parameters (every entry, zeros included: a masked model is not smaller), MACs
(Conv2d/Linear multiply-accumulates for one input, counted densely as
:func:`prunus.harden.stats.count_macs` does; BN, pooling and activations are not
counted), the size in bytes of the weights file a checkpoint stores
(``model.safetensors``), and the median latency at a few batch sizes
(:mod:`prunus.deploy.latency`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn
from rich.table import Table
from safetensors.torch import save as safetensors_bytes

from prunus.deploy.latency import Latency, measure_latency
from prunus.harden.stats import count_macs

__all__ = ["Footprint", "measure_footprint", "weights_bytes", "comparison_table"]


@dataclass
class Footprint:
    parameters: int
    macs: int  # conv+linear multiply-accumulates for one input, zeros included
    weights_bytes: int  # size of the model.safetensors file a checkpoint of the model holds
    latency: dict[int, Latency] = field(default_factory=dict)  # batch size -> timings (empty: not measured)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "macs": self.macs,
            "weights_bytes": self.weights_bytes,
            "latency": {str(b): lat.to_dict() for b, lat in self.latency.items()},
        }


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the ``model.safetensors`` that :func:`prunus.io.save_checkpoint` writes for ``model``."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return len(safetensors_bytes(state))


def measure_footprint(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    latency_batches: Sequence[int] = (1, 64),
    repeats: int = 30,
    warmup: int = 5,
) -> Footprint:
    """Parameters, MACs and weights-file bytes of ``model``; latency too unless ``latency_batches`` is empty."""
    latency = {}
    if latency_batches:
        latency = measure_latency(model, example_input, latency_batches, repeats=repeats, warmup=warmup)
    return Footprint(
        parameters=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, example_input[:1]).dense,
        weights_bytes=weights_bytes(model),
        latency=latency,
    )


def comparison_table(before: Footprint, after: Footprint, title: str = "before and after") -> Table:
    """Rows: parameters, MACs, weights bytes, median latency per measured batch size; columns before, after, ratio."""
    t = Table(title=title)
    for col in ("", "before", "after", "after / before"):
        t.add_column(col, justify="left" if not col else "right")

    def row(label: str, a: float, b: float, fmt: str) -> None:
        t.add_row(label, format(a, fmt), format(b, fmt), f"{b / a:.3f}" if a else "-")

    row("parameters", before.parameters, after.parameters, ",")
    row("MACs (conv+linear, per input)", before.macs, after.macs, ",")
    row("weights file (bytes)", before.weights_bytes, after.weights_bytes, ",")
    for b in sorted(set(before.latency) & set(after.latency)):
        lat = after.latency[b]
        row(f"latency batch {b} (ms, median of {lat.repeats})", before.latency[b].median_ms, lat.median_ms, ".3f")
    if before.latency or after.latency:
        any_lat = next(iter((after.latency or before.latency).values()))
        t.caption = (f"latency: {any_lat.device}, {any_lat.threads} thread(s), torch.inference_mode, "
                     f"{any_lat.warmup} warm-up runs")
    return t
