"""``prunus export``: ONNX, kept only if onnxruntime reproduces PyTorch's outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunus.cli.args import example_input, positive_int
from prunus.deploy.export import export_onnx
from prunus.errors import ConfigError
from prunus.models.loading import load_model


def add_parsers(sub) -> None:
    ex = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch with onnxruntime")
    ex.add_argument("checkpoint", help="checkpoint directory or run directory")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write (only if onnxruntime matches)")
    ex.add_argument("--image-size", type=positive_int, help="input size (default: the checkpoint's dataset)")
    ex.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version")


def run(args: argparse.Namespace) -> int:
    target = Path(args.onnx)
    if target.is_dir():
        raise ConfigError(f"--onnx {target} is a directory; give a file name such as {target / 'model.onnx'}")
    model, ckpt = load_model(args.checkpoint)
    example = example_input(ckpt, args.image_size)
    atol = 1e-4
    check = export_onnx(model, example, target, atol=atol, opset=args.opset)
    sizes = ", ".join(str(b) for b in check.batch_sizes)
    print(
        f"wrote {check.path} ({check.bytes:,} bytes, opset {check.opset}); onnxruntime matches PyTorch: "
        f"max abs difference {check.max_abs_diff:.2e} <= {atol:g} on random inputs of batch sizes {sizes}"
    )
    return 0


COMMANDS = {"export": run}
