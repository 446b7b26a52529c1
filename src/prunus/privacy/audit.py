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

Writes into ``OUT``: ``config.json``, ``shadow/NN`` and ``reference/NN`` training runs,
``report.json`` (every metric with its counts and ROC), ``report.md`` (the table),
``roc.png`` (linear axes) and ``roc-log.png`` (log-log), ``scores.npz`` (per-example
scores and membership, plain arrays).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from prunus.checkpoint import write_json_atomic
from prunus.errors import ConfigError
from prunus.privacy.attacks import METRIC_ATTACKS, ShadowAttack, lira_attack, lira_phi, metric_attack, model_logits
from prunus.privacy.metrics import AttackMetrics
from prunus.privacy.splits import MembershipSplit, balanced_inclusion, subset

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
    from prunus.training import TrainConfig

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
    from prunus.models import build_model
    from prunus.training import Trainer

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


def run_audit(
    checkpoint: str | Path,
    config: AuditConfig,
    out: str | Path,
    *,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the attacks of ``config`` against ``checkpoint`` and write the report into ``out``."""
    from prunus._optional import require
    from prunus.data import load_dataset
    from prunus.privacy.defenses import load_defended
    from prunus.privacy.splits import split_of_checkpoint
    from prunus.training import check_run_dir, create_run_dir, environment_info, evaluate, pick_device

    config.validate()
    console = console or Console()
    out = Path(out)
    check_run_dir(out, resume=False)
    require("matplotlib", "prunus audit's ROC plots")
    model, ckpt = load_defended(checkpoint)
    split: MembershipSplit = split_of_checkpoint(ckpt)
    dataset = ckpt.meta.get("dataset") or {}
    if "name" not in dataset:
        raise ConfigError(f"checkpoint {ckpt.path} does not record its dataset")
    tcfg = reference_recipe(ckpt, config)
    dev = pick_device(device)
    train_set = load_dataset(dataset["name"], "train", data_dir=data_dir, download=download, image_size=dataset.get("image_size"))
    test_set = load_dataset(dataset["name"], "test", data_dir=data_dir, download=download, image_size=dataset.get("image_size"))
    split.check_dataset(train_set)
    model.to(dev)
    # reference/shadow models report their per-epoch test accuracy on the first 1000 test images only
    ref_test = subset(test_set, np.arange(min(1000, len(test_set))), "test")

    create_run_dir(out)
    write_json_atomic(out / "config.json", {"checkpoint": str(ckpt.path), "audit": dataclasses.asdict(config),
                                            "reference_training": dataclasses.asdict(tcfg), "split": split.summary(),
                                            "environment": environment_info()})
    t_start = time.perf_counter()
    audit_idx = np.concatenate([split.members, split.nonmembers])
    is_member = np.r_[np.ones(len(split.members), bool), np.zeros(len(split.nonmembers), bool)]
    labels = train_set.labels[torch.as_tensor(audit_idx)].numpy()
    target_logits = model_logits(model, train_set.images[torch.as_tensor(audit_idx)], device=dev)
    results: list[AttackMetrics] = []
    record = ckpt.meta["model"]
    record = {k: v for k, v in record.items() if k in ("name", "in_channels", "num_classes", "options")}
    info: dict[str, Any] = {}

    if config.needs_shadows:
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
        s_logits = train_models("shadow", shadow_in, train_set, ref_test, record, tcfg, out / "shadow",
                                train_set.images[torch.as_tensor(shadow_eval)], device=dev, console=console,
                                seed=config.seed + 500)
        ref_logits, ref_labels, ref_member = [], [], []
        for k, d in enumerate(draws):
            rows = np.array([pos[int(i)] for i in d])
            ref_logits.append(s_logits[k][rows])
            ref_labels.append(train_set.labels[torch.as_tensor(d)].numpy())
            ref_member.append(np.r_[np.ones(n_in, bool), np.zeros(len(d) - n_in, bool)])
        ref_logits, ref_labels, ref_member = np.concatenate(ref_logits), np.concatenate(ref_labels), np.concatenate(ref_member)
        info["shadow"] = {"models": config.shadow_models, "train_size": n_in, "nonmembers_each": n_in}
        for name in METRIC_ATTACKS:
            if name in config.attacks:
                results.append(metric_attack(name, target_logits, labels, is_member, ref_logits=ref_logits,
                                             ref_labels=ref_labels, ref_is_member=ref_member,
                                             per_class=config.per_class_thresholds))
        if "shadow" in config.attacks:
            attack = ShadowAttack(per_class=config.shadow_per_class, seed=config.seed).fit(ref_logits, ref_labels, ref_member)
            results.append(attack.attack(target_logits, labels, is_member))

    lira_extra: dict[str, np.ndarray] = {}
    if "lira" in config.attacks:
        n = len(audit_idx)
        inclusion = balanced_inclusion(config.reference_models, n, config.seed + 17)
        np.save(out / "lira_inclusion.npy", inclusion)
        console.print(f"training {config.reference_models} LiRA reference models on random halves of the "
                      f"{n} members and non-members")
        r_logits = train_models("reference", [audit_idx[row] for row in inclusion], train_set, ref_test, record, tcfg,
                                out / "reference", train_set.images[torch.as_tensor(audit_idx)], device=dev,
                                console=console, seed=config.seed + 900)
        phi_ref = np.stack([lira_phi(lg, labels) for lg in r_logits])
        phi = lira_phi(target_logits, labels)
        for online in (True, False):
            results.append(lira_attack(phi, is_member, phi_ref, inclusion, online=online,
                                       global_variance=config.global_variance))
        lira_extra = {"lira_phi": phi, "lira_phi_reference": phi_ref}
        info["lira"] = {"models": config.reference_models, "examples_per_model": inclusion.sum(1).tolist()}

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
    }
    scores = {f"score_{r.attack}": r.scores for r in results}
    _write_npz(out / "scores.npz", is_member=is_member, indices=audit_idx, labels=labels, **scores, **lira_extra)
    write_json_atomic(out / "report.json", report)
    _write_text(out / "report.md", markdown_table(report))
    name = "/".join(ckpt.path.parts[-2:])
    plot_roc(results, out / "roc.png", log=False, title=f"{name}: ROC")
    plot_roc(results, out / "roc-log.png", log=True, title=f"{name}: ROC (log-log)")
    console.print(summary_table(results, accuracy))
    return report


def _write_npz(path: Path, **arrays) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    import os

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
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
