"""``prunus train``: a dense model and its run directory (resumable with --resume)."""

from __future__ import annotations

import argparse

from prunus.cli.args import add_data_args, add_recipe_args, config_from_args, positive_int
from prunus.errors import ConfigError
from prunus.train.config import PRECISIONS, TrainConfig
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
    t.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="bf16: autocast the forward pass to bfloat16 (faster on CPUs with AVX-512 BF16)")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    add_data_args(t)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if given := _flags_given(args, "out", "model", "dataset"):
            raise ConfigError(f"--resume takes its settings from the run; drop {', '.join(given)}")
        trainer = train(TrainConfig(), args.resume, resume=True, data_dir=args.data_dir, download=args.download, device=args.device)
    else:
        if missing := sorted(set(_flags_given(args, "model", "dataset", "out", given=False))):
            raise ConfigError(f"prunus train needs {', '.join(missing)} (or --resume RUN_DIR)")
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


def _flags_given(args: argparse.Namespace, *names: str, given: bool = True) -> list[str]:
    """The flags among ``names`` that were given (or, with ``given=False``, that were not)."""
    return [f"--{n}" for n in names if bool(getattr(args, n)) == given]
