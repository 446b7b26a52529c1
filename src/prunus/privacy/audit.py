"""``prunus audit``: measure how much a checkpoint leaks about its training members.

The target must record a :class:`~prunus.privacy.splits.MembershipSplit` (every
``prunus defend`` checkpoint does).  The audit is evaluated on *all* its members and
as many non-members (balanced, so chance is AUC 0.5 and balanced accuracy 50%).

* Shadow models (metric thresholds and Shokri's attack): ``shadow_models`` models,
  each trained like the target (its recorded recipe, same training-set size when the
  pool allows) on a random half-sized draw from the attacker pool, with an equally
  large disjoint draw as its non-members.  They never see the target's members or
  non-members.
* LiRA reference models: ``reference_models`` models trained like the target on random
  halves of members + non-members (each example is IN for exactly half of the models
  when the number is even, Carlini et al.'s design; a half has as many examples as the
  target's training set).  The inclusion matrix is saved (``lira_inclusion.npy``).

Both depend only on the split and the undefended recipe, never on the audited weights
(a non-adaptive attacker), so several checkpoints of one split can share them: a
:class:`~prunus.privacy.bank.ReferenceBank` (``reference_bank=`` of :func:`run_audit`,
``prunus audit --reference-bank DIR``) holds their outputs, built once by
:func:`~prunus.privacy.references.prepare_reference_bank` or by the first audit that uses the directory.

Writes into ``OUT``: ``config.json``, ``shadow/NN`` and ``reference/NN`` training runs
(into the bank directory instead when one is used), ``report.json`` (every metric with
its counts and ROC), ``report.md`` (the table),
``roc.png`` (linear axes) and ``roc-log.png`` (log-log), ``scores.npz`` (per-example
scores and membership, plain arrays).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from prunus._optional import require
from prunus.environment import environment_info
from prunus.errors import ConfigError
from prunus.io import write_json_atomic, write_text_atomic
from prunus.privacy.adaptive import starts_from_bank, target_defense
from prunus.privacy.attacks import METRIC_ATTACKS, lira_attack, lira_phi, metric_attack, model_logits
from prunus.privacy.audit_config import AuditConfig
from prunus.privacy.bank import ReferenceBank
from prunus.privacy.defenses import load_defended
from prunus.privacy.metrics import AttackMetrics
from prunus.privacy.references import (
    bank_key,
    datasets_of,
    fill_bank,
    lira_inclusion,
    open_bank,
    reference_recipe,
    target_model_record,
)
from prunus.privacy.report import markdown_table, plot_roc, summary_table, write_npz
from prunus.privacy.rmia import rmia_attack
from prunus.privacy.splits import MembershipSplit, split_of_checkpoint, subset
from prunus.train.distributed import pick_device
from prunus.train.rundir import check_run_dir, create_run_dir
from prunus.train.trainer import evaluate


def run_audit(
    checkpoint: str | Path,
    config: AuditConfig,
    out: str | Path,
    *,
    reference_bank: ReferenceBank | str | Path | None = None,
    dense_starts: str | Path | None = None,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the attacks of ``config`` against ``checkpoint`` and write the report into ``out``.

    ``reference_bank``: None trains the shadow/reference models into ``out``; a directory reuses
    the bank saved there (or builds and saves it there, see
    :func:`~prunus.privacy.references.prepare_reference_bank`); a
    :class:`ReferenceBank` object is used as it is (it must hold every part the attacks need, and
    keeps Shokri's fitted attack classifier between audits).  A bank built for another split,
    recipe, seed or model count is refused before anything is written.

    ``dense_starts`` (adaptive audits of a pruned target): the saved non-adaptive bank of the same target and
    reference models, whose models the adaptive references prune instead of training their own dense ones
    (:func:`~prunus.privacy.adaptive.starts_from_bank`).
    """

    config.validate()
    console = console or Console()
    out = Path(out)
    check_run_dir(out, resume=False)
    require("matplotlib", "prunus audit's ROC plots")
    model, ckpt = load_defended(checkpoint)
    split: MembershipSplit = split_of_checkpoint(ckpt)
    tcfg = reference_recipe(ckpt, config)
    defense = target_defense(ckpt, tcfg) if config.adaptive else None
    starts = None
    if dense_starts is not None:
        if defense is None:
            raise ConfigError("--dense-starts is for --adaptive audits (their references prune the bank's models)")
        starts = starts_from_bank(ReferenceBank.load(dense_starts), defense, bank_key(ckpt, split, tcfg, config),
                              lira_inclusion(split, config))
    bank = open_bank(reference_bank, bank_key(ckpt, split, tcfg, config, defense, starts is not None), config)
    bank_dir = None if reference_bank is None or isinstance(reference_bank, ReferenceBank) else Path(reference_bank)
    dev = pick_device(device)
    train_set, test_set = datasets_of(ckpt, data_dir, download)
    split.check_dataset(train_set)
    model.to(dev)
    create_run_dir(out)
    write_json_atomic(out / "config.json", {"checkpoint": str(ckpt.path), "audit": dataclasses.asdict(config),
                                            "reference_training": dataclasses.asdict(tcfg), "split": split.summary(),
                                            "reference_bank": str(bank.path or bank_dir or "") or None,
                                            "dense_starts": str(dense_starts) if dense_starts is not None else None,
                                            "environment": environment_info()})
    t_start = time.perf_counter()
    trained = fill_bank(bank, config, split, train_set, test_set, target_model_record(ckpt), tcfg, bank_dir or out,
                        save=bank_dir is not None, device=dev, console=console, defense=defense, starts=starts)
    bank_seconds = time.perf_counter() - t_start
    _say_reused(bank, trained, config, console)
    target = Target.of(model, split, train_set, dev)
    results, info, lira_extra = _attack(config, bank, target, out)
    info["bank"] = _bank_info(bank, trained, info, bank_seconds)
    accuracy = _accuracies(model, split, train_set, test_set, dev)
    report = {
        "checkpoint": str(ckpt.path), "defense": (ckpt.meta.get("privacy") or {}).get("defense"),
        "split": split.summary(), "accuracy": accuracy, "models": info,
        "attacker": "adaptive: LiRA/RMIA reference models trained with the target's defense" if defense else
                    "non-adaptive: reference models trained like the undefended target",
        "queries": "one un-augmented query per example, eval mode",
        "attacks": [r.to_dict(roc_points=400) for r in results], "seconds": time.perf_counter() - t_start,
        "attack_seconds": time.perf_counter() - t_start - bank_seconds}
    _write_report(out, report, results, target, lira_extra, "/".join(ckpt.path.parts[-2:]))
    console.print(summary_table(results, accuracy))
    return report


