"""``prunus defend``: train a model on a recorded membership split with a membership-inference defense."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunus.cli import args as flags
from prunus.methods.registry import METHODS
from prunus.privacy.defenses import DEFENSES, DefenseConfig, load_defended, run_defense
from prunus.privacy.defenses.config import PRUNE_RECIPES
from prunus.train.config import PRECISIONS, SCHEDULES
from prunus.train.rundir import check_run_dir


def add_parsers(sub) -> None:
    d = DefenseConfig()
    de = sub.add_parser("defend", help="train a model on the members of a recorded split, with a membership-inference "
                                       "defense (none, prune, advreg, mcmia, dpsgd, relaxloss)")
    de.add_argument("--defense", choices=DEFENSES, help="required unless --resume")
    de.add_argument("--init", help="a `prunus defend` checkpoint (e.g. the undefended `--defense none` target) whose "
                                   "membership split, architecture and recipe are reused; prune and mcmia start from "
                                   "its weights, the other defenses train from scratch")
    de.add_argument("--model", help=f"model name (default {d.model}; with --init: the checkpoint's)")
    de.add_argument("--dataset", help=f"dataset name (default {d.dataset}; with --init: the checkpoint's)")
    de.add_argument("--members", type=flags.positive_int, default=d.members,
                    help="training members drawn from the train split; as many non-members are held out")
    de.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the member/non-member/pool split")
    flags.add_recipe_args(de, d)  # the dense/undefended recipe, also what audits train reference models with
    de.add_argument("--eval-examples", type=flags.positive_int,
                    help="per-epoch test accuracy on the first N test images")
    de.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                    help="bf16: autocast every phase's forward pass to bfloat16 (faster on CPUs with AVX-512 BF16; "
                         "not with --defense dpsgd)")
    de.add_argument("--channels-last", action="store_true", help="NHWC tensors (faster CPU convolutions)")
    g = de.add_argument_group("min-max game (advreg, mcmia)")
    g.add_argument("--adv-lambda", type=float, default=d.adv_lambda, help="weight of the inference model's gain")
    g.add_argument("--attack-steps", type=flags.positive_int, default=d.attack_steps,
                   help="k: inference-model steps per classifier step")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="epochs without the game first")
    g.add_argument("--adv-lr", type=float, default=d.adv_lr)
    g.add_argument("--adv-reference", type=flags.positive_int,
                   help="pool examples used as reference non-members (default: as many as members)")
    p = de.add_argument_group("pruning (prune, mcmia)")
    p.add_argument("--method", choices=list(METHODS), default=d.method)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--compression", type=float, help="20 means 20x fewer weights")
    what.add_argument("--ratio", type=float, help="fraction of zeros in every prunable layer")
    p.add_argument("--structure", default=d.structure)
    p.add_argument("--global", dest="global_", action="store_true", help="one magnitude threshold across layers")
    p.add_argument("--prune-epochs", type=int, default=d.prune_epochs, help="epochs with the pruning method active")
    p.add_argument("--retrain-epochs", type=int, default=d.retrain_epochs, help="masked fine-tuning epochs")
    p.add_argument("--retrain-lr", type=float, help="default: --lr")
    p.add_argument("--retrain-schedule", choices=SCHEDULES, default=d.retrain_schedule,
                   help="the fine-tuning's lr schedule (cosine-step: decayed every step to 0)")
    p.add_argument("--prune-recipe", choices=PRUNE_RECIPES, default=d.prune_recipe,
                   help="SLR/ADMM: paper = fixed rho, a round per epoch, the penalty on every entry (Wang et al.); "
                        "budget = prunus prune's (rho grown so the weights reach the set by the last round)")
    p.add_argument("--update-every", type=flags.positive_int,
                   help="batches between method rounds (default: once per epoch with --prune-recipe paper, the "
                        "method's spacing with budget)")
    flags.add_method_options(de)
    dp = de.add_argument_group("DP-SGD (dpsgd)")
    dp.add_argument("--epsilon", type=float, default=d.epsilon, help="target epsilon")
    dp.add_argument("--delta", type=float, default=d.delta, help="target delta (must be below 1/members)")
    dp.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="per-sample clipping norm")
    dp.add_argument("--accountant", choices=("prv", "rdp", "gdp"), default=d.accountant)
    rl = de.add_argument_group("RelaxLoss (relaxloss)")
    rl.add_argument("--relax-alpha", type=float, default=d.relax_alpha,
                    help="the training-loss level kept instead of zero (below it: ascent or posterior flattening)")
    flags.add_run_dir_args(de, "defend")


def run(args: argparse.Namespace) -> int:
    flags.check_run_flags(args, "defend", needed=("--defense", "--out"), settings=("--defense", "--init", "--out"))
    if args.resume:
        results = run_defense(None, args.resume, resume=True, data_dir=args.data_dir, download=args.download,
                              device=args.device)
        return _report(args.resume, results)
    out = Path(args.out)
    check_run_dir(out, resume=False)
    model, dataset = args.model, args.dataset
    if args.init:
        _, ckpt = load_defended(args.init)
        model = model or ckpt.meta["model"]["name"]
        dataset = dataset or ckpt.meta.get("dataset", {}).get("name")
    config = flags.config_from_args(DefenseConfig, args, model=model or DefenseConfig.model,
                                    dataset=dataset or DefenseConfig.dataset,
                                    method_options=flags.given_method_options(args)).validate()
    results = run_defense(config, out, init=args.init, data_dir=args.data_dir, download=args.download,
                          device=args.device)
    return _report(out, results)


def _report(out: str | Path, results: dict) -> int:
    defense = results["config"]["defense"]
    line = (f"{defense}: test accuracy {results['test_accuracy']:.2f}% (members {results['member_accuracy']:.2f}%, "
            f"non-members {results['nonmember_accuracy']:.2f}%)")
    if "dp" in results:
        line += f"; (epsilon, delta) = ({results['dp']['epsilon']:.3f}, {results['dp']['delta']:g})"
    if "report" in results:
        line += f"; compression {results['report']['compression']:.1f}x"
    flags.print_summary(f"{line}; checkpoint {Path(out) / 'final'}")
    return 0


COMMANDS = {"defend": run}
