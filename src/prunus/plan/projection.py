"""The hard-prune: a model's constrained tensors projected onto their sets for good, in place.

Every method's Z-step projects the same way (:meth:`prunus.plan.layout.Layout.project`); here the
projection is written into the weights and the masks come back for
:class:`~prunus.harden.keepers.MaskKeeper`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunus.plan.layout import Layout

Masks = dict[str, torch.Tensor]


@torch.no_grad()
def hard_prune(model: nn.Module, layout: Layout) -> Masks:
    """Project the model's constrained weights onto their sets in place; return the masks.

    A channel set (:func:`prunus.plan.coupling.couple_plan`) is pruned whole: the convs' weights
    and biases and their BatchNorms' gamma and beta. Filter targets outside any channel set get
    their bias entries of pruned filters zeroed (and masked) too: a pruned channel then outputs
    exactly 0, as it would once physically removed.
    """
    params = dict(model.named_parameters())
    masks = {}
    for name, (w, mask) in layout.project({n: params[n] for n in layout.names}).items():
        params[name].copy_(w)
        masks[name] = mask
    for t in layout.targets:
        bias_name = t.name.removesuffix("weight") + "bias"
        bias = params.get(bias_name) if t.name.endswith("weight") else None
        if (t.constraint.removes_filters and bias is not None and bias_name not in masks
                and bias.shape == params[t.name].shape[:1]):
            keep = masks[t.name].flatten(1).any(1)
            bias.mul_(keep)
            masks[bias_name] = keep
    return masks
