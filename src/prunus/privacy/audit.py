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
:func:`prepare_reference_bank` or by the first audit that uses the directory.

Writes into ``OUT``: ``config.json``, ``shadow/NN`` and ``reference/NN`` training runs
(into the bank directory instead when one is used), ``report.json`` (every metric with
its counts and ROC), ``report.md`` (the table),
``roc.png`` (linear axes) and ``roc-log.png`` (log-log), ``scores.npz`` (per-example
scores and membership, plain arrays).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from prunus._optional import require
from prunus.data import load_dataset
from prunus.environment import environment_info
from prunus.errors import ConfigError
from prunus.io import atomic_write, write_json_atomic, write_text_atomic
from prunus.models import build_model
from prunus.privacy.attacks import METRIC_ATTACKS, lira_attack, lira_phi, metric_attack, model_logits
from prunus.privacy.bank import BANK_FORMAT, LiraOutputs, ReferenceBank, ShadowOutputs, check_bank_dir
from prunus.privacy.defenses import load_defended
from prunus.privacy.metrics import AttackMetrics
from prunus.privacy.splits import MembershipSplit, balanced_inclusion, split_of_checkpoint, subset
from prunus.train.config import TrainConfig
from prunus.train.distributed import pick_device
from prunus.train.rundir import check_run_dir, create_run_dir
from prunus.train.trainer import Trainer, evaluate

ATTACKS = (*METRIC_ATTACKS, "shadow", "lira")
ATTACK_GROUPS = {"metric": tuple(METRIC_ATTACKS), "all": ATTACKS}


