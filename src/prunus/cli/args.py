"""What the commands share: a parser whose mistakes are one line, number types, data flags, output checks."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import torch

from prunus.data import DATASETS
from prunus.errors import ConfigError
from prunus.io import ensure_parent_dir
from prunus.jobs.common import Resources
from prunus.methods.registry import all_option_fields
from prunus.train.config import OPTIMIZERS, PRECISIONS, SCHEDULES


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage dump stays in --help)."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def print_summary(line: str) -> None:
    """A command's closing line, printed once: by rank 0 under torchrun (every rank holds the same results)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(line)


def add_run_dir_args(parser: argparse.ArgumentParser, command: str) -> None:
    """--out (a new run directory) and --resume RUN_DIR (an interrupted ``prunus COMMAND`` run), then the data flags."""
    parser.add_argument("--out", help="run directory to create")
    parser.add_argument("--resume", metavar="RUN_DIR", help=f"continue an interrupted prunus {command} run where it "
                                                             "stopped (same result as an uninterrupted run)")
    add_data_args(parser)


def _given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, flag[2:].replace("-", "_"))
    return value is not None and value is not False


def check_run_flags(args: argparse.Namespace, command: str, needed: tuple[str, ...], settings: tuple[str, ...]) -> None:
    """With --resume the run's own settings are used: any of ``settings`` given is one error line; without it,
    every flag of ``needed`` (alternatives joined by " or ") must be given."""
    if args.resume:
        if given := [f for f in settings if _given(args, f)]:
            raise ConfigError(f"--resume takes its settings from the run; drop {', '.join(given)}")
        return
    missing = [need for need in needed if not any(_given(args, f) for f in need.split(" or "))]
    if missing:
        raise ConfigError(f"prunus {command} needs {', '.join(missing)} (or --resume RUN_DIR)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset directory (else $PRUNUS_DATA, ~/.cache/prunus, /usr/share/datasets)")
    p.add_argument("--download", action="store_true", help="download the dataset into the cache if it is missing")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")


def check_new_dir(out, flag: str = "--out") -> None:
    """``out`` must not exist (or be empty) and its parent must be creatable: checked before any work."""

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{flag} {out} already exists and is not empty; choose a new directory")
    ensure_parent_dir(out, f"{flag} {out}")


def example_input(ckpt, image_size: int | None):
    """One input shaped like the checkpoint's data: (1, in_channels, size, size)."""


    dataset = ckpt.meta.get("dataset") or {}
    size = image_size or dataset.get("image_size")
    if size is None and dataset.get("name") in DATASETS:
        size = DATASETS[dataset["name"]].image_size
    if size is None:
        raise ConfigError(f"checkpoint {ckpt.path} does not record its input size; pass --image-size")
    shape = (1, int(ckpt.meta["model"]["in_channels"]), int(size), int(size))
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _option_type(annotation: str):
    return int if annotation.startswith("int") else float if annotation.startswith("float") else str


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option of every registered method, made from the methods' option dataclasses."""
    group = parser.add_argument_group("method options (each names the methods it applies to)")
    for name, (f, methods) in all_option_fields().items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=_option_type(str(f.type)),
                           choices=f.metadata.get("choices"),
                           help=f"{f.metadata['help']} ({', '.join(methods)}; default {f.default})")


def given_method_options(args: argparse.Namespace) -> dict:
    """The method options given on the command line (the others keep the method's defaults)."""
    return {name: getattr(args, name) for name in all_option_fields() if getattr(args, name, None) is not None}


def config_from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """Dataclass ``cls`` from the parsed flags of the same names (``given`` wins; fields without a flag keep
    defaults)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    return cls(**{**values, **given})


def add_precision_arg(parser, default: str = "fp32") -> None:
    """--precision and --compile: how the training steps run (float32 or autocast to bfloat16; eager or compiled)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help="bf16: autocast the forward pass to bfloat16 (faster on CPUs with AVX-512 BF16 and on "
                             "GPUs; weights, optimizer and the method's state stay float32)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training steps (a BCNN on a 2-core CPU: 1.7-1.8x faster than bf16 "
                             "alone, after a one-off compilation; needs a C++ compiler; evaluation stays eager)")


def add_distill_args(parser) -> None:
    """--distill, --distill-temperature: masked retraining also learns the unpruned model's soft outputs."""
    parser.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                        help="retraining adds ALPHA * T^2 * KL(unpruned model || pruned model) at temperature T "
                             "(knowledge distillation; 0, the default: off)")
    parser.add_argument("--distill-temperature", type=float, default=4.0, metavar="T",
                        help="softmax temperature of --distill (default 4)")


def add_recipe_args(parser, defaults: Any) -> None:
    """--epochs, --batch-size, --optimizer, --lr, --weight-decay, --schedule, --seed with ``defaults``' values."""
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="training epochs")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule)
    parser.add_argument("--seed", type=int, default=defaults.seed)


def resources_of(args: argparse.Namespace) -> Resources:
    """--data-dir, --download and --device as a job's :class:`~prunus.jobs.common.Resources`."""
    return Resources(data_dir=args.data_dir, download=args.download, device=args.device)
