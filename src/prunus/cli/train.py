"""``prunus train``: a dense model and its run directory (resumable with --resume)."""

from __future__ import annotations

import argparse

from prunus.cli.args import (add_precision_arg, add_recipe_args, add_run_dir_args, check_run_flags, config_from_args,
                             positive_int)
from prunus.train.config import TrainConfig
from prunus.train.run import train


def add_parsers(sub) -> None:
    defaults = TrainConfig()
    t = sub.add_parser("train", help="train a model (dense) and write a run directory")
    t.add_argument("--model", help="model name (see `prunus models`)")
    t.add_argument("--dataset", help="dataset name (see `prunus datasets`)")
    add_recipe_args(t, defaults)
    t.add_argument("--momentum", type=float, default=defaults.momentum)
    t.add_argument("--image-size", type=positive_int, help="zero-pad images to this size (e.g. 32 for Fashion-MNIST)")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="random crop + flip")
    t.add_argument("--width", type=float, help="width multiplier (VGG, MobileNetV2)")
    t.add_argument("--stem", choices=("cifar", "imagenet"), help="ResNet-18/50 stem")
    add_precision_arg(t, defaults.precision)
    add_run_dir_args(t, "train")


def run(args: argparse.Namespace) -> int:
    check_run_flags(args, "train", needed=("--dataset", "--model", "--out"),
                    settings=("--out", "--model", "--dataset", "--compile"))
    if args.resume:
        trainer = train(TrainConfig(), args.resume, resume=True, data_dir=args.data_dir, download=args.download,
                        device=args.device)
    else:
        options = {k: v for k, v in (("width", args.width), ("stem", args.stem)) if v is not None}
        config = config_from_args(TrainConfig, args, model_options=options)
        trainer = train(config, args.out, data_dir=args.data_dir, download=args.download, device=args.device)
    if trainer.dist.is_main and trainer.history:
        last = trainer.history[-1]
        print(
            f"test accuracy {last['test_accuracy']:.2f}% after {last['epoch']} epochs "
            f"({trainer.wall_seconds:.1f}s this session); run directory {trainer.run_dir}"
        )
    return 0


COMMANDS = {"train": run}
