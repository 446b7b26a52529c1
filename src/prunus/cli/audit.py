"""``prunus audit``: membership-inference attacks on a checkpoint that records its split; a report and ROC plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunus.cli.args import add_data_args, check_new_dir, positive_int
from prunus.privacy.audit import run_audit
from prunus.privacy.audit_config import ATTACKS, AuditConfig


def add_parsers(sub) -> None:
    a = AuditConfig()
    au = sub.add_parser("audit", help="membership-inference audit of a checkpoint that records its split: "
                                      "metric, shadow-model, LiRA and RMIA attacks; a table and ROC PNGs")
    au.add_argument("checkpoint", help="checkpoint directory (or a `prunus defend` run directory)")
    au.add_argument("--attack", action="append", metavar="NAME",
                    help=f"attack(s), repeatable or comma-separated: {', '.join(ATTACKS)}, metric, all (default: lira)")
    au.add_argument("--reference-models", type=positive_int, default=a.reference_models,
                    help="LiRA reference models, trained on random halves of members + non-members")
    au.add_argument("--shadow-models", type=positive_int, default=a.shadow_models,
                    help="shadow models on the attacker pool (metric thresholds, shadow attack)")
    au.add_argument("--per-class-thresholds", action="store_true", help="metric attacks: one threshold per class")
    au.add_argument("--shadow-per-class", action="store_true", help="shadow attack: one attack model per class")
    au.add_argument("--variance", choices=("auto", "global", "per-example"), default="auto",
                    help="LiRA Gaussians: auto = global below 64 models per side")
    au.add_argument("--epochs", type=positive_int,
                    help="reference/shadow training epochs (default: the target's recipe)")
    au.add_argument("--seed", type=int, default=a.seed)
    au.add_argument("--adaptive", action="store_true",
                    help="an attacker who knows the defense: LiRA/RMIA reference models are trained with the target's "
                         "own defense (prunus defend's recorded config), not like the undefended target")
    au.add_argument("--reference-bank", metavar="DIR",
                    help="share shadow/reference models between audits of one split: reuse the bank in DIR (built "
                         "with the same split, recipe, --seed, --epochs and model counts), or train them and store "
                         "them there when DIR is new; e.g. every `prunus defend --init TARGET` model of one target")
    au.add_argument("--dense-starts", metavar="BANK",
                    help="with --adaptive, for a target pruned from the undefended model: the non-adaptive reference "
                         "bank of that target (same --seed and --reference-models); each adaptive reference prunes "
                         "that bank's model of its half instead of training a dense one first")
    au.add_argument("--out", required=True, help="report directory to create")
    add_data_args(au)


def run(args: argparse.Namespace) -> int:
    variance = {"auto": None, "global": True, "per-example": False}[args.variance]
    config = AuditConfig(
        attacks=tuple(args.attack or ("lira",)), reference_models=args.reference_models,
        shadow_models=args.shadow_models,
        per_class_thresholds=args.per_class_thresholds, shadow_per_class=args.shadow_per_class,
        global_variance=variance, epochs=args.epochs, seed=args.seed, adaptive=args.adaptive,
    ).validate()
    out = Path(args.out)
    check_new_dir(out)
    report = run_audit(args.checkpoint, config, out, reference_bank=args.reference_bank,
                       dense_starts=args.dense_starts, data_dir=args.data_dir, download=args.download,
                       device=args.device)
    best = max(report["attacks"], key=lambda r: r["auc"])
    print(f"strongest attack {best['attack']}: AUC {best['auc']:.4f}, "
          f"TPR@0.1%FPR {100 * best['tpr_at_0.1pct_fpr']:.2f}% "
          f"({best['members']} members, {best['nonmembers']} non-members); report {out / 'report.md'}, "
          f"ROC {out / 'roc.png'}, {out / 'roc-log.png'}")
    return 0


COMMANDS = {"audit": run}
