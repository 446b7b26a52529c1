"""What the pruning and quantization jobs share: their input checkpoint, the coupling step, the distance table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from prunus.data import load_dataset
from prunus.data.datasets import ArrayDataset
from prunus.data.loader import epoch_generator
from prunus.errors import CheckpointError, ConfigError, MissingDependencyError
from prunus.io import write_json_atomic
from prunus.methods.base import Closure, batch_closure
from prunus.models.loading import load_model
from prunus.plan.coupling import couple_plan
from prunus.plan.recipe import Plan
from prunus.train.config import TrainConfig
from prunus.train.distributed import Distributed, init_distributed, pick_device
from prunus.train.trainer import Trainer, compile_model, evaluate


@dataclass(frozen=True)
class Resources:
    """Where a job finds its dataset (a directory, or a download) and the device it computes on."""

    data_dir: str | None = None
    download: bool = False
    device: str | None = None


@dataclass
class JobInput:
    """A job's input checkpoint: the model (on ``device``), its metadata, and the data it was trained on."""

    model: nn.Module
    path: Path
    meta: dict[str, Any]  # stored in every checkpoint the job writes
    train_set: ArrayDataset
    test_set: ArrayDataset
    device: torch.device
    dist: Distributed  # under torchrun: every rank runs the job, rank 0 writes

    @classmethod
    def load(cls, init: str | Path, resources: Resources | None = None) -> JobInput:
        res = resources or Resources()
        model, ckpt = load_model(init)
        dataset = ckpt.meta.get("dataset", {})
        if "name" not in dataset:
            raise ConfigError(f"--init {init}: the checkpoint does not record its dataset")
        sets = [load_dataset(dataset["name"], split, data_dir=res.data_dir, download=res.download,
                             image_size=dataset.get("image_size")) for split in ("train", "test")]
        meta = {"model": ckpt.meta["model"], "dataset": dataset, "init": str(ckpt.path)}
        dev = pick_device(res.device)
        distributed = init_distributed(dev)
        if distributed.enabled and dev.type == "cuda":
            dev = torch.device("cuda", distributed.local_rank)
        return cls(model.to(dev), Path(ckpt.path), meta, *sets, dev, distributed)

    def console(self, console: Console) -> Console:
        """``console`` on rank 0, a silent one on the other ranks (one copy of every line)."""
        return console if self.dist.is_main else Console(quiet=True)

    def rank_digests(self, **states: Any) -> dict[str, Any]:
        """Every rank's digest of each state (see :meth:`Distributed.digests`): the proof that the ranks agree."""
        return {"world_size": self.dist.world_size, **{f"{k}_sha256": self.dist.digests(v) for k, v in states.items()}}

    def accuracy(self, model: nn.Module | None = None) -> float:
        """Test accuracy (%) of the job's model, or of another one."""
        return evaluate(model if model is not None else self.model, self.test_set, device=self.device)["accuracy"]

    def trainer(self, config: TrainConfig, run_dir: Path, hooks: list, console: Console) -> Trainer:
        return Trainer(self.model, self.train_set, self.test_set, config, run_dir, device=self.device, hooks=hooks,
                       meta=self.meta, console=console)

    def closure(self, samples: int, seed: int, compiled: bool = False) -> Closure:
        """The training loss on a fixed, seeded batch: SLR's step-size conditions compare it between rounds.

        ``compiled``: through torch.compile (a BCNN's 2,048 frames 2.2-2.5x faster on 2 cores,
        benchmarks/bcnn_training_speed.py)."""
        x, y = fixed_batch(self.train_set, samples, seed)
        model = compile_model(self.model) if compiled else self.model
        return batch_closure(model, x.to(self.device), y.to(self.device), F.cross_entropy)


JOB_FILE = "job.json"


def write_job(run_dir: Path, kind: str, init: str | Path | None, marker: dict[str, Any] | None = None,
              **inputs: Any) -> None:
    """Record what a run was started with (``job.json``) and mark it resumable (``config.json``, with ``marker``)."""
    init = None if init is None else str(init)
    write_json_atomic(run_dir / JOB_FILE, {"job": kind, "init": init, **inputs})
    write_json_atomic(run_dir / "config.json", {"job": kind, "init": init, **(marker or {})})


def read_job(run_dir: Path, kind: str) -> dict[str, Any]:
    """What an interrupted ``prunus KIND`` run was started with; one clear error if it is not such a run."""
    path = run_dir / JOB_FILE
    try:
        job = json.loads(path.read_text())
        recorded = json.loads((run_dir / "config.json").read_text()).get("job")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--resume {run_dir}: {path} is missing or damaged ({e}); it is not a prunus {kind} run "
                              "that can be resumed") from None
    if recorded != kind or not isinstance(job, dict):
        raise CheckpointError(f"--resume {run_dir}: it is a prunus {recorded} run, not a prunus {kind} run; "
                              f"resume it with prunus {recorded} --resume")
    return job


def couple_if_possible(model, plan: Plan, example: torch.Tensor, console: Console) -> Plan:
    """A filter plan with its channel sets (:func:`prunus.plan.coupling.couple_plan`) when torch-pruning is there.

    The method then constrains each filter with its bias and BatchNorm and the convs coupled to it,
    and its hard-prune zeroes whole channel sets, so everything pruned is physically removable.
    """
    plan.resolve(model)
    try:
        return couple_plan(model, plan, example)
    except MissingDependencyError as e:
        console.print(f"note: {e}; filters are projected per tensor (their BatchNorms and residual adds are not "
                      "pruned with them, so such channels may not be removable)")
        return plan


def distance_table(history: list[dict[str, Any]]) -> Table:
    """Per constrained tensor: how far the weights were from the set after the first and the last round."""
    first, last = history[0], history[-1]
    t = Table(title=f"distance to the constraint set ||W - Pi(W)|| / ||W|| after {len(history)} rounds "
                    f"(overall {first['distance']:.3g} -> {last['distance']:.3g})")
    for col in ("tensor", "round 1", f"round {len(history)}"):
        t.add_column(col, justify="left" if col == "tensor" else "right")
    for name, d in last["distances"].items():
        t.add_row(name, f"{first['distances'].get(name, float('nan')):.3g}", f"{d:.3g}")
    return t


def fixed_batch(dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(dataset.labels), generator=epoch_generator(seed, -1))[:n]
    return dataset.images[idx], dataset.labels[idx]
