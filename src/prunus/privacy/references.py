"""The attacker's models: shadow models on the pool and LiRA reference models, trained like the target and kept in a
reference bank."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from prunus.data import load_dataset
from prunus.environment import environment_info
from prunus.errors import ConfigError
from prunus.models import build_model
from prunus.privacy.adaptive import target_defense, train_defended_models
from prunus.privacy.attacks import model_logits
from prunus.privacy.audit_config import AuditConfig
from prunus.privacy.bank import BANK_FORMAT, LiraOutputs, ReferenceBank, ShadowOutputs, check_bank_dir
from prunus.privacy.defenses import DefenseConfig, load_defended
from prunus.privacy.splits import MembershipSplit, balanced_inclusion, split_of_checkpoint, subset
from prunus.train.config import TrainConfig
from prunus.train.distributed import pick_device
from prunus.train.trainer import Trainer


def reference_recipe(ckpt, config: AuditConfig):
    """The TrainConfig shadow/reference models are trained with: the target's recorded recipe."""

    recipe = (ckpt.meta.get("privacy") or {}).get("reference_training") or ckpt.meta.get("config")
    if not isinstance(recipe, dict):
        raise ConfigError(f"checkpoint {ckpt.path} records no training recipe to train reference models with")
    tc = TrainConfig.from_dict(recipe)
    if config.epochs is not None:
        tc = dataclasses.replace(tc, epochs=config.epochs)
    tc.keep_checkpoints = 1
    return tc.validate()


def train_models(name: str, index_sets: list[np.ndarray], train_set, test_set, model_record: dict, tcfg, out_dir: Path,
                 eval_images: torch.Tensor, *, device, console: Console, seed: int) -> np.ndarray:
    """Train one model per index set (like the target) and return their logits on ``eval_images``: (models, n, C)."""

    logits = []
    for k, idx in enumerate(index_sets):
        t0 = time.perf_counter()
        torch.manual_seed(seed + 1000 * (k + 1))
        model = build_model(model_record["name"], in_channels=model_record["in_channels"],
                            num_classes=model_record["num_classes"], **model_record.get("options", {}))
        cfg = dataclasses.replace(tcfg, seed=seed + k + 1)
        quiet = Console(quiet=True)
        trainer = Trainer(model, subset(train_set, idx), test_set, cfg, out_dir / f"{k:02d}", device=device,
                          meta={"model": model_record}, console=quiet)
        history = trainer.fit()
        logits.append(model_logits(model, eval_images, device=device))
        console.print(f"{name} model {k + 1}/{len(index_sets)}: {len(idx)} examples, test accuracy "
                      f"{history[-1]['test_accuracy']:.2f}%, {time.perf_counter() - t0:.1f}s")
    return np.stack(logits)


#: TrainConfig fields added after banks were first built: left out of a bank's key at their default value, so a
#: bank built before them (which trained that way) still matches
NEWER_RECIPE_FIELDS = {"compile": False}


def bank_key(ckpt, split: MembershipSplit, tcfg, config: AuditConfig, defense: DefenseConfig | None = None,
             dense_starts: bool = False) -> dict[str, Any]:
    """What a target's shadow and reference models depend on: a :class:`ReferenceBank` built for the same key
    holds exactly the models this audit would train (same split, architecture, recipe and seeds).

    The recipe's own ``seed`` is left out (reference models get seeds of their own from ``config.seed``),
    and so are fields that do not change the weights (evaluation batch size, checkpoints kept).  An adaptive
    audit's bank also names the defense its reference models were trained with, and whether they pruned the
    non-adaptive bank's models (``dense_starts``) rather than dense models of their own.
    """
    recipe = dataclasses.asdict(tcfg)
    for k in ("seed", "keep_checkpoints", "eval_batch_size"):
        recipe.pop(k, None)
    for k, default in NEWER_RECIPE_FIELDS.items():  # at their default, as the banks built before them hold it
        if recipe.get(k) == default:
            recipe.pop(k)
    dataset = ckpt.meta.get("dataset") or {}
    key = {"format": BANK_FORMAT, "dataset": {"name": dataset.get("name"), "image_size": dataset.get("image_size")},
           "split": split.summary(), "model": target_model_record(ckpt), "recipe": recipe, "seed": config.seed}
    if defense is not None:
        key["adaptive_defense"] = {k: v for k, v in dataclasses.asdict(defense).items() if k != "seed"}
        if dense_starts:
            key["dense_starts"] = "the non-adaptive bank's reference models"
    return key


