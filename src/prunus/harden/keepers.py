"""Keepers: hooks that hold hardened weights in their set through any later training.

:class:`MaskKeeper` keeps every pruned entry at exactly 0.0 during masked retraining with *any* optimizer
and any training loop: it masks gradients as they are computed (so momentum, Adam moments and weight
decay see no signal for pruned entries) and re-applies the mask after every ``optimizer.step()``.
:class:`QuantKeeper` does the same for quantization levels (straight-through fine-tuning).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from prunus.constraints.levels import _rows, nearest_codes, quantize
from prunus.hooks import WeightKeeper
from prunus.plan.projection import Masks
from prunus.plan.quant import QuantPlan


class MaskKeeper(WeightKeeper):
    """Keep masked weights at exactly zero through training with any optimizer.

    Use it in your own loop with ``MaskKeeper(model, masks).attach(optimizer)``, or
    pass it as a hook to :class:`prunus.train.trainer.Trainer`.
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


class QuantKeeper(WeightKeeper):
    """Straight-through fine-tuning of a hard-quantized model, in any training loop.

    Keeps a float *latent* copy of each quantized weight. The model always holds the
    quantized values, so the forward pass and the gradient are taken at Q(latent);
    after every optimizer step the step's change is moved onto the latent copy and
    the weight is re-quantized: latent += W - Q_prev; W = Q(latent). That is the
    straight-through estimator (dQ/dW taken as 1) without touching the model's
    modules. Scales stay as the hard quantization chose them; masks keep zeros.
    """

    name = "quant"

    def __init__(self, model: nn.Module, plan: QuantPlan):
        params = dict(model.named_parameters())
        self.targets = plan.resolve(model)
        self.params = {t.name: params[t.name] for t in self.targets}
        self.schemes = {t.name: t.scheme for t in self.targets}
        self.levels = {n: self.schemes[n].levels(p.dtype, p.device) for n, p in self.params.items()}
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self._handles: list[Any] = []
        with torch.no_grad():
            for t in self.targets:
                p = self.params[t.name]
                q = quantize(p, t.scheme, t.mask)
                self.state[t.name] = {"latent": p.detach() * q.mask, "scale": q.scale, "mask": q.mask}
        self._held: dict[str, torch.Tensor] = {}  # Q(latent), what each weight held after the last apply
        self._requantize()

    def codes(self, name: str) -> torch.Tensor:
        """Indices into the level set of the current weights (what an export stores)."""
        s = self.state[name]
        rows = _rows(s["latent"], self.schemes[name].per_channel)
        return nearest_codes(rows, s["scale"], self.levels[name]).reshape(s["latent"].shape)

    def quantized(self, name: str) -> torch.Tensor:
        """scale * level of the latent weights, masked: what the model holds between steps."""
        s = self.state[name]
        rows = self.levels[name][_rows(self.codes(name), self.schemes[name].per_channel)] * s["scale"].unsqueeze(1)
        return rows.reshape(s["latent"].shape) * s["mask"]

    @torch.no_grad()
    def _requantize(self) -> None:
        for n, p in self.params.items():
            self._held[n] = self.quantized(n)
            p.copy_(self._held[n])

    @torch.no_grad()
    def apply(self) -> None:
        """Move each step's change onto the latent weights, then re-quantize (one quantization per tensor)."""
        for n, p in self.params.items():
            s = self.state[n]
            s["latent"] += (p - self._held[n]) * s["mask"]
        self._requantize()

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": {n: {k: v.clone() for k, v in s.items()} for n, s in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, tensors in state["tensors"].items():
            self.state[n] = {k: v.to(self.params[n].device) for k, v in tensors.items()}
            self.state[n]["mask"] = self.state[n]["mask"].bool()
        self._requantize()
