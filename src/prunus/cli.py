"""The ``prunus`` command (also ``python -m prunus``).

Every user mistake ends in one line on stderr and exit code 2; a traceback means
a bug in prunus.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from prunus import __version__
from prunus.errors import ConfigError, PrunusError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage dump stays in --help)."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset directory (else $PRUNUS_DATA, ~/.cache/prunus, /usr/share/datasets)")
    p.add_argument("--download", action="store_true", help="download the dataset into the cache if it is missing")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    from prunus.deploy.compressed import REST
    from prunus.jobs.prune import METHOD_NAMES, RHO_SCHEDULES, PruneConfig
    from prunus.jobs.quantize import QUANT_METHODS, QuantizeConfig
    from prunus.train.config import OPTIMIZERS, SCHEDULES, TrainConfig

    defaults = TrainConfig()
    pdefaults = PruneConfig()
    parser = _Parser(prog="prunus", description="Optimization-based model compression for PyTorch.")
    parser.add_argument("--version", action="version", version=f"prunus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (dense) and write a run directory")
    t.add_argument("--model", help="model name (see `prunus models`)")
    t.add_argument("--dataset", help="dataset name (see `prunus datasets`)")
    t.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    t.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--momentum", type=float, default=defaults.momentum)
    t.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    t.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule)
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument("--image-size", type=_positive_int, help="zero-pad images to this size (e.g. 32 for Fashion-MNIST)")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="random crop + flip")
    t.add_argument("--width", type=float, help="width multiplier (VGG, MobileNetV2)")
    t.add_argument("--stem", choices=("cifar", "imagenet"), help="ResNet-18/50 stem")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    _add_data_args(t)

    e = sub.add_parser("eval", help="evaluate a checkpoint (or a run directory's newest one) on its test set")
    e.add_argument("checkpoint", help="checkpoint directory or run directory")
    e.add_argument("--batch-size", type=_positive_int, default=1000)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_data_args(e)

    pr = sub.add_parser("prune", help="prune a dense model (SLR, ADMM or magnitude), hard-prune, retrain with masks")
    pr.add_argument("--method", choices=METHOD_NAMES, default="slr")
    pr.add_argument("--init", help="dense checkpoint or run directory (default: train one first, into RUN_DIR/dense)")
    pr.add_argument("--model", help="model to train densely when there is no --init (must match --init if both)")
    pr.add_argument("--dataset", help="dataset for the dense model when there is no --init")
    pr.add_argument("--dense-epochs", type=_positive_int, default=15, help="epochs of dense training without --init")
    what = pr.add_mutually_exclusive_group()
    what.add_argument("--recipe", help="YAML recipe: tensor names -> {structure, ratio}")
    what.add_argument("--ratio", type=float, help="fraction of zeros in every prunable layer (first and last skipped)")
    what.add_argument("--compression", type=float, help="like --ratio, as a rate: 20 means 20x fewer weights (ratio 0.95)")
    pr.add_argument("--structure", default="unstructured", help="unstructured, filter, channel, column, pattern, block:4x1, nm:2:4")
    pr.add_argument("--global", dest="global_", action="store_true", help="one magnitude threshold across layers (unstructured)")
    pr.add_argument("--round-to", type=_positive_int, default=1,
                    help="filter/channel: keep a multiple of this many per layer (8 gives faster kernels)")
    pr.add_argument("--prune-first", action="store_true",
                    help="also prune the first layer (skipped by default; with filters it buys the most speed)")
    pr.add_argument("--epochs", type=int, default=pdefaults.epochs, help="epochs with the method active")
    pr.add_argument("--retrain-epochs", type=int, default=pdefaults.retrain_epochs, help="masked retraining epochs")
    pr.add_argument("--optimizer", choices=OPTIMIZERS, default=pdefaults.optimizer)
    pr.add_argument("--lr", type=float, default=pdefaults.lr)
    pr.add_argument("--retrain-lr", type=float)
    pr.add_argument("--batch-size", type=_positive_int, default=pdefaults.batch_size)
    pr.add_argument("--seed", type=int, default=pdefaults.seed)
    pr.add_argument("--update-every", type=_positive_int, help="batches between method rounds (default: once per epoch)")
    for opt, kind, text in (("--rho", float, "penalty weight (SLR, ADMM)"), ("--rho-factor", float, "rho *= this each round"),
                            ("--rho-max", float, "cap for rho"), ("--s0", float, "SLR initial step size"),
                            ("--lam", float, "reweighted: penalty weight lambda (the main knob)"),
                            ("--eps", float, "reweighted: eps, relative to the mean group energy"),
                            ("--M", float, "SLR step-size parameter M"), ("--r", float, "SLR step-size parameter r"),
                            ("--tol", float, "SLR/ADMM budget schedule: distance to the set to reach by the last round "
                                             "(default 1e-3)")):
        pr.add_argument(opt, type=kind, help=text)
    pr.add_argument("--rho-schedule", choices=RHO_SCHEDULES, default=pdefaults.rho_schedule,
                    help="SLR/ADMM: budget = rho grows so the weights reach the set by the last round; fixed = rho "
                         "stays (or grows by --rho-factor)")
    pr.add_argument("--bn-recalibrate", type=int, default=0, metavar="BATCHES",
                    help="after the hard-prune, also report the accuracy with BatchNorm statistics re-estimated on "
                         "this many training batches (no gradient step; retraining goes on without it)")
    pr.add_argument("--norm", choices=("l1", "l2"), help="magnitude: rank groups by L1 norm (Li et al. 2017) or energy (default)")
    pr.add_argument("--out", required=False, help="run directory to create")
    _add_data_args(pr)

    qdefaults = QuantizeConfig()
    q = sub.add_parser("quantize", help="quantize a (pruned) model: SLR/ADMM onto the levels, hard-quantize, "
                                        "straight-through fine-tuning, compact export with its true size")
    q.add_argument("--init", required=True, help="checkpoint or run directory (a pruned model keeps its zeros)")
    level = q.add_mutually_exclusive_group(required=True)
    level.add_argument("--bits", type=int, help="symmetric fixed point with this many bits (2..8)")
    level.add_argument("--scheme", help="binary, ternary, fixed:K or pow2:K")
    q.add_argument("--per-channel", action="store_true", help="one scale per output channel (default: per layer)")
    q.add_argument("--method", choices=QUANT_METHODS, default=qdefaults.method,
                   help="constrained training before hard quantization (none: hard-quantize directly)")
    q.add_argument("--epochs", type=int, default=qdefaults.epochs, help="epochs with the method active")
    q.add_argument("--finetune-epochs", type=int, default=qdefaults.finetune_epochs, help="straight-through fine-tuning epochs")
    q.add_argument("--lr", type=float, default=qdefaults.lr)
    q.add_argument("--finetune-lr", type=float, help="default: lr / 10")
    q.add_argument("--finetune-schedule", choices=SCHEDULES, default=qdefaults.finetune_schedule)
    q.add_argument("--batch-size", type=_positive_int, default=qdefaults.batch_size)
    q.add_argument("--seed", type=int, default=qdefaults.seed)
    q.add_argument("--update-every", type=_positive_int, help="batches between method rounds (default: once per epoch)")
    q.add_argument("--rho", type=float, help="penalty weight (SLR, ADMM)")
    q.add_argument("--rest", default=qdefaults.rest, choices=REST,
                   help="how biases and other unquantized tensors are rounded and stored (default float16)")
    q.add_argument("--out", required=True, help="run directory to create")
    _add_data_args(q)

    su = sub.add_parser("surgery", help="physically remove pruned channels from a checkpoint (outputs checked unchanged)")
    su.add_argument("checkpoint", help="checkpoint directory or run directory of a filter- or channel-pruned model")
    su.add_argument("--out", required=True, help="checkpoint directory to create for the smaller model")
    su.add_argument("--image-size", type=_positive_int, help="input size to trace with (default: the checkpoint's data)")
    su.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                    help="measure CPU latency at batch 1 and 64 before and after (default: on)")
    su.add_argument("--repeats", type=_positive_int, default=30, help="timed runs per batch size (median reported)")
    su.add_argument("--warmup", type=_positive_int, default=5, help="untimed runs before timing")
    su.add_argument("--json", action="store_true", help="print the report as JSON")

    ex = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch with onnxruntime")
    ex.add_argument("checkpoint", help="checkpoint directory or run directory")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write (only if onnxruntime matches)")
    ex.add_argument("--image-size", type=_positive_int, help="input size (default: the checkpoint's dataset)")
    ex.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset version")

    _add_privacy_parsers(sub, OPTIMIZERS, SCHEDULES)
    _add_bcnn_parsers(sub)

    sub.add_parser("models", help="list the models")
    sub.add_parser("datasets", help="list the datasets")
    return parser


def _add_bcnn_parsers(sub) -> None:
    """`prunus bcnn bench|verify` (the BCNN engine, prunus.bcnn)."""
    from prunus.bcnn.cli import add_parsers

    add_parsers(sub, _positive_int)


def cmd_bcnn(args: argparse.Namespace) -> int:
    from prunus.bcnn.cli import cmd_bcnn as run

    return run(args)


def _add_privacy_parsers(sub, optimizers, schedules) -> None:
    """`prunus defend` and `prunus audit` (membership inference, prunus.privacy)."""
    from prunus.jobs.prune import METHOD_NAMES
    from prunus.privacy.audit import ATTACKS, AuditConfig
    from prunus.privacy.defenses import DEFENSES, DefenseConfig

    d = DefenseConfig()
    de = sub.add_parser("defend", help="train a model on the members of a recorded split, with a membership-inference "
                                       "defense (none, prune, advreg, mcmia, dpsgd, relaxloss)")
    de.add_argument("--defense", choices=DEFENSES, required=True)
    de.add_argument("--init", help="a `prunus defend` checkpoint (e.g. the undefended `--defense none` target) whose "
                                   "membership split, architecture and recipe are reused; prune and mcmia start from "
                                   "its weights, the other defenses train from scratch")
    de.add_argument("--model", help=f"model name (default {d.model}; with --init: the checkpoint's)")
    de.add_argument("--dataset", help=f"dataset name (default {d.dataset}; with --init: the checkpoint's)")
    de.add_argument("--members", type=_positive_int, default=d.members,
                    help="training members drawn from the train split; as many non-members are held out")
    de.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the member/non-member/pool split")
    de.add_argument("--epochs", type=_positive_int, default=d.epochs, help="training epochs (dense/undefended recipe)")
    de.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    de.add_argument("--optimizer", choices=optimizers, default=d.optimizer)
    de.add_argument("--lr", type=float, default=d.lr)
    de.add_argument("--weight-decay", type=float, default=d.weight_decay)
    de.add_argument("--schedule", choices=schedules, default=d.schedule)
    de.add_argument("--seed", type=int, default=d.seed)
    de.add_argument("--eval-examples", type=_positive_int, help="per-epoch test accuracy on the first N test images")
    g = de.add_argument_group("min-max game (advreg, mcmia)")
    g.add_argument("--adv-lambda", type=float, default=d.adv_lambda, help="weight of the inference model's gain")
    g.add_argument("--attack-steps", type=_positive_int, default=d.attack_steps, help="k: inference-model steps per classifier step")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="epochs without the game first")
    g.add_argument("--adv-lr", type=float, default=d.adv_lr)
    g.add_argument("--adv-reference", type=_positive_int, help="pool examples used as reference non-members (default: as many as members)")
    p = de.add_argument_group("pruning (prune, mcmia)")
    p.add_argument("--method", choices=METHOD_NAMES, default=d.method)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--compression", type=float, help="20 means 20x fewer weights")
    what.add_argument("--ratio", type=float, help="fraction of zeros in every prunable layer")
    p.add_argument("--structure", default=d.structure)
    p.add_argument("--global", dest="global_", action="store_true", help="one magnitude threshold across layers")
    p.add_argument("--prune-epochs", type=int, default=d.prune_epochs, help="epochs with the pruning method active")
    p.add_argument("--retrain-epochs", type=int, default=d.retrain_epochs, help="masked fine-tuning epochs")
    p.add_argument("--retrain-lr", type=float)
    p.add_argument("--update-every", type=_positive_int, help="batches between method rounds (default: once per epoch)")
    p.add_argument("--rho", type=float, help="penalty weight (SLR, ADMM)")
    dp = de.add_argument_group("DP-SGD (dpsgd)")
    dp.add_argument("--epsilon", type=float, default=d.epsilon, help="target epsilon")
    dp.add_argument("--delta", type=float, default=d.delta, help="target delta (must be below 1/members)")
    dp.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="per-sample clipping norm")
    dp.add_argument("--accountant", choices=("prv", "rdp", "gdp"), default=d.accountant)
    rl = de.add_argument_group("RelaxLoss (relaxloss)")
    rl.add_argument("--relax-alpha", type=float, default=d.relax_alpha,
                    help="the training-loss level kept instead of zero (below it: ascent or posterior flattening)")
    de.add_argument("--out", required=True, help="run directory to create")
    _add_data_args(de)

    a = AuditConfig()
    au = sub.add_parser("audit", help="membership-inference audit of a checkpoint that records its split: "
                                      "metric, shadow-model and LiRA attacks; a table and ROC PNGs")
    au.add_argument("checkpoint", help="checkpoint directory (or a `prunus defend` run directory)")
    au.add_argument("--attack", action="append", metavar="NAME",
                    help=f"attack(s), repeatable or comma-separated: {', '.join(ATTACKS)}, metric, all (default: lira)")
    au.add_argument("--reference-models", type=_positive_int, default=a.reference_models,
                    help="LiRA reference models, trained on random halves of members + non-members")
    au.add_argument("--shadow-models", type=_positive_int, default=a.shadow_models,
                    help="shadow models on the attacker pool (metric thresholds, shadow attack)")
    au.add_argument("--per-class-thresholds", action="store_true", help="metric attacks: one threshold per class")
    au.add_argument("--shadow-per-class", action="store_true", help="shadow attack: one attack model per class")
    au.add_argument("--variance", choices=("auto", "global", "per-example"), default="auto",
                    help="LiRA Gaussians: auto = global below 64 models per side")
    au.add_argument("--epochs", type=_positive_int, help="reference/shadow training epochs (default: the target's recipe)")
    au.add_argument("--seed", type=int, default=a.seed)
    au.add_argument("--reference-bank", metavar="DIR",
                    help="share shadow/reference models between audits of one split: reuse the bank in DIR (built "
                         "with the same split, recipe, --seed, --epochs and model counts), or train them and store "
                         "them there when DIR is new; e.g. every `prunus defend --init TARGET` model of one target")
    au.add_argument("--out", required=True, help="report directory to create")
    _add_data_args(au)


def cmd_defend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunus.privacy.defenses import DefenseConfig, load_defended, run_defense
    from prunus.train.rundir import check_run_dir

    out = Path(args.out)
    check_run_dir(out, resume=False)
    model, dataset = args.model, args.dataset
    if args.init:
        _, ckpt = load_defended(args.init)
        model = model or ckpt.meta["model"]["name"]
        dataset = dataset or ckpt.meta.get("dataset", {}).get("name")
    config = DefenseConfig(
        defense=args.defense, model=model or DefenseConfig.model, dataset=dataset or DefenseConfig.dataset,
        members=args.members, split_seed=args.split_seed, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
        eval_examples=args.eval_examples, adv_lambda=args.adv_lambda, attack_steps=args.attack_steps,
        warmup_epochs=args.warmup_epochs, adv_lr=args.adv_lr, adv_reference=args.adv_reference, method=args.method,
        compression=args.compression, ratio=args.ratio, structure=args.structure, global_=args.global_,
        prune_epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs, retrain_lr=args.retrain_lr,
        update_every=args.update_every, method_options={"rho": args.rho} if args.rho is not None else {},
        epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm, accountant=args.accountant,
        relax_alpha=args.relax_alpha,
    ).validate()
    results = run_defense(config, out, init=args.init, data_dir=args.data_dir, download=args.download, device=args.device)
    line = (f"{args.defense}: test accuracy {results['test_accuracy']:.2f}% (members {results['member_accuracy']:.2f}%, "
            f"non-members {results['nonmember_accuracy']:.2f}%)")
    if "dp" in results:
        line += f"; (epsilon, delta) = ({results['dp']['epsilon']:.3f}, {results['dp']['delta']:g})"
    if "report" in results:
        line += f"; compression {results['report']['compression']:.1f}x"
    print(f"{line}; checkpoint {out / 'final'}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunus.privacy.audit import AuditConfig, run_audit

    variance = {"auto": None, "global": True, "per-example": False}[args.variance]
    config = AuditConfig(
        attacks=tuple(args.attack or ("lira",)), reference_models=args.reference_models, shadow_models=args.shadow_models,
        per_class_thresholds=args.per_class_thresholds, shadow_per_class=args.shadow_per_class,
        global_variance=variance, epochs=args.epochs, seed=args.seed,
    ).validate()
    out = Path(args.out)
    _check_new_dir(out)
    report = run_audit(args.checkpoint, config, out, reference_bank=args.reference_bank, data_dir=args.data_dir,
                       download=args.download, device=args.device)
    best = max(report["attacks"], key=lambda r: r["auc"])
    print(f"strongest attack {best['attack']}: AUC {best['auc']:.4f}, TPR@0.1%FPR {100 * best['tpr_at_0.1pct_fpr']:.2f}% "
          f"({best['members']} members, {best['nonmembers']} non-members); report {out / 'report.md'}, "
          f"ROC {out / 'roc.png'}, {out / 'roc-log.png'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from prunus.train.config import TrainConfig
    from prunus.train.run import train

    if args.resume:
        given = [flag for flag, value in (("--out", args.out), ("--model", args.model), ("--dataset", args.dataset)) if value]
        if given:
            raise ConfigError(f"--resume takes its settings from the run; drop {', '.join(given)}")
        trainer = train(TrainConfig(), args.resume, resume=True, data_dir=args.data_dir, download=args.download, device=args.device)
    else:
        missing = [flag for flag, value in (("--model", args.model), ("--dataset", args.dataset), ("--out", args.out)) if not value]
        if missing:
            raise ConfigError(f"prunus train needs {', '.join(missing)} (or --resume RUN_DIR)")
        options = {k: v for k, v in (("width", args.width), ("stem", args.stem)) if v is not None}
        config = TrainConfig(
            model=args.model,
            dataset=args.dataset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            seed=args.seed,
            image_size=args.image_size,
            augment=args.augment,
            model_options=options,
        )
        trainer = train(config, args.out, data_dir=args.data_dir, download=args.download, device=args.device)
    if trainer.dist.is_main and trainer.history:
        last = trainer.history[-1]
        print(
            f"test accuracy {last['test_accuracy']:.2f}% after {last['epoch']} epochs "
            f"({trainer.wall_seconds:.1f}s this session); run directory {trainer.run_dir}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from prunus.data import load_dataset
    from prunus.deploy.compressed import is_compressed, load_compressed
    from prunus.models.loading import load_model
    from prunus.train.distributed import pick_device
    from prunus.train.trainer import evaluate

    if is_compressed(args.checkpoint):  # a file written by `prunus quantize` (model.pcz)
        model, header = load_compressed(args.checkpoint)
        ckpt = SimpleNamespace(path=args.checkpoint, meta={"dataset": header.get("dataset") or {}})
    else:
        model, ckpt = load_model(args.checkpoint)
    dataset = ckpt.meta.get("dataset", {})
    if "name" not in dataset:
        raise ConfigError(f"{args.checkpoint}: the model does not record its dataset")
    test_set = load_dataset(
        dataset["name"], "test", data_dir=args.data_dir, download=args.download, image_size=dataset.get("image_size")
    )
    device = pick_device(args.device)
    result = evaluate(model.to(device), test_set, batch_size=args.batch_size, device=device)
    result.update(checkpoint=str(ckpt.path), dataset=dataset["name"], images=len(test_set.labels), epoch=ckpt.meta.get("epoch", -1) + 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"test accuracy {result['accuracy']:.2f}%  loss {result['loss']:.4f}  "
            f"({result['images']} {dataset['name']} test images, {ckpt.path})"
        )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunus.data import DATASETS
    from prunus.jobs.prune import PruneConfig, run_pruning
    from prunus.models import build_model
    from prunus.models.loading import load_model
    from prunus.plan.recipe import Plan, ratio_for_compression
    from prunus.train.config import TrainConfig
    from prunus.train.run import train
    from prunus.train.rundir import check_run_dir

    if not args.out:
        raise ConfigError("prunus prune needs --out RUN_DIR")
    out = Path(args.out)
    check_run_dir(out, resume=False)
    if args.recipe is None and args.ratio is None and args.compression is None:
        raise ConfigError("prunus prune needs --recipe FILE, --ratio R or --compression X")
    options = {k: getattr(args, k) for k in ("rho", "rho_factor", "rho_max", "s0", "M", "r", "tol", "lam", "eps", "norm")
               if getattr(args, k) is not None}
    config = PruneConfig(
        method=args.method, epochs=args.epochs, retrain_epochs=args.retrain_epochs, optimizer=args.optimizer,
        lr=args.lr, retrain_lr=args.retrain_lr, batch_size=args.batch_size, seed=args.seed,
        update_every=args.update_every, rho_schedule=args.rho_schedule, bn_recalibrate=args.bn_recalibrate,
        options=options,
    ).validate()

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
        plan = Plan.from_yaml(args.recipe)
    else:
        ratio = args.ratio if args.ratio is not None else ratio_for_compression(args.compression)
        plan = Plan.uniform(model, ratio, args.structure, global_unstructured=args.global_, round_to=args.round_to,
                            skip_first=not args.prune_first)
    plan.resolve(model)

    if args.init:
        init, prune_dir = ckpt.path, out
    else:
        train(TrainConfig(model=args.model, dataset=args.dataset, epochs=args.dense_epochs, seed=args.seed),
              out / "dense", data_dir=args.data_dir, download=args.download, device=args.device)
        init, prune_dir = out / "dense", out / "prune"
    results = run_pruning(init, plan, config, prune_dir, data_dir=args.data_dir, download=args.download, device=args.device)
    retrain = ", ".join(f"{a:.2f}%" for a in results["retrain_accuracy"]) or "none"
    recal = (f" | + BN recalibration {results['bn_recalibrated_accuracy']:.2f}%"
             if "bn_recalibrated_accuracy" in results else "")
    print(
        f"dense {results['dense_accuracy']:.2f}% | hard-pruned {results['hard_pruned_accuracy']:.2f}%{recal} | "
        f"after retraining epochs: {retrain} | compression {results['report']['compression']:.1f}x"
    )
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from prunus.jobs.quantize import QuantizeConfig, run_quantization

    scheme = args.scheme if args.scheme is not None else str(args.bits)
    config = QuantizeConfig(
        scheme=scheme, per_channel=args.per_channel, method=args.method, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr, finetune_lr=args.finetune_lr,
        finetune_schedule=args.finetune_schedule,
        seed=args.seed, update_every=args.update_every, rest=args.rest,
        options={"rho": args.rho} if args.rho is not None else {},
    ).validate()
    results = run_quantization(args.init, config, args.out, data_dir=args.data_dir, download=args.download, device=args.device)
    size = results["size"]
    print(
        f"input {results['input_accuracy']:.2f}% | hard-quantized {results['hard_quantized_accuracy']:.2f}% | "
        f"final {results['final_accuracy']:.2f}% | {size['file_bytes']:,} bytes, {size['ratio']:.1f}x smaller than dense fp32"
    )
    return 0


def _example_input(ckpt, image_size: int | None):
    """One input shaped like the checkpoint's data: (1, in_channels, size, size)."""
    import torch

    from prunus.data import DATASETS

    dataset = ckpt.meta.get("dataset") or {}
    size = image_size or dataset.get("image_size")
    if size is None and dataset.get("name") in DATASETS:
        size = DATASETS[dataset["name"]].image_size
    if size is None:
        raise ConfigError(f"checkpoint {ckpt.path} does not record its input size; pass --image-size")
    shape = (1, int(ckpt.meta["model"]["in_channels"]), int(size), int(size))
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _check_new_dir(out, flag: str = "--out") -> None:
    """``out`` must not exist (or be empty) and its parent must be creatable: checked before any work."""
    from prunus.io import ensure_parent_dir

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{flag} {out} already exists and is not empty; choose a new directory")
    ensure_parent_dir(out, f"{flag} {out}")


