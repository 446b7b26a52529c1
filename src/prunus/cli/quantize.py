"""``prunus quantize``: a (pruned) model onto quantization levels, fine-tuned, exported with its true size."""

from __future__ import annotations

import argparse

from prunus.cli.args import (
    add_precision_arg,
    add_run_dir_args,
    check_run_flags,
    config_from_args,
    positive_int,
    print_summary,
    resources_of,
)
from prunus.deploy.compressed import REST
from prunus.jobs.quantize import QUANT_METHODS, QuantizeConfig, run_quantization
from prunus.train.config import SCHEDULES


def add_parsers(sub) -> None:
    qdefaults = QuantizeConfig()
    q = sub.add_parser("quantize", help="quantize a (pruned) model: SLR/ADMM onto the levels, hard-quantize, "
                                        "straight-through fine-tuning, compact export with its true size")
    q.add_argument("--init", help="checkpoint or run directory (a pruned model keeps its zeros)")
    level = q.add_mutually_exclusive_group()
    level.add_argument("--bits", type=int, help="symmetric fixed point with this many bits (2..8)")
    level.add_argument("--scheme", help="binary, ternary, fixed:K or pow2:K")
    q.add_argument("--per-channel", action="store_true", help="one scale per output channel (default: per layer)")
    q.add_argument("--method", choices=QUANT_METHODS, default=qdefaults.method,
                   help="constrained training before hard quantization (none: hard-quantize directly)")
    q.add_argument("--epochs", type=int, default=qdefaults.epochs, help="epochs with the method active")
    q.add_argument("--finetune-epochs", type=int, default=qdefaults.finetune_epochs,
                   help="straight-through fine-tuning epochs")
    q.add_argument("--lr", type=float, default=qdefaults.lr)
    q.add_argument("--finetune-lr", type=float, help="default: lr / 10")
    q.add_argument("--finetune-schedule", choices=SCHEDULES, default=qdefaults.finetune_schedule)
    q.add_argument("--batch-size", type=positive_int, default=qdefaults.batch_size)
    q.add_argument("--seed", type=int, default=qdefaults.seed)
    q.add_argument("--update-every", type=positive_int, help="batches between method rounds (default: once per epoch)")
    q.add_argument("--rho", type=float, help="penalty weight (SLR, ADMM)")
    q.add_argument("--rest", default=qdefaults.rest, choices=REST,
                   help="how biases and other unquantized tensors are rounded and stored (default float16)")
    add_precision_arg(q, qdefaults.precision)
    add_run_dir_args(q, "quantize")


def run(args: argparse.Namespace) -> int:
    check_run_flags(args, "quantize", needed=("--init", "--out", "--bits or --scheme"),
                    settings=("--init", "--bits", "--scheme", "--out", "--compile"))
    if args.resume:
        results = run_quantization(None, None, args.resume, resume=True, resources=resources_of(args))
    else:
        scheme = args.scheme if args.scheme is not None else str(args.bits)
        config = config_from_args(QuantizeConfig, args, scheme=scheme,
                                  options={"rho": args.rho} if args.rho is not None else {}).validate()
        results = run_quantization(args.init, config, args.out, resources=resources_of(args))
    if "size" in results:  # rank 0 exported the file (under torchrun the other ranks only trained)
        size = results["size"]
        print_summary(
            f"input {results['input_accuracy']:.2f}% | hard-quantized {results['hard_quantized_accuracy']:.2f}% | "
            f"final {results['final_accuracy']:.2f}% | {size['file_bytes']:,} bytes, {size['ratio']:.1f}x smaller "
            "than dense fp32"
        )
    return 0


COMMANDS = {"quantize": run}