def _accuracies(model, split: MembershipSplit, train_set, test_set, device) -> dict[str, float]:
    """The target's accuracy on the test set, its members and its non-members."""
    parts = (("test", test_set), ("members", subset(train_set, split.members)),
             ("nonmembers", subset(train_set, split.nonmembers)))
    return {part: evaluate(model, data, device=device)["accuracy"] for part, data in parts}


@dataclass(frozen=True)
class Target:
    """The audited examples (all members, then all non-members) and the target's logits on them."""

    indices: np.ndarray
    is_member: np.ndarray
    labels: np.ndarray
    logits: np.ndarray

    @classmethod
    def of(cls, model, split: MembershipSplit, train_set, device) -> "Target":
        idx = np.concatenate([split.members, split.nonmembers])
        is_member = np.r_[np.ones(len(split.members), bool), np.zeros(len(split.nonmembers), bool)]
        labels = train_set.labels[torch.as_tensor(idx)].numpy()
        return cls(idx, is_member, labels, model_logits(model, train_set.images[torch.as_tensor(idx)], device=device))


def _attack(config: AuditConfig, bank: ReferenceBank, target: Target, out: Path
            ) -> tuple[list[AttackMetrics], dict[str, Any], dict[str, np.ndarray]]:
    """Every attack of ``config`` on the target: metric and Shokri's attacks from the shadow models, LiRA from the
    reference models (online and offline)."""
    results: list[AttackMetrics] = []
    info: dict[str, Any] = {}
    if config.needs_shadows:
        s = bank.shadow
        info["shadow"] = {"models": s.models, "train_size": s.train_size, "nonmembers_each": s.train_size}
        for name in METRIC_ATTACKS:
            if name in config.attacks:
                results.append(metric_attack(name, target.logits, target.labels, target.is_member,
                                             ref_logits=s.logits.astype(np.float64), ref_labels=s.labels,
                                             ref_is_member=s.is_member, per_class=config.per_class_thresholds))
        if "shadow" in config.attacks:
            attack = bank.shadow_attack(per_class=config.shadow_per_class, seed=config.seed)
            results.append(attack.attack(target.logits, target.labels, target.is_member))
    lira_extra: dict[str, np.ndarray] = {}
    if config.needs_references:
        ref = bank.lira
        if not np.array_equal(ref.indices, target.indices):  # the key pins the split; this guards a hand-edited bank
            raise ConfigError("the reference bank's LiRA models were scored on other examples than this split's "
                              "members and non-members")
        np.save(out / "lira_inclusion.npy", ref.inclusion)
        phi_ref, phi = ref.phi(target.labels), lira_phi(target.logits, target.labels)
        if "lira" in config.attacks:
            for online in (True, False):
                results.append(lira_attack(phi, target.is_member, phi_ref, ref.inclusion, online=online,
                                           global_variance=config.global_variance))
        if "rmia" in config.attacks:
            for online, single in ((True, False), (False, False), (False, True)):
                results.append(rmia_attack(target.logits, target.labels, target.is_member, ref.logits, ref.inclusion,
                                           online=online, single=single))
        lira_extra = {"lira_phi": phi, "lira_phi_reference": phi_ref}
        info["lira"] = {"models": ref.models, "examples_per_model": ref.inclusion.sum(1).tolist()}
    return results, info, lira_extra


def _say_reused(bank: ReferenceBank, trained: dict[str, bool], config: AuditConfig, console: Console) -> None:
    for part, what, used in (("shadow", "shadow models", config.needs_shadows),
                             ("lira", "LiRA reference models", config.needs_references)):
        if used and not trained[part]:
            console.print(f"reusing {getattr(bank, part).models} {what} from reference bank "
                          f"{bank.path or '(in memory)'}")


def _bank_info(bank: ReferenceBank, trained: dict[str, bool], info: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"path": str(bank.path) if bank.path else None,
            "trained_now": [p for p, t in trained.items() if t],
            "reused": [p for p in ("shadow", "lira") if p in info and not trained[p]],
            "seconds_now": seconds,
            "seconds_when_built": {p: bank.info[p]["seconds"] for p in ("shadow", "lira")
                                   if p in info and p in bank.info}}


def _write_report(out: Path, report: dict[str, Any], results: list[AttackMetrics], target: Target,
                  lira_extra: dict[str, np.ndarray], name: str) -> None:
    """scores.npz, report.json, report.md and the two ROC plots."""
    scores = {f"score_{r.attack}": r.scores for r in results}
    write_npz(out / "scores.npz", is_member=target.is_member, indices=target.indices, labels=target.labels, **scores,
              **lira_extra)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", markdown_table(report))
    plot_roc(results, out / "roc.png", log=False, title=f"{name}: ROC")
    plot_roc(results, out / "roc-log.png", log=True, title=f"{name}: ROC (log-log)")
