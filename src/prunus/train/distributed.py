"""Where a process sits in a torchrun job, and which device it trains on."""

from __future__ import annotations

import os
from dataclasses import dataclass

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
