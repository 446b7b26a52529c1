"""The adaptive attacker: reference models trained *with the target's defense* (the attacker knows the algorithm).

A non-adaptive audit trains its LiRA/RMIA reference models like the undefended target, so a defense
that merely shifts the model's outputs (pruning, the min-max game, RelaxLoss) can look stronger
than it is: the attacker's IN/OUT statistics describe another kind of model.  Here each reference
model runs the whole defense on its half of the audited examples, exactly as ``prunus defend``
did for the target (a pruned target's references are trained densely on their half, then pruned
with the same method and compression; DP-SGD references are trained with DP-SGD), and the
attacks then compare like with like.  Shadow models (metric and Shokri attacks) stay non-adaptive.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from prunus.errors import ConfigError
from prunus.models import build_model
from prunus.privacy.attacks import model_logits
from prunus.privacy.defenses.config import DefenseConfig
from prunus.privacy.defenses.context import DefenseContext, check_defense
from prunus.privacy.defenses.run import STRATEGIES
from prunus.privacy.splits import MembershipSplit
from prunus.train.config import TrainConfig

#: the DefenseConfig fields of the dense recipe (what ``train_config()`` builds a TrainConfig from)
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule")


def target_defense(ckpt, recipe: TrainConfig) -> DefenseConfig:
    """The defense the audited checkpoint was trained with (recorded by ``prunus defend``).

    A target pruned from ``--init`` started from a model trained with ``recipe`` (the audit's reference
    recipe, ``--epochs`` included); its references train their dense phase with the same recipe.
    """
    recorded = (ckpt.meta.get("privacy") or {}).get("config")
    run_config = Path(ckpt.path).parent / "config.json"
    if recorded is None and run_config.is_file():  # runs from before the config was kept in the checkpoint
        recorded = json.loads(run_config.read_text()).get("defense")
    if not isinstance(recorded, dict):
        raise ConfigError(f"--adaptive: {ckpt.path} records no defense configuration (it was not written by "
                          "prunus defend); audit it without --adaptive")
    try:
        defense = DefenseConfig(**recorded)
    except TypeError as e:
        raise ConfigError(f"--adaptive: the defense recorded for {ckpt.path} is not readable ({e})") from None
    if defense.defense in ("prune", "mcmia") and "init" in ckpt.meta:
        defense = dataclasses.replace(defense, **{f: getattr(recipe, f) for f in RECIPE_FIELDS})
    return defense


def reference_split(split: MembershipSplit, members: np.ndarray) -> MembershipSplit:
    """A reference model's own split: its half of the audited examples, as many non-members, the attacker pool."""
    audited = np.concatenate([split.members, split.nonmembers])
    others = np.setdiff1d(audited, members)
    pool = split.pool
    if len(others) < len(members):  # fewer left than taken: top the non-members up from the pool
        need = len(members) - len(others)
        others, pool = np.concatenate([others, pool[:need]]), pool[need:]
    return MembershipSplit(split.dataset, split.total, split.seed, members, others[:len(members)], pool)


def train_defended_models(defense: DefenseConfig, index_sets: list[np.ndarray], split: MembershipSplit, train_set,
                          test_set, record: dict[str, Any], eval_images: torch.Tensor, out_dir: Path, *, device,
                          console: Console, seed: int) -> np.ndarray:
    """One reference model per index set, each trained by ``defense``; their logits on ``eval_images``."""
    logits = []
    quiet = Console(quiet=True)
    dataset = {"name": train_set.name, "image_size": train_set.image_size}
    for k, idx in enumerate(index_sets):
        t0 = time.perf_counter()
        config = dataclasses.replace(defense, seed=seed + k + 1, members=len(idx))
        torch.manual_seed(config.seed)
        model = build_model(record["name"], in_channels=record["in_channels"], num_classes=record["num_classes"],
                            **record.get("options", {}))
        ctx = DefenseContext(config=config, model=model.to(device), split=reference_split(split, idx),
                             train_set=train_set, test_set=test_set, meta={"model": record, "dataset": dataset},
                             recipe=dataclasses.asdict(config.train_config()), run_dir=out_dir / f"{k:02d}",
                             device=device, console=quiet)
        check_defense(ctx)
        STRATEGIES[config.defense](ctx)
        logits.append(model_logits(ctx.model, eval_images, device=device))
        console.print(f"adaptive reference model {k + 1}/{len(index_sets)} ({config.defense}): {len(idx)} examples, "
                      f"{time.perf_counter() - t0:.1f}s")
    return np.stack(logits)
