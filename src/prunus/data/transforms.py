"""Batched, seeded data augmentation.

Augmenting a whole batch at once on the batch's own device keeps the GPU fed
without DataLoader workers, and drawing every random number from a caller-owned
CPU ``torch.Generator`` makes a run reproducible from its seed regardless of the
device, the global RNG state or how many other components draw numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RandomCropFlip:
    """Random crop after zero padding, then horizontal flip with probability ``p_flip``.

    The standard CIFAR augmentation (pad 4, crop 32, flip 0.5).  Padding is
    applied to the tensor as given, so for normalised images the border is 0
    in normalised units, as with torchvision's ``RandomCrop(padding=4)`` applied
    after ``Normalize``.
    """

    def __init__(self, padding: int = 4, p_flip: float = 0.5) -> None:
        if padding < 0 or not 0.0 <= p_flip <= 1.0:
            raise ValueError(f"need padding >= 0 and 0 <= p_flip <= 1, got padding={padding}, p_flip={p_flip}")
        self.padding = int(padding)
        self.p_flip = float(p_flip)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, p_flip={self.p_flip})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` (N,C,H,W, or a single C,H,W image) using only ``generator``."""
        if x.dim() == 3:
            return self(x.unsqueeze(0), generator).squeeze(0)
        if x.dim() != 4:
            raise ValueError(f"RandomCropFlip expects an N,C,H,W batch, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        p = self.padding
        # draw everything on the CPU generator first, in a fixed order, then move
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator)
        flip = torch.rand(n, generator=generator) < self.p_flip
        offsets, flip = offsets.to(x.device), flip.to(x.device)
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # N,H
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # N,W
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # N,H,W,C
        return out.permute(0, 3, 1, 2).contiguous()
