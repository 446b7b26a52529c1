"""The adaptive attacker: reference models trained *with the target's defense* (the attacker knows the algorithm).

A non-adaptive audit trains its LiRA/RMIA reference models like the undefended target, so a defense
that merely shifts the model's outputs (pruning, the min-max game, RelaxLoss) can look stronger
than it is: the attacker's IN/OUT statistics describe another kind of model.  Here each reference
model runs the whole defense on its half of the audited examples, exactly as ``prunus defend``
did for the target (a pruned target's references are trained densely on their half, then pruned
with the same method and compression; DP-SGD references are trained with DP-SGD), and the
attacks then compare like with like.  Shadow models (metric and Shokri attacks) stay non-adaptive.

**Dense starts.** A pruned target's references first train a dense model on their half, which is
exactly what the non-adaptive bank's reference model of the same half is (same split, recipe and
inclusion). Given that bank (:func:`starts_from_bank`), each reference prunes the bank's model instead,
as the defender pruned the undefended target (the privacy benchmark's ResNet-20 target: 12 epochs a
reference instead of 32).
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
from prunus.io import latest_checkpoint, load_checkpoint
from prunus.models import build_model
from prunus.models.loading import load_weights
from prunus.privacy.attacks import model_logits
from prunus.privacy.bank import ReferenceBank
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


def starts_from_bank(bank: ReferenceBank, defense: DefenseConfig, key: dict[str, Any],
                     inclusion: np.ndarray) -> list[Path]:
    """The final checkpoints of ``bank``'s reference models, for an adaptive audit whose references prune them.

    ``key``: the non-adaptive bank key of the audited target, which ``bank`` must have been built for (same split,
    recipe and seed), with the same reference models (``inclusion``); only pruning starts from a trained model."""
    where = f"--dense-starts {bank.path}"
    if defense.defense not in ("prune", "mcmia"):
        raise ConfigError(f"{where}: only a pruned target's references start from dense models (this target's "
                          f"defense is {defense.defense}); drop --dense-starts")
    bank.check(key, reference_models=len(inclusion), need_lira=True, where=where)
    if not np.array_equal(bank.lira.inclusion, inclusion):
        raise ConfigError(f"{where}: its reference models trained on other halves of the audited examples")
    starts = [latest_checkpoint(bank.path / "reference" / f"{k:02d}") for k in range(len(inclusion))]
    missing = [f"reference/{k:02d}" for k, path in enumerate(starts) if path is None]
    if missing:
        raise ConfigError(f"{where} keeps no checkpoint of {', '.join(missing)}; rebuild that bank")
    return starts


def train_defended_models(defense: DefenseConfig, index_sets: list[np.ndarray], split: MembershipSplit, train_set,
                          test_set, record: dict[str, Any], eval_images: torch.Tensor, out_dir: Path, *, device,
                          console: Console, seed: int, starts: list[Path] | None = None) -> np.ndarray:
    """One reference model per index set, each trained by ``defense``; their logits on ``eval_images``.

    ``starts``: per index set, a dense model trained on it (:func:`starts_from_bank`) that the pruning starts from."""
    logits = []
    quiet = Console(quiet=True)
    dataset = {"name": train_set.name, "image_size": train_set.image_size}
    for k, idx in enumerate(index_sets):
        t0 = time.perf_counter()
        config = dataclasses.replace(defense, seed=seed + k + 1, members=len(idx))
        torch.manual_seed(config.seed)
        model = build_model(record["name"], in_channels=record["in_channels"], num_classes=record["num_classes"],
                            **record.get("options", {}))
        meta = {"model": record, "dataset": dataset}
        if starts is not None:
            load_weights(model, load_checkpoint(starts[k]), f"reference model {k}")
            meta["init"] = str(starts[k])  # the pruning skips its dense phase
        ctx = DefenseContext(config=config, model=model.to(device), split=reference_split(split, idx),
                             train_set=train_set, test_set=test_set, meta=meta,
                             recipe=dataclasses.asdict(config.train_config()), run_dir=out_dir / f"{k:02d}",
                             device=device, console=quiet)
        check_defense(ctx)
        STRATEGIES[config.defense](ctx)
        logits.append(model_logits(ctx.model, eval_images, device=device))
        console.print(f"adaptive reference model {k + 1}/{len(index_sets)} ({config.defense}): {len(idx)} examples, "
                      f"{time.perf_counter() - t0:.1f}s")
    return np.stack(logits)
