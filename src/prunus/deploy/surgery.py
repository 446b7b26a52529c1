"""Physical channel removal: a filter- or channel-pruned model (zeros in place) becomes a smaller dense model.

Masks make a model sparse, not smaller or faster.  :func:`remove_pruned_channels`
deletes every channel that contributes nothing, with Torch-Pruning doing the
removal so coupled layers stay consistent (see :mod:`prunus.plan.coupling`), and
checks on random inputs that the smaller model computes the same function.

When a channel is removed
-------------------------
Channels go per coupled group, and a channel is removed only when it is *exactly
zero where it is read*: for every convolution or Linear that reads it (the first
Linear after a flatten reads ``H*W`` features of it), either that layer's weights
for it are all zero, or its activation there is zero for every input.  So a filter
pruned in every conv of a residual stream goes; a filter pruned in only some of
them does not; and a channel-pruned consumer (``w[:, c] == 0``) lets the producer's
filter ``c`` go even though it is nonzero.

Zero filters before a BatchNorm
-------------------------------
A zero filter followed by BN outputs the constant ``beta - gamma * mean / sqrt(var + eps)``,
not zero.  Folding that constant into the consumers' biases would be exact only where
the constant map stays constant; the zero padding of a following 3x3 convolution makes
it vary along the borders, so folding would change the outputs.  prunus therefore keeps
such channels and reports them as *blocked* (all-zero filters that were not removed);
prune with :func:`prunus.plan.coupling.project_coupled`, which zeroes a pruned channel's BN
gamma and beta too, and every pruned channel is removable.

How "zero for every input" is decided
-------------------------------------
On a copy whose every conv/linear weight and bias is replaced by its support
(1 where nonzero) and every BatchNorm by the support of its scale and of its output
for a zero input, with every layer output mapped to 0/1, an all-ones input marks
each activation that some path of nonzero weights, biases or BN shifts reaches.
For models built from conv/linear/BN layers, ReLU-like activations, pooling,
additions and concatenations an unmarked activation is exactly zero for every input.
For anything else (a subtraction, a channel mean) the output check below is the
safety net: a model that changes is never returned.

The result is a new model; the one passed in is left untouched (it is the reference
the outputs are checked against).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.table import Table

from prunus.errors import SurgeryError
from prunus.harden.stats import count_macs
from prunus.plan.coupling import CoupledGroup, dependency_graph, groups_of_graph

__all__ = ["GroupChange", "SurgeryReport", "live_inputs", "max_output_difference", "remove_pruned_channels"]


@dataclass
class GroupChange:
    """What happened to one coupled group (see :class:`prunus.plan.coupling.CoupledGroup`)."""

    root: str
    producers: tuple[str, ...]
    before: int
    after: int
    zero_filters: int  # channels whose filter (weights and bias) is zero in every producer
    blocked: int  # of those, channels kept because they are still nonzero where they are read (e.g. a BN shift)
    note: str = ""  # why nothing was removed (the group is protected), or that one channel was kept to keep the layer

    @property
    def removed(self) -> int:
        return self.before - self.after


@dataclass
class SurgeryReport:
    """The smaller model and what changed.

    MACs are multiply-accumulates of the Conv2d and Linear layers for one input, as
    :func:`prunus.harden.stats.count_macs` counts them densely (zeros included); BN, pooling and
    activations are not counted.  ``max_abs_diff`` is the largest output difference
    between the two models in eval mode over ``checked_inputs`` inputs (``nan`` if unchecked).
    """

    model: nn.Module = field(repr=False)
    groups: list[GroupChange]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_abs_diff: float
    checked_inputs: int

    @property
    def removed(self) -> int:
        return sum(g.removed for g in self.groups)

    @property
    def blocked(self) -> int:
        return sum(g.blocked for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [dict(vars(g), removed=g.removed) for g in self.groups],
            "channels_removed": self.removed,
            "channels_blocked": self.blocked,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "max_abs_diff": self.max_abs_diff,
            "checked_inputs": self.checked_inputs,
        }

    def table(self) -> Table:
        t = Table(title=f"channels removed: {self.removed} (coupled groups; MACs: conv+linear per input)")
        for col in ("group (producers)", "channels", "removed", "zero filters kept", "note"):
            t.add_column(col, justify="left" if col in ("group (producers)", "note") else "right")
        for g in self.groups:
            more = f" +{len(g.producers) - 1}" if len(g.producers) > 1 else ""
            who = (g.producers[0] if g.producers else g.root) + more
            t.add_row(who or g.root, f"{g.before} -> {g.after}", str(g.removed), str(g.blocked), g.note)
        t.caption = (
            f"parameters {self.params_before:,} -> {self.params_after:,}; "
            f"MACs {self.macs_before:,} -> {self.macs_after:,}; "
            f"max output difference {self.max_abs_diff:.2e} on {self.checked_inputs} random inputs"
        )
        return t


# -- which activations can be nonzero --------------------------------------------------------------------------------


class _SupportAffine(nn.Module):
    """Stands in for a BatchNorm in the support copy: ``x * [scale != 0] + [bn(0) != 0]`` per channel."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


