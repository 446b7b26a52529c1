"""Train a registry model on a registry dataset into a run directory: what ``prunus train`` runs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console

from prunus.data import RandomCropFlip, default_augmentation, load_dataset
from prunus.environment import environment_info
from prunus.io import write_json_atomic
from prunus.models import build_model
from prunus.train.config import TrainConfig
from prunus.train.distributed import is_main_process, pick_device
from prunus.train.rundir import check_run_dir, create_run_dir
from prunus.train.trainer import Trainer


def model_record(config: TrainConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    """How to rebuild the model of a run: stored in every checkpoint."""
    return {"name": config.model, "in_channels": in_channels, "num_classes": num_classes,
            "options": config.model_options}


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> Trainer:
    """Train a registry model on a registry dataset; what ``prunus train`` runs."""
    run_dir = Path(run_dir)
    if is_main_process():
        check_run_dir(run_dir, resume)
    if resume:
        saved = json.loads((run_dir / "config.json").read_text())
        config = TrainConfig.from_dict(saved["config"])
    config.validate()
    train_set = load_dataset(config.dataset, "train", data_dir=data_dir, download=download,
                             image_size=config.image_size)
    test_set = load_dataset(config.dataset, "test", data_dir=data_dir, download=download, image_size=config.image_size)
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=train_set.in_channels, num_classes=train_set.num_classes,
                        **config.model_options)
    use_aug = config.augment if config.augment is not None else default_augmentation(config.dataset) is not None
    augment = default_augmentation(config.dataset) if use_aug else None
    if use_aug and augment is None:
        augment = RandomCropFlip(padding=4)
    meta = {
        "model": model_record(config, train_set.in_channels, train_set.num_classes),
        "dataset": {"name": config.dataset, "image_size": train_set.image_size},
    }
    trainer = Trainer(
        model, train_set, test_set, config, run_dir, device=pick_device(device), augment=augment, meta=meta,
        console=console
    )
    if trainer.dist.is_main and not resume:
        create_run_dir(run_dir)
        write_json_atomic(
            run_dir / "config.json",
            {"config": dataclasses.asdict(config), "world_size": trainer.dist.world_size,
             "environment": environment_info()},
        )
    if trainer.dist.enabled:
        dist.barrier()
    trainer.fit(resume=resume)
    return trainer
