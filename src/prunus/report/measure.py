"""What ``prunus report`` measures on one model, each with the library's own tool.

* accuracy: :func:`prunus.train.trainer.evaluate` on the test set, and on each class's test examples;
* weights per Conv/Linear layer: all entries, nonzero entries, and *live* ones: nonzero weights that read an
  input which can be nonzero (:func:`prunus.deploy.surgery.live_inputs`); a weight reading a channel that
  every path leaves at zero computes nothing, so it is not counted;
* MACs: :func:`prunus.harden.stats.count_macs` (dense, nonzero, with zero channels removed);
* the model as deployed: pruned channels physically removed (:func:`prunus.deploy.surgery.remove_pruned_channels`,
  outputs checked equal), and its files: the checkpoint's safetensors, safetensors after surgery, ONNX
  (:func:`prunus.deploy.export.export_onnx`, checked with onnxruntime) and the ``.pcz`` a quantize run wrote;
* latency of every deployed model (BatchNorm folded, channels-last: :func:`prunus.deploy.latency.for_inference`)
  at batch 1 and 64, their timed runs interleaved (:func:`prunus.deploy.latency.compare_latency`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.data.datasets import ArrayDataset
from prunus.deploy.export import export_onnx
from prunus.deploy.footprint import weights_bytes
from prunus.deploy.latency import compare_latency, for_inference
from prunus.deploy.surgery import live_inputs, remove_pruned_channels
from prunus.errors import ExportError, MissingDependencyError, SurgeryError
from prunus.harden.stats import count_macs
from prunus.io import MODEL_FILE
from prunus.privacy.splits import subset
from prunus.train.trainer import evaluate

LATENCY_BATCHES = (1, 64)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def accuracy_of(model: nn.Module, test_set: ArrayDataset, device: torch.device) -> dict[str, Any]:
    """Test accuracy and loss, and the accuracy on each class's examples (None for a class with none)."""
    overall = evaluate(model, test_set, device=device)
    labels = test_set.labels.numpy()
    per_class, counts = [], []
    for c in range(test_set.num_classes):
        idx = np.flatnonzero(labels == c)
        counts.append(len(idx))
        per_class.append(evaluate(model, subset(test_set, idx), device=device)["accuracy"] if len(idx) else None)
    return {"test": overall["accuracy"], "loss": overall["loss"], "per_class": per_class, "class_counts": counts,
            "examples": len(labels)}


def _reads_live(module: nn.Module, live: torch.Tensor | None) -> torch.Tensor:
    """Bool, shaped to broadcast against ``module.weight``: True where the weight reads a live input."""
    w = module.weight
    if live is None:  # never called in the forward pass: nothing it holds is used
        return torch.zeros_like(w, dtype=torch.bool)
    live = live.to(w.device)
    if isinstance(module, nn.Linear):
        return live.view(1, -1)
    groups, out, per_group = module.groups, w.shape[0], w.shape[1]
    by_filter = live.view(groups, per_group)[torch.arange(out, device=w.device) // (out // groups)]
    return by_filter.view(out, per_group, *([1] * (w.dim() - 2)))


@torch.no_grad()
def layer_counts(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """Per Conv/Linear weight: shape, entries, nonzero entries, live entries (see the module docstring)."""
    live = live_inputs(model, example)
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, _LAYERS):
            nonzero = m.weight.detach() != 0
            rows.append({"name": f"{name}.weight", "shape": list(m.weight.shape), "parameters": m.weight.numel(),
                         "nonzeros": int(nonzero.sum()), "live": int((nonzero & _reads_live(m, live.get(name))).sum())})
    return rows


@torch.no_grad()
def sparsity_grids(model: nn.Module, max_rows: int = 96, max_cols: int = 192) -> dict[str, np.ndarray]:
    """Per Conv/Linear weight: the share of nonzero entries, rows = output channels, columns = the inputs each
    reads (channel x kernel position), averaged over blocks where the weight is larger than ``max_rows x max_cols``."""
    grids = {}
    for name, m in model.named_modules():
        if isinstance(m, _LAYERS):
            nz = (m.weight.detach() != 0).float().reshape(m.weight.shape[0], -1).cpu()
            size = (min(nz.shape[0], max_rows), min(nz.shape[1], max_cols))
            grids[f"{name}.weight"] = F.adaptive_avg_pool2d(nz[None, None], size)[0, 0].numpy()
    return grids


@dataclass
class Deployed:
    """The model as one would ship it: pruned channels removed where surgery can, else the model as it is."""

    model: nn.Module
    parameters: int
    macs: int
    channels_removed: int
    note: str  # why no channel was removed, when surgery could not run

    def to_dict(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "macs": self.macs, "channels_removed": self.channels_removed,
                "note": self.note}


def deploy(model: nn.Module, example: torch.Tensor) -> Deployed:
    """Remove the pruned channels (outputs checked equal); without torch-pruning, or if refused, keep the model."""
    try:
        s = remove_pruned_channels(model, example)
        return Deployed(s.model, s.params_after, s.macs_after, s.removed, "")
    except (MissingDependencyError, SurgeryError) as e:
        return Deployed(model, sum(p.numel() for p in model.parameters()), count_macs(model, example).dense, 0,
                        f"channels not removed: {e}")


def macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    m = count_macs(model, example)
    return {"dense": m.dense, "nonzero": m.nonzero, "structural": m.structural}


def file_sizes(checkpoint: Path, pcz: Path | None, deployed: nn.Module, example: torch.Tensor,
               onnx: bool) -> tuple[dict[str, int | None], str]:
    """Bytes of each file the model has or would have, and a note on what could not be measured."""
    files: dict[str, int | None] = {
        "safetensors": (checkpoint / MODEL_FILE).stat().st_size,
        "safetensors_deployed": weights_bytes(deployed),
        "pcz": pcz.stat().st_size if pcz is not None else None,
        "onnx": None,
    }
    note = "" if onnx else "ONNX not measured (--no-onnx)"
    if onnx:
        with tempfile.TemporaryDirectory(prefix="prunus-report-") as d:
            try:
                files["onnx"] = export_onnx(deployed, example, Path(d) / "model.onnx").bytes
            except (MissingDependencyError, ExportError) as e:
                note = f"ONNX not measured: {e}"
    return files, note


def latencies(models: dict[str, nn.Module], example: torch.Tensor, device: torch.device,
              repeats: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Median latency (ms) per model at batch 1 and 64, as deployed, timed in turns so a slow spell hits all alike."""
    ready = {name: for_inference(m).to(device) for name, m in models.items()}
    x = example.to(device)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    timed = compare_latency(ready, x, LATENCY_BATCHES, repeats=repeats, warmup=2)
    return {name: {str(b): lat.to_dict() for b, lat in per.items()} for name, per in timed.items()}
