"""Projection of a model's planned tensors onto their sets: what every method's Z-step and the final hard-prune do.

A filter plan coupled by :func:`prunus.plan.coupling.couple_plan` projects each channel set as one group,
so the same channels go in every conv, bias and BatchNorm of the set.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from prunus.constraints.sparsity import project, project_global
from prunus.plan.recipe import ChannelSet, Plan, Target

Masks = dict[str, torch.Tensor]


def project_targets(tensors: dict[str, torch.Tensor], targets: Sequence[Target], global_unstructured: bool,
                    coupled: Sequence[ChannelSet] = ()) -> dict[str, tuple]:
    """Project each target's tensor onto its set; global unstructured targets share one threshold.

    Each :class:`~prunus.plan.recipe.ChannelSet` in ``coupled`` is projected as one filter tensor: the
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
        if t.structure is None:  # a quantization target (prunus.plan.quant.QuantTarget) projects itself
            out[t.name] = t.project(tensors[t.name])
        else:
            out[t.name] = project(tensors[t.name], t.structure, t.ratio)
    return out


@torch.no_grad()
def hard_prune(model: nn.Module, plan: Plan) -> Masks:
    """Project the model's planned weights onto their sets in place; return the masks.

    A coupled plan (:func:`prunus.plan.coupling.couple_plan`) prunes each channel set whole: the
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