def target_model_record(ckpt) -> dict[str, Any]:
    record = ckpt.meta["model"]
    return {k: v for k, v in record.items() if k in ("name", "in_channels", "num_classes", "options")}


def _train_shadow_outputs(split: MembershipSplit, train_set, ref_test, record, tcfg, config: AuditConfig, out_dir: Path,
                          *, device, console: Console) -> ShadowOutputs:
    """Shadow models trained like the target on random draws from the attacker pool; their outputs on their
    own members and on as many non-members (equally large disjoint draws from the pool)."""
    n_in = min(len(split.members), len(split.pool) // 2)
    if n_in < 1:
        raise ConfigError("the attacker pool is too small for shadow models (it needs at least 2 examples)")
    rng = np.random.default_rng(config.seed)
    draws = [rng.permutation(split.pool)[: 2 * n_in] for _ in range(config.shadow_models)]
    shadow_in = [d[:n_in] for d in draws]
    shadow_eval = np.unique(np.concatenate(draws))
    pos = {int(i): j for j, i in enumerate(shadow_eval)}
    console.print(f"training {config.shadow_models} shadow models on {n_in} pool examples each "
                  f"({'as many as the target' if n_in == len(split.members) else 'the pool is too small for a full-size shadow training set'})")  # noqa: E501
    s_logits = train_models("shadow", shadow_in, train_set, ref_test, record, tcfg, out_dir,
                            train_set.images[torch.as_tensor(shadow_eval)], device=device, console=console,
                            seed=config.seed + 500)
    logits, labels, member = [], [], []
    for k, d in enumerate(draws):
        rows = np.array([pos[int(i)] for i in d])
        logits.append(s_logits[k][rows])
        labels.append(train_set.labels[torch.as_tensor(d)].numpy())
        member.append(np.r_[np.ones(n_in, bool), np.zeros(len(d) - n_in, bool)])
    return ShadowOutputs(np.concatenate(logits), np.concatenate(labels), np.concatenate(member), config.shadow_models,
                         n_in)


def lira_inclusion(split: MembershipSplit, config: AuditConfig) -> np.ndarray:
    """Which reference model trains on which audited example (members, then non-members): balanced halves."""
    return balanced_inclusion(config.reference_models, len(split.members) + len(split.nonmembers), config.seed + 17)


def _train_lira_outputs(split: MembershipSplit, train_set, ref_test, record, tcfg, config: AuditConfig, out_dir: Path,
                        *, device, console: Console, defense: DefenseConfig | None = None,
                        starts: list[Path] | None = None) -> LiraOutputs:
    """LiRA/RMIA reference models trained like the target on balanced random halves of members + non-members
    (with ``defense``: each runs that defense on its half, from ``starts`` if given, :mod:`prunus.privacy.adaptive`)."""
    audit_idx = np.concatenate([split.members, split.nonmembers])
    n = len(audit_idx)
    inclusion = lira_inclusion(split, config)
    console.print(f"training {config.reference_models} LiRA reference models on random halves of the "
                  f"{n} members and non-members")
    halves, images = [audit_idx[row] for row in inclusion], train_set.images[torch.as_tensor(audit_idx)]
    if defense is not None:
        r_logits = train_defended_models(defense, halves, split, train_set, ref_test, record, images, out_dir,
                                         device=device, console=console, seed=config.seed + 900, starts=starts)
    else:
        r_logits = train_models("reference", halves, train_set, ref_test, record, tcfg, out_dir, images, device=device,
                                console=console, seed=config.seed + 900)
    return LiraOutputs(inclusion, r_logits, audit_idx)


def fill_bank(bank: ReferenceBank, config: AuditConfig, split: MembershipSplit, train_set, test_set, record, tcfg,
               directory: Path, *, save: bool, device, console: Console, defense: DefenseConfig | None = None,
               starts: list[Path] | None = None) -> dict[str, bool]:
    """Train the parts of ``bank`` this audit needs and it lacks (into ``directory/shadow``, ``directory/reference``);
    save the bank into ``directory`` when ``save``.  Returns which parts were trained now.  ``defense`` and
    ``starts``: the adaptive attacker's (:mod:`prunus.privacy.adaptive`)."""

    # reference/shadow models report their per-epoch test accuracy on the first 1000 test images only
    ref_test = subset(test_set, np.arange(min(1000, len(test_set))), "test")
    trained = {"shadow": False, "lira": False}
    for part, needed, sub, train in (("shadow", config.needs_shadows, "shadow", _train_shadow_outputs),
                                     ("lira", config.needs_references, "reference", _train_lira_outputs)):
        if not needed or getattr(bank, part) is not None:
            continue
        if save:  # a crashed build may have left part of this training behind
            shutil.rmtree(directory / sub, ignore_errors=True)
        t0 = time.perf_counter()
        adaptive = {"defense": defense, "starts": starts} if part == "lira" and defense is not None else {}
        setattr(bank, part, train(split, train_set, ref_test, record, tcfg, config, directory / sub, device=device,
                                  console=console, **adaptive))
        bank.info[part] = {"seconds": time.perf_counter() - t0, "epochs": tcfg.epochs,
                           "environment": environment_info()}
        trained[part] = True
    if save and any(trained.values()):
        bank.save(directory)
    return trained


def open_bank(reference_bank, key: dict[str, Any], config: AuditConfig) -> ReferenceBank:
    """The bank an audit uses: the given object (checked, must hold every part needed), the bank saved in a
    directory (checked; missing parts are trained into it later), or a new empty one."""
    counts = {"shadow_models": config.shadow_models if config.needs_shadows else None,
              "reference_models": config.reference_models if config.needs_references else None}
    if isinstance(reference_bank, ReferenceBank):
        reference_bank.check(key, **counts, need_shadow=config.needs_shadows, need_lira=config.needs_references)
        return reference_bank
    if reference_bank is None:
        return ReferenceBank(key)
    directory = Path(reference_bank)
    check_bank_dir(directory)
    if not ReferenceBank.exists(directory):
        return ReferenceBank(key)
    bank = ReferenceBank.load(directory)
    bank.check(key, **counts)
    return bank


def prepare_reference_bank(
    checkpoint: str | Path,
    config: AuditConfig,
    directory: str | Path,
    *,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> ReferenceBank:
    """The shadow/reference models an audit of ``checkpoint`` with ``config`` needs, as a bank in ``directory``.

    A bank already in ``directory`` is reused when it was built for the same split, recipe, seed and
    model counts (else a ConfigError); parts it lacks are trained and added.  Pass the result (or the
    directory) to :func:`run_audit` as ``reference_bank`` for every checkpoint of the same split: the
    defenses of one target then share one set of reference models.
    """

    config.validate()
    console = console or Console()
    directory = Path(directory)
    _, ckpt = load_defended(checkpoint)
    split = split_of_checkpoint(ckpt)
    tcfg = reference_recipe(ckpt, config)
    defense = target_defense(ckpt, tcfg) if config.adaptive else None
    bank = open_bank(directory, bank_key(ckpt, split, tcfg, config, defense), config)
    missing_shadow = config.needs_shadows and bank.shadow is None
    if not missing_shadow and (not config.needs_references or bank.lira is not None):
        return bank
    train_set, test_set = datasets_of(ckpt, data_dir, download)
    split.check_dataset(train_set)
    fill_bank(bank, config, split, train_set, test_set, target_model_record(ckpt), tcfg, directory, save=True,
               device=pick_device(device), console=console, defense=defense)
    return bank


def datasets_of(ckpt, data_dir, download):
    dataset = ckpt.meta.get("dataset") or {}
    if "name" not in dataset:
        raise ConfigError(f"checkpoint {ckpt.path} does not record its dataset")
    return tuple(load_dataset(dataset["name"], part, data_dir=data_dir, download=download,
                              image_size=dataset.get("image_size")) for part in ("train", "test"))