def _bn_support(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale nonzero, output-for-zero-input nonzero) per channel, computed with the BN's own eval arithmetic."""
    c = bn.num_features
    ref = next((t for t in (bn.weight, bn.running_mean) if t is not None), None)
    zeros = torch.zeros(2, c, dtype=ref.dtype, device=ref.device) if ref is not None else torch.zeros(2, c)
    batch_stats = bn.running_mean is None  # such a BN normalises with batch statistics even in eval mode
    out0 = F.batch_norm(zeros, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        training=batch_stats, momentum=0.0, eps=bn.eps)[0]
    scale = (bn.weight != 0) if bn.weight is not None else torch.ones(c, dtype=torch.bool)
    return scale, out0 != 0


@torch.no_grad()
def live_inputs(model: nn.Module, example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every conv/Linear module name: a bool per input channel (Linear: per input feature), True where the
    activation it reads can be nonzero for some input (see the module docstring for how this is decided)."""
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and n}
    support = copy.deepcopy(model).eval()
    for name, bn in norms.items():
        scale, shift = (t.to(device=example_input.device, dtype=example_input.dtype) for t in _bn_support(bn))
        parent, _, child = name.rpartition(".")
        setattr(support.get_submodule(parent), child, _SupportAffine(scale, shift))
    live: dict[str, torch.Tensor] = {}
    handles = []

    def record(name: str, channel_dim: int):
        def hook(module, inputs):
            x = inputs[0] != 0
            seen = x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1).any(1)
            live[name] = live[name] | seen if name in live else seen
        return hook

    def indicator(module, inputs, output):
        return (output != 0).to(output.dtype)

    for name, m in support.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.copy_((p != 0).to(p.dtype))
            handles.append(m.register_forward_pre_hook(record(name, -1 if isinstance(m, nn.Linear) else 1)))
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, _SupportAffine)):
            handles.append(m.register_forward_hook(indicator))
    try:
        support(torch.ones_like(example_input[:1]))
    finally:
        for h in handles:
            h.remove()
    return live


def _removable(group: CoupledGroup, modules: dict[str, nn.Module], live: dict[str, torch.Tensor]) -> torch.Tensor:
    """Bool per channel: True where every consumer reads exactly nothing from it."""
    removable = torch.ones(group.channels, dtype=torch.bool)
    for c in group.consumers:
        w = modules[c.name].weight.detach()
        used = (w != 0).transpose(0, 1).reshape(w.shape[1], -1).any(1).cpu()
        if c.name in live:
            used &= live[c.name].cpu()
        index, channel = torch.tensor(c.index, dtype=torch.long), torch.tensor(c.channel, dtype=torch.long)
        removable[channel[used[index]]] = False
    return removable


def _zero_filters(group: CoupledGroup, modules: dict[str, nn.Module]) -> torch.Tensor:
    """Bool per channel: True where every producer's filter (weight row and bias) is exactly zero."""
    zero = torch.ones(group.channels, dtype=torch.bool)
    if not group.producers:
        return torch.zeros(group.channels, dtype=torch.bool)
    for name in group.producers:
        m = modules[name]
        zero &= ~(m.weight.detach() != 0).reshape(m.weight.shape[0], -1).any(1).cpu()
        if m.bias is not None:
            zero &= (m.bias.detach() == 0).cpu()
    return zero


# -- checking ----------------------------------------------------------------------------------------------------------


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


@torch.no_grad()
def max_output_difference(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor) -> tuple[float, float]:
    """(max |reference - candidate|, max |reference|) over all outputs, both models in eval mode.

    Raises :class:`SurgeryError` if the outputs differ in structure or shape.  Train/eval flags are restored.
    """
    flags = [(m, m.training) for m in (reference, candidate)]
    for m, _ in flags:
        m.eval()
    try:
        ref, out = _tensors(reference(inputs)), _tensors(candidate(inputs))
    finally:
        for m, flag in flags:
            m.train(flag)
    if len(ref) != len(out) or any(a.shape != b.shape for a, b in zip(ref, out)):
        raise SurgeryError(
            f"removing channels changed the model's output shapes ({[tuple(a.shape) for a in ref]} -> "
            f"{[tuple(b.shape) for b in out]}); the model routes a pruned channel to its output in a way "
            "prunus cannot follow"
        )
    diff = max((float((a.double() - b.double()).abs().max()) if a.numel() else 0.0) for a, b in zip(ref, out))
    scale = max((float(a.double().abs().max()) if a.numel() else 0.0) for a in ref)
    return diff, scale


def _check_inputs(example_input: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn((n, *example_input.shape[1:]), generator=gen, dtype=torch.float32)
    return torch.cat([example_input[:1], rand.to(example_input.dtype).to(example_input.device)])


# -- surgery -----------------------------------------------------------------------------------------------------------


def remove_pruned_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    check: bool = True,
    check_inputs: int = 4,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    seed: int = 0,
) -> SurgeryReport:
    """Remove every channel that contributes nothing; return the report, whose ``model`` is the smaller copy.

    ``model`` is not modified.  ``example_input`` is one input batch (only its first item and
    shape are used) to trace the model with.  With ``check`` (the default), the example plus
    ``check_inputs`` random normal inputs (seeded) must give outputs within
    ``atol + rtol * max|output|`` of the original's in eval mode, else :class:`SurgeryError`.
    A group keeps at least one channel, so no layer becomes empty.
    """
    work = copy.deepcopy(model)
    requires_grad = {n: p.requires_grad for n, p in work.named_parameters()}
    for p in work.parameters():
        p.requires_grad_(True)  # the dependency graph is traced through autograd
    dg = dependency_graph(work, example_input)
    groups = groups_of_graph(dg, work)
    modules = dict(work.named_modules())
    live = live_inputs(work, example_input)
    params_before = sum(p.numel() for p in model.parameters())
    macs_before = count_macs(model, example_input[:1]).dense

    changes, plans = _plan_removal(groups, modules, live)
    for root_name, idxs in plans:
        root = modules[root_name]
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs).prune()
    for n, p in work.named_parameters():
        p.requires_grad_(requires_grad.get(n, True))
    work.train(model.training)

    diff, checked = float("nan"), 0
    if check:
        inputs = _check_inputs(example_input, check_inputs, seed)
        diff, checked = _check_outputs(model, work, inputs, atol, rtol), len(inputs)
    return SurgeryReport(
        model=work,
        groups=changes,
        params_before=params_before,
        params_after=sum(p.numel() for p in work.parameters()),
        macs_before=macs_before,
        macs_after=count_macs(work, example_input[:1]).dense,
        max_abs_diff=diff,
        checked_inputs=checked,
    )


