"""Hard-pruning, masks that keep pruned weights at exactly zero, and compression statistics.

After a method has driven the weights toward the constraint set, :func:`hard_prune`
projects them onto it for good. :class:`MaskKeeper` then keeps every pruned entry
at exactly 0.0 during masked retraining with *any* optimizer and any training loop:
it masks gradients as they are computed (so momentum, Adam moments and weight
decay see no signal for pruned entries) and re-applies the mask after every
``optimizer.step()`` through the optimizer's step post-hook (so even decoupled
weight decay or a numerical drift cannot revive a weight).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
from rich.table import Table

from prunus.plan import ChannelSet, Plan, Target
from prunus.sparsity import project, project_global
from prunus.hooks import WeightKeeper

Masks = dict[str, torch.Tensor]


def project_targets(tensors: dict[str, torch.Tensor], targets: Sequence[Target], global_unstructured: bool,
                    coupled: Sequence[ChannelSet] = ()) -> dict[str, tuple]:
    """Project each target's tensor onto its set; global unstructured targets share one threshold.

    Each :class:`~prunus.plan.ChannelSet` in ``coupled`` is projected as one filter tensor: the
    rows (dim 0) of all its parameters side by side, channels ranked by their summed energy, the
    same channels zeroed in every member. That is the exact Euclidean projection of the stacked
    parameters onto "at most k channels alive". Members missing from ``tensors`` are left out.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if global_unstructured:
        names = [t.name for t in targets]
        for name, pair in zip(names, project_global([tensors[n] for n in names], targets[0].ratio)):
            out[name] = pair
        return out
    for channels in coupled:
        members = [n for n in channels.params if n in tensors]
        if not members:
            continue
        rows = torch.cat([tensors[n].detach().reshape(tensors[n].shape[0], -1) for n in members], 1)
        keep = project(rows, "filter", channels.ratio)[1][:, 0]
        for n in members:
            w = tensors[n]
            mask = keep.reshape((-1,) + (1,) * (w.dim() - 1)).expand(w.shape).contiguous()
            out[n] = (torch.where(mask, w.detach(), torch.zeros((), dtype=w.dtype, device=w.device)), mask)
    for t in targets:
        if t.name in out:
            continue
        if t.structure is None:  # a quantization target (prunus.quantize.QuantTarget) projects itself
            out[t.name] = t.project(tensors[t.name])
        else:
            out[t.name] = project(tensors[t.name], t.structure, t.ratio)
    return out


@torch.no_grad()
def hard_prune(model: nn.Module, plan: Plan) -> Masks:
    """Project the model's planned weights onto their sets in place; return the masks.

    A coupled plan (:func:`prunus.coupling.couple_plan`) prunes each channel set whole: the
    convs' weights and biases and their BatchNorms' gamma and beta. Filter targets outside any
    channel set get their bias entries of pruned filters zeroed (and masked) too: a pruned
    channel then outputs exactly 0, as it would once physically removed.
    """
    targets = plan.resolve(model)
    params = dict(model.named_parameters())
    projected = project_targets({n: params[n] for n in plan.constrained(model)}, targets, plan.global_unstructured,
                                plan.coupled)
    masks = {}
    for name, (w, mask) in projected.items():
        params[name].copy_(w)
        masks[name] = mask
    for t in targets:
        bias_name = t.name.removesuffix("weight") + "bias"
        bias = params.get(bias_name) if t.name.endswith("weight") else None
        if (t.structure is not None and t.structure.name == "filter" and bias is not None and bias_name not in masks
                and bias.shape == params[t.name].shape[:1]):
            keep = masks[t.name].flatten(1).any(1)
            bias.mul_(keep)
            masks[bias_name] = keep
    return masks


class MaskKeeper(WeightKeeper):
    """Keep masked weights at exactly zero through training with any optimizer.

    Use it in your own loop with ``MaskKeeper(model, masks).attach(optimizer)``, or
    pass it as a hook to :class:`prunus.training.Trainer`.
    """

    name = "masks"

    def __init__(self, model: nn.Module, masks: Masks):
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise KeyError(f"masks for parameters the model does not have: {', '.join(unknown)}")
        self.params = {n: params[n] for n in masks}
        self.masks = {n: m.to(device=params[n].device, dtype=torch.bool) for n, m in masks.items()}
        self._handles = [self.params[n].register_hook(self._grad_masker(n)) for n in self.masks]
        self.apply()

    def _grad_masker(self, name: str):
        mask = self.masks[name]
        return lambda grad: grad * mask

    @torch.no_grad()
    def apply(self) -> None:
        for n, p in self.params.items():
            p.mul_(self.masks[n])

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {n: m.clone() for n, m in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, m in state["masks"].items():
            self.masks[n].copy_(m)
        self.apply()


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
            t.add_row(s.name, "x".join(map(str, s.shape)), s.structure, f"{s.ratio:.2%}", f"{s.zeros}/{s.numel}", f"{s.achieved:.2%}")
        t.caption = (
            f"parameters {self.params_total:,} -> {self.params_nonzero:,} nonzero; "
            f"MACs per input {self.macs_dense:,} -> {self.macs_nonzero:,} nonzero, "
            f"{self.macs_structural:,} with zero channels removed (conv+linear)"
        )
        return t