def parse_attacks(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Expand ``metric``/``all`` and comma lists; unknown names are one ConfigError line."""
    out: list[str] = []
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            expanded = ATTACK_GROUPS.get(name, (name,))
            for n in expanded:
                if n not in ATTACKS:
                    raise ConfigError(f"--attack {name!r} is not an attack; choose from "
                                      f"{', '.join(ATTACKS)}, metric or all")
                if n not in out:
                    out.append(n)
    if not out:
        raise ConfigError("--attack needs at least one attack name")
    return tuple(out)


@dataclass
class AuditConfig:
    attacks: tuple[str, ...] = ("lira",)
    reference_models: int = 16
    shadow_models: int = 4
    per_class_thresholds: bool = False
    shadow_per_class: bool = False
    global_variance: bool | None = None  # None: global below 64 models per side (Carlini et al.)
    epochs: int | None = None  # reference/shadow training epochs (default: the target's recipe)
    seed: int = 0
    eval_batch_size: int = 1000

    def validate(self) -> "AuditConfig":
        self.attacks = parse_attacks(self.attacks)
        if "lira" in self.attacks and self.reference_models < 2:
            raise ConfigError(f"--reference-models must be at least 2 for LiRA (IN and OUT models for every example), "
                              f"got {self.reference_models}")
        if self.reference_models < 1:
            raise ConfigError(f"--reference-models must be at least 1, got {self.reference_models}")
        if self.needs_shadows and self.shadow_models < 1:
            raise ConfigError(f"--shadow-models must be at least 1 for the metric and shadow attacks, got {self.shadow_models}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        return self

    @property
    def needs_shadows(self) -> bool:
        return any(a in METRIC_ATTACKS or a == "shadow" for a in self.attacks)


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


def bank_key(ckpt, split: MembershipSplit, tcfg, config: AuditConfig) -> dict[str, Any]:
    """What a target's shadow and reference models depend on: a :class:`ReferenceBank` built for the same key
    holds exactly the models this audit would train (same split, architecture, recipe and seeds).

    The recipe's own ``seed`` is left out (reference models get seeds of their own from ``config.seed``),
    and so are fields that do not change the weights (evaluation batch size, checkpoints kept).
    """
    recipe = dataclasses.asdict(tcfg)
    for k in ("seed", "keep_checkpoints", "eval_batch_size"):
        recipe.pop(k, None)
    dataset = ckpt.meta.get("dataset") or {}
    return {"format": BANK_FORMAT, "dataset": {"name": dataset.get("name"), "image_size": dataset.get("image_size")},
            "split": split.summary(), "model": _model_record(ckpt), "recipe": recipe, "seed": config.seed}


def _model_record(ckpt) -> dict[str, Any]:
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
                  f"({'as many as the target' if n_in == len(split.members) else 'the pool is too small for a full-size shadow training set'})")
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


def _train_lira_outputs(split: MembershipSplit, train_set, ref_test, record, tcfg, config: AuditConfig, out_dir: Path,
                        *, device, console: Console) -> LiraOutputs:
    """LiRA reference models trained like the target on balanced random halves of members + non-members."""
    audit_idx = np.concatenate([split.members, split.nonmembers])
    n = len(audit_idx)
    inclusion = balanced_inclusion(config.reference_models, n, config.seed + 17)
    console.print(f"training {config.reference_models} LiRA reference models on random halves of the "
                  f"{n} members and non-members")
    r_logits = train_models("reference", [audit_idx[row] for row in inclusion], train_set, ref_test, record, tcfg,
                            out_dir, train_set.images[torch.as_tensor(audit_idx)], device=device, console=console,
                            seed=config.seed + 900)
    return LiraOutputs(inclusion, r_logits, audit_idx)


def _fill_bank(bank: ReferenceBank, config: AuditConfig, split: MembershipSplit, train_set, test_set, record, tcfg,
               directory: Path, *, save: bool, device, console: Console) -> dict[str, bool]:
    """Train the parts of ``bank`` this audit needs and it lacks (into ``directory/shadow``, ``directory/reference``);
    save the bank into ``directory`` when ``save``.  Returns which parts were trained now."""

    # reference/shadow models report their per-epoch test accuracy on the first 1000 test images only
    ref_test = subset(test_set, np.arange(min(1000, len(test_set))), "test")
    trained = {"shadow": False, "lira": False}
    for part, needed, sub, train in (("shadow", config.needs_shadows, "shadow", _train_shadow_outputs),
                                     ("lira", "lira" in config.attacks, "reference", _train_lira_outputs)):
        if not needed or getattr(bank, part) is not None:
            continue
        if save:  # a crashed build may have left part of this training behind
            shutil.rmtree(directory / sub, ignore_errors=True)
        t0 = time.perf_counter()
        setattr(bank, part, train(split, train_set, ref_test, record, tcfg, config, directory / sub, device=device,
                                  console=console))
        bank.info[part] = {"seconds": time.perf_counter() - t0, "epochs": tcfg.epochs,
                           "environment": environment_info()}
        trained[part] = True
    if save and any(trained.values()):
        bank.save(directory)
    return trained


def _open_bank(reference_bank, key: dict[str, Any], config: AuditConfig) -> ReferenceBank:
    """The bank an audit uses: the given object (checked, must hold every part needed), the bank saved in a
    directory (checked; missing parts are trained into it later), or a new empty one."""
    counts = {"shadow_models": config.shadow_models if config.needs_shadows else None,
              "reference_models": config.reference_models if "lira" in config.attacks else None}
    if isinstance(reference_bank, ReferenceBank):
        reference_bank.check(key, **counts, need_shadow=config.needs_shadows, need_lira="lira" in config.attacks)
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
    bank = _open_bank(directory, bank_key(ckpt, split, tcfg, config), config)
    missing_shadow = config.needs_shadows and bank.shadow is None
    if not missing_shadow and ("lira" not in config.attacks or bank.lira is not None):
        return bank
    train_set, test_set = _datasets(ckpt, data_dir, download)
    split.check_dataset(train_set)
    _fill_bank(bank, config, split, train_set, test_set, _model_record(ckpt), tcfg, directory, save=True,
               device=pick_device(device), console=console)
    return bank


def _datasets(ckpt, data_dir, download):
    dataset = ckpt.meta.get("dataset") or {}
    if "name" not in dataset:
        raise ConfigError(f"checkpoint {ckpt.path} does not record its dataset")
    return tuple(load_dataset(dataset["name"], part, data_dir=data_dir, download=download,
                              image_size=dataset.get("image_size")) for part in ("train", "test"))


def run_audit(
    checkpoint: str | Path,
    config: AuditConfig,
    out: str | Path,
    *,
    reference_bank: ReferenceBank | str | Path | None = None,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the attacks of ``config`` against ``checkpoint`` and write the report into ``out``.

    ``reference_bank``: None trains the shadow/reference models into ``out``; a directory reuses
    the bank saved there (or builds and saves it there, see :func:`prepare_reference_bank`); a
    :class:`ReferenceBank` object is used as it is (it must hold every part the attacks need, and
    keeps Shokri's fitted attack classifier between audits).  A bank built for another split,
    recipe, seed or model count is refused before anything is written.
    """

    config.validate()
    console = console or Console()
    out = Path(out)
    check_run_dir(out, resume=False)
    require("matplotlib", "prunus audit's ROC plots")
    model, ckpt = load_defended(checkpoint)
    split: MembershipSplit = split_of_checkpoint(ckpt)
    tcfg = reference_recipe(ckpt, config)
    key = bank_key(ckpt, split, tcfg, config)
    bank = _open_bank(reference_bank, key, config)
    bank_dir = None if reference_bank is None or isinstance(reference_bank, ReferenceBank) else Path(reference_bank)
    dev = pick_device(device)
    train_set, test_set = _datasets(ckpt, data_dir, download)
    split.check_dataset(train_set)
    model.to(dev)

    create_run_dir(out)
    write_json_atomic(out / "config.json", {"checkpoint": str(ckpt.path), "audit": dataclasses.asdict(config),
                                            "reference_training": dataclasses.asdict(tcfg), "split": split.summary(),
                                            "reference_bank": str(bank.path or bank_dir or "") or None,
                                            "environment": environment_info()})
    t_start = time.perf_counter()
    trained = _fill_bank(bank, config, split, train_set, test_set, _model_record(ckpt), tcfg, bank_dir or out,
                         save=bank_dir is not None, device=dev, console=console)
    bank_seconds = time.perf_counter() - t_start
    for part, what, used in (("shadow", "shadow models", config.needs_shadows),
                             ("lira", "LiRA reference models", "lira" in config.attacks)):
        if used and not trained[part]:
            where = bank.path or "(in memory)"
            console.print(f"reusing {getattr(bank, part).models} {what} from reference bank {where}")
    audit_idx = np.concatenate([split.members, split.nonmembers])
    is_member = np.r_[np.ones(len(split.members), bool), np.zeros(len(split.nonmembers), bool)]
    labels = train_set.labels[torch.as_tensor(audit_idx)].numpy()
    target_logits = model_logits(model, train_set.images[torch.as_tensor(audit_idx)], device=dev)
    results: list[AttackMetrics] = []
    info: dict[str, Any] = {}

    if config.needs_shadows:
        s = bank.shadow
        ref_logits = s.logits.astype(np.float64)
        info["shadow"] = {"models": s.models, "train_size": s.train_size, "nonmembers_each": s.train_size}
        for name in METRIC_ATTACKS:
            if name in config.attacks:
                results.append(metric_attack(name, target_logits, labels, is_member, ref_logits=ref_logits,
                                             ref_labels=s.labels, ref_is_member=s.is_member,
                                             per_class=config.per_class_thresholds))
        if "shadow" in config.attacks:
            attack = bank.shadow_attack(per_class=config.shadow_per_class, seed=config.seed)
            results.append(attack.attack(target_logits, labels, is_member))

    lira_extra: dict[str, np.ndarray] = {}
    if "lira" in config.attacks:
        ref = bank.lira
        if not np.array_equal(ref.indices, audit_idx):  # the key pins the split; this guards a hand-edited bank
            raise ConfigError("the reference bank's LiRA models were scored on other examples than this split's "
                              "members and non-members")
        np.save(out / "lira_inclusion.npy", ref.inclusion)
        phi_ref = ref.phi(labels)
        phi = lira_phi(target_logits, labels)
        for online in (True, False):
            results.append(lira_attack(phi, is_member, phi_ref, ref.inclusion, online=online,
                                       global_variance=config.global_variance))
        lira_extra = {"lira_phi": phi, "lira_phi_reference": phi_ref}
        info["lira"] = {"models": ref.models, "examples_per_model": ref.inclusion.sum(1).tolist()}
    info["bank"] = {"path": str(bank.path) if bank.path else None,
                    "trained_now": [p for p, t in trained.items() if t],
                    "reused": [p for p in ("shadow", "lira") if p in info and not trained[p]],
                    "seconds_now": bank_seconds,
                    "seconds_when_built": {p: bank.info[p]["seconds"] for p in ("shadow", "lira")
                                           if p in info and p in bank.info}}

    accuracy = {
        "test": evaluate(model, test_set, device=dev)["accuracy"],
        "members": evaluate(model, subset(train_set, split.members), device=dev)["accuracy"],
        "nonmembers": evaluate(model, subset(train_set, split.nonmembers), device=dev)["accuracy"],
    }
    report = {
        "checkpoint": str(ckpt.path), "defense": (ckpt.meta.get("privacy") or {}).get("defense"),
        "split": split.summary(), "accuracy": accuracy, "models": info,
        "queries": "one un-augmented query per example, eval mode",
        "attacks": [r.to_dict(roc_points=400) for r in results], "seconds": time.perf_counter() - t_start,
        "attack_seconds": time.perf_counter() - t_start - bank_seconds,
    }
    scores = {f"score_{r.attack}": r.scores for r in results}
    _write_npz(out / "scores.npz", is_member=is_member, indices=audit_idx, labels=labels, **scores, **lira_extra)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", markdown_table(report))
    name = "/".join(ckpt.path.parts[-2:])
    plot_roc(results, out / "roc.png", log=False, title=f"{name}: ROC")
    plot_roc(results, out / "roc-log.png", log=True, title=f"{name}: ROC (log-log)")
    console.print(summary_table(results, accuracy))
    return report


def _write_npz(path: Path, **arrays) -> None:
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})