def _plan_removal(groups: list, modules: dict[str, nn.Module],
                  live) -> tuple[list[GroupChange], list[tuple[str, list]]]:
    """Per coupled group: what changes (for the report), and which channels of which root conv to remove."""
    changes, plans = [], []
    for g in groups:
        zero = _zero_filters(g, modules)
        if g.protected:
            changes.append(GroupChange(g.root, g.producers, g.channels, g.channels, int(zero.sum()), 0, g.protected))
            continue
        removable = _removable(g, modules, live)
        blocked = int((zero & ~removable).sum())
        note = ""
        if bool(removable.all()):
            removable[0] = False
            note = "every channel is zero; channel 0 is kept so the layer stays"
        after = g.channels - int(removable.sum())
        changes.append(GroupChange(g.root, g.producers, g.channels, after, int(zero.sum()), blocked, note))
        if bool(removable.any()):
            plans.append((g.root, removable.nonzero().flatten().tolist()))
    return changes, plans


def _check_outputs(model: nn.Module, small: nn.Module, inputs, atol: float, rtol: float) -> float:
    """The largest output difference of the smaller model; beyond ``atol + rtol * max|output|`` a SurgeryError."""
    diff, scale = max_output_difference(model, small, inputs)
    if not diff <= atol + rtol * scale:
        raise SurgeryError(
            f"removing the zero channels changed the outputs (max abs difference {diff:.3g} > "
            f"{atol + rtol * scale:.3g}); the model has an operation prunus' zero analysis does not cover"
        )
    return diff
