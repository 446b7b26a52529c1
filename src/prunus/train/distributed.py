"""Where a process sits in a torchrun job, which device it trains on, and the checks that keep ranks equal.

Under ``torchrun`` every rank runs the same job on its shard of each batch; DDP averages the
gradients, so weights, constraint-method state (Z, multipliers, rho, masks) and BatchNorm
statistics must stay bit-identical on every rank while only rank 0 writes files.
:meth:`Distributed.digests` lets a job prove that at the end instead of assuming it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from prunus.errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a data-parallel job (world_size 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, one message per dtype.

        DDP sends them at the start of each forward, but that forward then updates every rank's
        statistics with its own shard: a method round after the step (SLR's loss conditions
        evaluate the model), an evaluation or a checkpoint would each see a different model.
        """
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for buffer in module.buffers():
            by_dtype.setdefault(buffer.dtype, []).append(buffer.data)
        for buffers in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in buffers:
                b.copy_(flat[offset: offset + b.numel()].view_as(b))
                offset += b.numel()

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Average ``module``'s gradients over the ranks: for a model DDP does not wrap (the game's attacker)."""
        if self.enabled:
            for p in module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size

    def digests(self, state: Any) -> list[str]:
        """Every rank's :func:`digest` of ``state``, in rank order (a collective: every rank must call it)."""
        mine = digest(state)
        if not self.enabled:
            return [mine]
        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, mine)
        return every


def digest(state: Any) -> str:
    """SHA-256 of a (nested) state: tensors by dtype, shape and bytes, dict keys in sorted order, scalars by repr."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(f"K{k!r}".encode())
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}".encode())
            for item in obj:
                feed(item)
        else:
            h.update(f"S{obj!r}".encode())

    feed(state)
    return h.hexdigest()


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch (or not launched by torchrun), read from the environment:
    usable before the process group is joined, e.g. for what only rank 0 checks or writes."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group that ``torchrun`` set up in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device {requested!r} is not a valid torch device (use cpu or cuda)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} asked for CUDA but no CUDA GPU is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
