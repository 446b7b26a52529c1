"""``prunus prune``: a dense model -> method epochs -> hard-prune -> masked retraining, with its tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunus.cli.args import (
    add_distill_args,
    add_method_options,
    add_precision_arg,
    add_run_dir_args,
    check_run_flags,
    config_from_args,
    given_method_options,
    positive_int,
    print_summary,
    resources_of,
)
from prunus.data import DATASETS
from prunus.errors import ConfigError
from prunus.jobs.prune import RETRAIN_LR_FACTOR, RHO_SCHEDULES, PruneConfig, run_pruning
from prunus.methods.registry import METHODS, method_from_recipe
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan, ratio_for_compression, read_recipe
from prunus.train.config import OPTIMIZERS, TrainConfig
from prunus.train.run import train
from prunus.train.rundir import check_run_dir


def add_parsers(sub) -> None:
    pdefaults = PruneConfig()
    pr = sub.add_parser("prune", help="prune a dense model (SLR, ADMM, reweighted, magnitude or gradual), "
                                      "hard-prune, retrain with masks")
    pr.add_argument("--method", choices=list(METHODS), help="default: the recipe's method, else slr")
    pr.add_argument("--init", help="dense checkpoint or run directory (default: train one first, into RUN_DIR/dense)")
    pr.add_argument("--model", help="model to train densely when there is no --init (must match --init if both)")
    pr.add_argument("--dataset", help="dataset for the dense model when there is no --init")
    pr.add_argument("--dense-epochs", type=positive_int, default=15, help="epochs of dense training without --init")
    what = pr.add_mutually_exclusive_group()
    what.add_argument("--recipe", help="YAML recipe: prune: {tensor name pattern: {structure, ratio}}, optionally "
                                       "method: {name, options}")
    what.add_argument("--ratio", type=float, help="fraction of zeros in every prunable layer (first and last skipped)")
    what.add_argument("--compression", type=float,
                      help="like --ratio, as a rate: 20 means 20x fewer weights (ratio 0.95)")
    pr.add_argument("--structure", default="unstructured",
                    help="unstructured, filter, channel, column, pattern, block:4x1, nm:2:4")
    pr.add_argument("--global", dest="global_", action="store_true",
                    help="one magnitude threshold across layers (unstructured)")
    pr.add_argument("--round-to", type=positive_int, default=1,
                    help="filter/channel: keep a multiple of this many per layer (8 gives faster kernels)")
    pr.add_argument("--prune-first", action="store_true",
                    help="also prune the first layer (skipped by default; with filters it buys the most speed)")
    pr.add_argument("--epochs", type=int, default=pdefaults.epochs, help="epochs with the method active")
    pr.add_argument("--retrain-epochs", type=int, default=pdefaults.retrain_epochs, help="masked retraining epochs")
    pr.add_argument("--optimizer", choices=OPTIMIZERS, default=pdefaults.optimizer)
    pr.add_argument("--lr", type=float, default=pdefaults.lr)
    pr.add_argument("--retrain-lr", type=float,
                    help=f"masked retraining's lr (default: --lr x {RETRAIN_LR_FACTOR:g}, a fine-tuning lr)")
    pr.add_argument("--batch-size", type=positive_int, default=pdefaults.batch_size)
    pr.add_argument("--seed", type=int, default=pdefaults.seed)
    pr.add_argument("--update-every", type=positive_int,
                    help="batches between method rounds (default: 100 for slr, admm and reweighted, fewer when the "
                         "epochs would make under 12 rounds)")
    pr.add_argument("--rho-schedule", choices=RHO_SCHEDULES, default=pdefaults.rho_schedule,
                    help="SLR/ADMM (rho) and reweighted (lambda): budget = the penalty grows so the weights reach "
                         "the set by the last round; fixed = it stays (SLR/ADMM: or grows by --rho-factor)")
    pr.add_argument("--bn-recalibrate", type=int, default=0, metavar="BATCHES",
                    help="after the hard-prune, also report the accuracy with BatchNorm statistics re-estimated on "
                         "this many training batches (no gradient step; retraining goes on without it)")
    add_distill_args(pr)
    add_precision_arg(pr, pdefaults.precision)
    add_method_options(pr)
    add_run_dir_args(pr, "prune")


def run(args: argparse.Namespace) -> int:
    check_run_flags(args, "prune", needed=("--out",),
                    settings=("--out", "--init", "--recipe", "--ratio", "--compression", "--compile"))
    if args.resume:
        return _report(run_pruning(None, None, None, args.resume, resume=True, resources=resources_of(args)))
    out = Path(args.out)
    check_run_dir(out, resume=False)
    if args.recipe is None and args.ratio is None and args.compression is None:
        raise ConfigError("prunus prune needs --recipe FILE, --ratio R or --compression X")
    recipe = read_recipe(args.recipe) if args.recipe else {}
    method, options = args.method or "slr", given_method_options(args)
    # the recipe names the method; flags may add or override options, not change it
    if isinstance(recipe, dict) and "method" in recipe:
        method, recipe_options = method_from_recipe(recipe["method"], args.recipe)
        if args.method and args.method != method:
            raise ConfigError(f"--method {args.method} contradicts recipe {args.recipe}, whose method is {method}")
        options = {**recipe_options, **options}
    config = config_from_args(PruneConfig, args, method=method, options=options).validate()

    # the model to prune: from --init, or the architecture to train densely first
    if args.init:
        model, ckpt = load_model(args.init)
        recorded = {"--model": ckpt.meta["model"]["name"], "--dataset": ckpt.meta.get("dataset", {}).get("name")}
        for flag, given in (("--model", args.model), ("--dataset", args.dataset)):
            if given and given != recorded[flag]:
                raise ConfigError(f"{flag} {given} does not match --init {args.init}, which holds {recorded[flag]}")
    else:
        if not (args.model and args.dataset):
            raise ConfigError("without --init, prunus prune needs --model and --dataset to train the dense model first")
        if args.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)}")
        spec = DATASETS[args.dataset]
        model = build_model(args.model, in_channels=spec.in_channels, num_classes=spec.num_classes)

    # the plan, validated against the model before any training or writing
    if args.recipe:
        plan = Plan.from_dict(recipe, source=args.recipe)
    else:
        ratio = args.ratio if args.ratio is not None else ratio_for_compression(args.compression)
        plan = Plan.uniform(model, ratio, args.structure, global_unstructured=args.global_, round_to=args.round_to,
                            skip_first=not args.prune_first)
    plan.resolve(model)

    if args.init:
        init, prune_dir = ckpt.path, out
    else:
        train(TrainConfig(model=args.model, dataset=args.dataset, epochs=args.dense_epochs, seed=args.seed,
                          precision=args.precision, compile=args.compile),
              out / "dense", data_dir=args.data_dir, download=args.download, device=args.device)
        init, prune_dir = out / "dense", out / "prune"
    return _report(run_pruning(init, plan, config, prune_dir, resources=resources_of(args)))


def _report(results: dict) -> int:
    retrain = ", ".join(f"{a:.2f}%" for a in results["retrain_accuracy"]) or "none"
    recal = (f" | + BN recalibration {results['bn_recalibrated_accuracy']:.2f}%"
             if "bn_recalibrated_accuracy" in results else "")
    print_summary(
        f"dense {results['dense_accuracy']:.2f}% | hard-pruned {results['hard_pruned_accuracy']:.2f}%{recal} | "
        f"after retraining epochs: {retrain} | compression {results['report']['compression']:.1f}x"
    )
    return 0


COMMANDS = {"prune": run}
