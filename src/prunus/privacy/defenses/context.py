"""What every defense trains with: the model, the membership split and its data, where it writes.

:func:`prepare` builds the context from a config (and a ``--init`` checkpoint, if given) and
checks everything a defense needs before anything is written; each strategy module then takes
the context, trains ``ctx.model`` on the members and adds what it measured to ``ctx.results``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from prunus._optional import require
from prunus.data import load_dataset
from prunus.data.datasets import ArrayDataset
from prunus.errors import ConfigError
from prunus.jobs.common import couple_if_possible
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan, ratio_for_compression
from prunus.privacy.defenses.config import DefenseConfig
from prunus.privacy.splits import MembershipSplit, SplitRecord, make_split, split_of_checkpoint, subset
from prunus.train.config import TrainConfig
from prunus.train.distributed import Distributed
from prunus.train.run import model_record
from prunus.train.trainer import Trainer

#: defenses that train a fresh model even from --init: the init's weights have seen the members without the
#: defense (a DP guarantee would not hold for them); only pruning starts from them
FROM_SCRATCH = ("none", "advreg", "dpsgd", "relaxloss")


@dataclass
class DefenseContext:
    config: DefenseConfig
    model: nn.Module
    split: MembershipSplit
    train_set: ArrayDataset
    test_set: ArrayDataset
    meta: dict[str, Any]  # stored in every checkpoint: how to rebuild the model, the dataset
    recipe: dict[str, Any]  # the plain training recipe audits train reference models with
    run_dir: Path
    device: torch.device
    console: Console
    plan: Plan | None = None  # pruning and MCMIA
    results: dict[str, Any] = field(default_factory=dict)
    extra_meta: dict[str, Any] = field(default_factory=dict)  # saved under meta["privacy"] of the final checkpoint
    dist: Distributed = field(default_factory=Distributed)  # under torchrun: every rank trains, rank 0 writes
    resume: bool = False  # every phase continues from its newest checkpoint (prunus defend --resume)

    @cached_property
    def members(self) -> ArrayDataset:
        return self.split.subset(self.train_set, "members")

    @cached_property
    def eval_set(self) -> ArrayDataset:
        """The per-epoch test set: the first ``eval_examples`` test images, or all of them."""
        n = self.config.eval_examples
        return subset(self.test_set, torch.arange(n).numpy(), "test") if n and n < len(self.test_set) else self.test_set

    def fit(self, directory: str, tcfg: TrainConfig, hooks: list, loss_fn: Callable = F.cross_entropy
            ) -> list[dict[str, Any]]:
        """Train on the members into ``run_dir/directory`` (every checkpoint records the split); the history.

        Under ``--resume`` the phase continues from its newest checkpoint, or is only restored if it had finished.
        """
        trainer = Trainer(self.model, self.members, self.eval_set, tcfg, self.run_dir / directory, device=self.device,
                          hooks=[*hooks, SplitRecord(self.split)], loss_fn=loss_fn, meta=self.meta,
                          console=self.console)
        return trainer.fit(resume=self.resume)


def prepare(config: DefenseConfig, run_dir: Path, init: str | Path | None, data_dir: str | None, download: bool,
            device: torch.device, console: Console, dist: Distributed | None = None) -> DefenseContext:
    """The context of a run, every input checked (nothing is written yet)."""
    ctx = _from_init(config, init, data_dir, download) if init is not None else _fresh(config, data_dir, download)
    ctx.update(run_dir=run_dir, device=device, console=console, dist=dist or Distributed())
    context = DefenseContext(config=config, **ctx)
    context.split.check_dataset(context.train_set)
    check_defense(context)
    return context


def _from_init(config: DefenseConfig, init: str | Path, data_dir: str | None, download: bool) -> dict[str, Any]:
    model, ckpt = load_defended(init)
    dataset = ckpt.meta.get("dataset", {})
    for flag, given, recorded in (("--model", config.model, ckpt.meta["model"]["name"]),
                                  ("--dataset", config.dataset, dataset.get("name"))):
        if given != recorded:
            raise ConfigError(f"{flag} {given} does not match --init {init}, which holds {recorded}")
    record = ckpt.meta["model"]
    if config.defense in FROM_SCRATCH:
        if "layers" in record:
            raise ConfigError(f"--init {init}: a physically pruned model cannot be retrained from scratch here")
        torch.manual_seed(config.seed)
        model = build_model(record["name"], in_channels=record["in_channels"], num_classes=record["num_classes"],
                            **record.get("options", {}))
    sets = {split: load_dataset(dataset["name"], split, data_dir=data_dir, download=download,
                                image_size=dataset.get("image_size")) for split in ("train", "test")}
    recipe = (ckpt.meta.get("privacy") or {}).get("reference_training") or dataclasses.asdict(config.train_config())
    return {"model": model, "split": split_of_checkpoint(ckpt), "train_set": sets["train"], "test_set": sets["test"],
            "meta": {"model": record, "dataset": dataset, "init": str(ckpt.path)}, "recipe": recipe}


def _fresh(config: DefenseConfig, data_dir: str | None, download: bool) -> dict[str, Any]:
    train_set = load_dataset(config.dataset, "train", data_dir=data_dir, download=download)
    test_set = load_dataset(config.dataset, "test", data_dir=data_dir, download=download)
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=train_set.in_channels, num_classes=train_set.num_classes,
                        **config.model_options)
    meta = {"model": model_record(config.train_config(), train_set.in_channels, train_set.num_classes),
            "dataset": {"name": config.dataset, "image_size": train_set.image_size}}
    return {"model": model, "split": make_split(config.dataset, len(train_set), config.members, config.split_seed),
            "train_set": train_set, "test_set": test_set, "meta": meta,
            "recipe": dataclasses.asdict(config.train_config())}


def check_defense(ctx: DefenseContext) -> None:
    """What a defense needs, checked before anything is written (the pruning plan is built here)."""
    config = ctx.config
    if config.defense in ("prune", "mcmia"):
        ratio = config.ratio if config.ratio is not None else ratio_for_compression(config.compression)
        plan = Plan.uniform(ctx.model, ratio, config.structure, global_unstructured=config.global_)
        ctx.plan = couple_if_possible(ctx.model, plan, ctx.train_set.images[:2], ctx.console)
    if config.defense == "dpsgd":
        require("opacus", "DP-SGD (--defense dpsgd)")
        if config.delta >= 1 / len(ctx.split.members):
            raise ConfigError(f"--delta {config.delta:g} must be below 1/members = {1 / len(ctx.split.members):.3g}, "
                              "else the guarantee allows leaking a whole example")
    if config.defense in ("advreg", "mcmia") and len(ctx.split.pool) == 0:
        raise ConfigError("the min-max game needs reference non-members from the attacker pool, which is empty; "
                          "use fewer --members")


def load_defended(path: str | Path):
    """Load a defended run's final model (``RUN/final``) or any checkpoint, DP-SGD GroupNorm models included."""
    path = Path(path)
    if (path / "final").is_dir() and not (path / "meta.json").exists():
        path = path / "final"
    return load_model(path)
