"""``prunus eval``: test accuracy of a checkpoint, a run directory or a compressed model file."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

from prunus.cli.args import add_data_args, positive_int
from prunus.data import load_dataset
from prunus.deploy.compressed import is_compressed, load_compressed
from prunus.errors import ConfigError
from prunus.models.loading import load_model
from prunus.train.distributed import pick_device
from prunus.train.trainer import evaluate


def add_parsers(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint (or a run directory's newest one) on its test set")
    e.add_argument("checkpoint", help="checkpoint directory or run directory")
    e.add_argument("--batch-size", type=positive_int, default=1000)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_args(e)


def run(args: argparse.Namespace) -> int:
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
    result.update(checkpoint=str(ckpt.path), dataset=dataset["name"], images=len(test_set.labels),
                  epoch=ckpt.meta.get("epoch", -1) + 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"test accuracy {result['accuracy']:.2f}%  loss {result['loss']:.4f}  "
            f"({result['images']} {dataset['name']} test images, {ckpt.path})"
        )
    return 0


COMMANDS = {"eval": run}
