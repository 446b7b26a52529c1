"""``prunus models`` and ``prunus datasets``: what the registries hold."""

from __future__ import annotations

import argparse

from prunus.data import DATASETS
from prunus.models import MODELS


def add_parsers(sub) -> None:
    sub.add_parser("models", help="list the models")
    sub.add_parser("datasets", help="list the datasets")


def cmd_models(args: argparse.Namespace) -> int:
    for name, entry in MODELS.items():
        print(f"{name:14s} {getattr(entry, 'description', '')}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    for name, spec in DATASETS.items():
        print(f"{name:14s} {spec.in_channels}x{spec.image_size}x{spec.image_size}, {spec.num_classes} classes")
    return 0


COMMANDS = {"models": cmd_models, "datasets": cmd_datasets}