def markdown_table(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    lines = [
        f"# Membership-inference audit of `{report['checkpoint']}`",
        "",
        f"Defense: {report['defense'] or 'unknown'}. Test accuracy {acc['test']:.2f}%, members {acc['members']:.2f}%, "
        f"non-members {acc['nonmembers']:.2f}%. {report['queries']}.",
        "",
        "| attack | AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | members | non-members | threshold chosen on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in report["attacks"]:
        bal = "n/a" if a["balanced_accuracy"] is None else f"{100 * a['balanced_accuracy']:.2f}%"
        low = f"{100 * a['tpr_at_0.1pct_fpr']:.2f}%" + (" (0 FP)" if a["fpr_resolution"] > 0.001 else "")
        lines.append(f"| {a['attack']} | {a['auc']:.4f} | {bal} | {100 * a['tpr_at_1pct_fpr']:.2f}% | {low} | "
                     f"{a['members']} | {a['nonmembers']} | {a['threshold_source']} |")
    lines += ["", "AUC, TPR@FPR: threshold-free, over all thresholds on the evaluated members/non-members. "
              "Balanced accuracy: at a threshold fixed beforehand on reference data only. "
              "\"(0 FP)\": fewer than 1000 non-members, so 0.1% FPR means no false positive at all.", ""]
    return "\n".join(lines)


def summary_table(results: list[AttackMetrics], accuracy: dict[str, float]) -> Table:
    table = Table(title=f"membership inference (test {accuracy['test']:.2f}%, members {accuracy['members']:.2f}%, "
                        f"non-members {accuracy['nonmembers']:.2f}%)")
    for col in ("attack", "AUC", "bal. acc.", "TPR@1%FPR", "TPR@0.1%FPR", "members/non"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    for r in results:
        bal = "n/a" if r.balanced_accuracy is None else f"{100 * r.balanced_accuracy:.2f}%"
        table.add_row(r.attack, f"{r.auc:.4f}", bal, f"{100 * r.tpr_at_1pct_fpr:.2f}%",
                      f"{100 * r.tpr_at_01pct_fpr:.2f}%", f"{r.members}/{r.nonmembers}")
    return table


def plot_roc(results: list[AttackMetrics], path: Path, *, log: bool, title: str) -> None:
    """One ROC curve per attack, written atomically as a PNG (log-log axes when ``log``)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    try:
        for r in results:
            fpr, tpr = r.fpr, r.tpr
            if log:
                keep = (fpr > 0) & (tpr > 0)
                fpr, tpr = fpr[keep], tpr[keep]
            ax.plot(fpr, tpr, label=f"{r.attack} (AUC {r.auc:.3f})", lw=1.4)
        lo = min((r.fpr_resolution for r in results), default=1e-3) if log else 0.0
        ax.plot([max(lo, 1e-6), 1], [max(lo, 1e-6), 1], "k--", lw=0.8, label="chance")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(max(lo, 1e-6), 1)
            ax.set_ylim(max(lo, 1e-6), 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        with atomic_write(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