def cmd_surgery(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from prunus.deploy.footprint import comparison_table, measure_footprint
    from prunus.deploy.surgery import remove_pruned_channels
    from prunus.io import save_checkpoint
    from prunus.models.loading import load_model
    from prunus.models.shapes import layer_shapes

    out = Path(args.out)
    model, ckpt = load_model(args.checkpoint)
    _check_new_dir(out)
    example = _example_input(ckpt, args.image_size)
    report = remove_pruned_channels(model, example)
    batches = (1, 64) if args.latency else ()
    before = measure_footprint(model, example, latency_batches=batches, repeats=args.repeats, warmup=args.warmup)
    after = measure_footprint(report.model, example, latency_batches=batches, repeats=args.repeats,
                              warmup=args.warmup)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "version", "states", "surgery")}
    meta["model"] = {**ckpt.meta["model"], "layers": layer_shapes(report.model)}
    summary = {"source": str(ckpt.path), **report.to_dict(), "before": before.to_dict(), "after": after.to_dict()}
    meta["surgery"] = summary
    try:
        save_checkpoint(out, report.model.state_dict(), {}, meta)
    except OSError as e:
        raise ConfigError(f"--out {out} cannot be written ({e.strerror})") from None
    if args.json:
        print(json.dumps({**summary, "out": str(out)}))
        return 0
    console = Console()
    console.print(report.table())
    console.print(comparison_table(before, after, title=f"{ckpt.path} -> {out}"))
    if report.blocked:
        console.print(
            f"note: {report.blocked} all-zero filters were kept because they are not zero where they are read "
            "(a BatchNorm after them outputs a nonzero constant); prune with prunus.plan.coupling.project_coupled, "
            "which zeroes the BatchNorm too, to make them removable", soft_wrap=True,
        )
    print(
        f"removed {report.removed} channels: parameters {report.params_before:,} -> {report.params_after:,}, "
        f"MACs {report.macs_before:,} -> {report.macs_after:,}; outputs equal (max abs difference "
        f"{report.max_abs_diff:.2e} on {report.checked_inputs} random inputs); wrote {out}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunus.deploy.export import export_onnx
    from prunus.models.loading import load_model

    target = Path(args.onnx)
    if target.is_dir():
        raise ConfigError(f"--onnx {target} is a directory; give a file name such as {target / 'model.onnx'}")
    model, ckpt = load_model(args.checkpoint)
    example = _example_input(ckpt, args.image_size)
    atol = 1e-4
    check = export_onnx(model, example, target, atol=atol, opset=args.opset)
    sizes = ", ".join(str(b) for b in check.batch_sizes)
    print(
        f"wrote {check.path} ({check.bytes:,} bytes, opset {check.opset}); onnxruntime matches PyTorch: "
        f"max abs difference {check.max_abs_diff:.2e} <= {atol:g} on random inputs of batch sizes {sizes}"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from prunus.models import MODELS

    for name, entry in MODELS.items():
        print(f"{name:14s} {getattr(entry, 'description', '')}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from prunus.data import DATASETS

    for name, spec in DATASETS.items():
        print(f"{name:14s} {spec.in_channels}x{spec.image_size}x{spec.image_size}, {spec.num_classes} classes")
    return 0


COMMANDS = {
    "train": cmd_train, "eval": cmd_eval, "prune": cmd_prune, "quantize": cmd_quantize, "surgery": cmd_surgery,
    "export": cmd_export, "models": cmd_models, "datasets": cmd_datasets, "defend": cmd_defend, "audit": cmd_audit,
    "bcnn": cmd_bcnn,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USER_ERROR
        return COMMANDS[args.command](args)
    except PrunusError as e:
        print(f"prunus: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("prunus: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
