"""``prunus bcnn ...``: BCNNs on the command line (train and prune: :mod:`prunus.cli.bcnn_train`).

* ``prunus bcnn bench --model nin --checkpoint CKPT``: the engine's layer table, a bit-exactness
  check against the PyTorch forward, the popcount ceiling, and frames/s, latency and bit-MAC/s at
  batch sizes 1, 64 and 1024 next to PyTorch fp32 inference of the same model.
* ``prunus bcnn evaluate CKPT`` (also ``verify``): run the engine over the checkpoint's test set; report how many
  logit rows equal the PyTorch forward exactly, and both accuracies.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from prunus.bcnn.engine import compile_engine
from prunus.bcnn.engine.bench import benchmark
from prunus.cli.args import positive_int
from prunus.cli.bcnn_train import ALIASES, add_train_parsers, cmd_int8_stem, cmd_prune, cmd_train
from prunus.data import load_dataset
from prunus.errors import ConfigError
from prunus.models import MODELS, build_model
from prunus.models.loading import load_model


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers such as 1,64,1024, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return sizes


def add_parsers(sub) -> None:
    """Register ``prunus bcnn {train,prune,int8-stem,evaluate,bench}`` on the main parser's subparsers."""
    bc = sub.add_parser("bcnn", help="binarized complex networks: train, prune 20x, evaluate and bench on the "
                                     "bit-packed XNOR-popcount engine")
    bsub = bc.add_subparsers(dest="bcnn_command", metavar="BCNN_COMMAND", parser_class=type(bc))
    add_train_parsers(bsub)

    b = bsub.add_parser("bench", help="frames/s, latency and bit-MAC/s of the engine vs its popcount ceiling "
                                      "and vs PyTorch fp32")
    b.add_argument("--checkpoint", help="checkpoint or run directory of a binary complex model (cnin, cresnet18, ...)")
    b.add_argument("--model", help="nin, resnet18, nin_small, resnet_small or a registry name; without --checkpoint "
                                   "a randomly initialised model of that architecture is timed")
    b.add_argument("--image-size", type=positive_int, help="input size (default: the checkpoint's data, else 32)")
    b.add_argument("--in-channels", type=positive_int, default=3, help="input channels without --checkpoint")
    b.add_argument("--num-classes", type=positive_int, default=10, help="classes without --checkpoint")
    b.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 64, 1024],
                   help="comma-separated (default 1,64,1024)")
    b.add_argument("--repeats", type=positive_int, default=10, help="timed runs per batch size (median reported)")
    b.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    b.add_argument("--threads", type=positive_int, help="threads for numba and PyTorch (default: all)")
    b.add_argument("--backend", choices=("numba", "torch"), default="numba",
                   help="numba (CPU kernels) or torch (PyTorch integer ops; CUDA when --device cuda)")
    b.add_argument("--device", help="device of the torch backend (cpu or cuda)")
    b.add_argument("--torch", dest="compare_torch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time PyTorch fp32 inference of the same model, pruned channels removed (default: on)")
    b.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the popcount ceiling (about 0.2 s; default: on)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")

    v = bsub.add_parser("evaluate", aliases=["verify"],
                        help="run the engine on a checkpoint's test set: exact logits and accuracy vs PyTorch")
    v.add_argument("checkpoint", help="checkpoint or run directory of a binary complex model")
    v.add_argument("--samples", type=positive_int, help="first N test images (default: all)")
    v.add_argument("--batch-size", type=positive_int, default=500)
    v.add_argument("--backend", choices=("numba", "torch"), default="numba")
    v.add_argument("--device", help="device of the torch backend")
    v.add_argument("--data-dir", help="dataset directory")
    v.add_argument("--json", action="store_true")


def _load(checkpoint: str | None, model_name: str | None, image_size: int | None, in_channels: int, num_classes: int):
    """The model to run, its display name and input size."""
    wanted = ALIASES.get(model_name, model_name) if model_name else None
    if wanted is not None and wanted not in MODELS:
        raise ConfigError(f"--model {model_name!r} is not a model; use nin, resnet18, nin_small, resnet_small "
                          f"or a registry name (prunus models)")
    if checkpoint:
        model, ckpt = load_model(checkpoint)
        held = ckpt.meta["model"]["name"]
        if wanted is not None and not (held == wanted or held.startswith(wanted + "_")):
            raise ConfigError(f"--model {model_name} does not match --checkpoint {checkpoint}, which holds {held}")
        size = image_size or (ckpt.meta.get("dataset") or {}).get("image_size") or 32
        return model, f"{held} ({ckpt.path})", int(size)
    if wanted is None:
        raise ConfigError("prunus bcnn bench needs --checkpoint CKPT or --model NAME")
    torch.manual_seed(0)
    model = build_model(wanted, in_channels=in_channels, num_classes=num_classes)
    _calibrate_bn(model, in_channels, image_size or 32)
    return model, f"{wanted} (random weights)", int(image_size or 32)


def _calibrate_bn(model, in_channels: int, size: int) -> None:
    """Give a random model realistic BN statistics (one training-mode pass on noise), so thresholds are not trivial."""
    model.train()
    with torch.no_grad():
        model(torch.randn(8, in_channels, size, size, generator=torch.Generator().manual_seed(1)))
    model.eval()


def cmd_bench(args: argparse.Namespace) -> int:
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    model, name, size = _load(args.checkpoint, args.model, args.image_size, args.in_channels, args.num_classes)
    engine = compile_engine(model, size, backend=args.backend, device=args.device)
    result = benchmark(engine, model, name=name, batch_sizes=args.batch_sizes, repeats=args.repeats,
                       warmup=args.warmup, threads=args.threads, compare_torch=args.compare_torch,
                       ceiling=args.ceiling)
    if not result.exact:
        raise RuntimeError("the engine's logits differ from the PyTorch forward of the same model; this is a bug")
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    console = Console(width=120)
    console.print(f"model {name}, input {result.in_channels}x{size}x{size}, backend {result.backend}, "
                  f"{result.threads} threads, CPU {result.machine.get('cpu')}; first layer {engine.first_layer}",
                  soft_wrap=True)
    layers = Table(title="binary layers as packed (channels: stacked real+imag, live/dense)")
    for col in ("layer", "k", "stride", "in bits", "out ch", "out size", "packed bytes", "Mbit-MAC/img", "epilogue"):
        layers.add_column(col, justify="left" if col in ("layer", "epilogue") else "right")
    for lay in result.layers:
        layers.add_row(lay["name"], str(lay["kernel"]), str(lay["stride"]),
                       f"{lay['in_channels']}/{lay['in_channels_dense']}",
                       f"{lay['out_channels']}/{lay['out_channels_dense']}", "x".join(map(str, lay["out_size"])),
                       f"{lay['packed_weight_bytes']:,}", f"{lay['bit_macs'] / 1e6:.2f}", lay["mode"])
    console.print(layers)
    console.print(f"bit-exact: engine logits == PyTorch forward on {result.exact_inputs} random inputs: yes")
    ceiling = result.ceiling_bit_macs_per_s
    if ceiling:
        console.print(f"popcount ceiling: {ceiling / 1e9:.1f} Gbit-MAC/s ({result.threads} threads, "
                      f"XOR+popcount+add on L1-resident words)")
    console.print(f"bit-MACs per image: {result.bit_macs_per_image / 1e6:.2f} M")
    t = Table(title="throughput")
    for col in ("batch", "engine ms", "frames/s", "Gbit-MAC/s", "of ceiling", "pytorch fp32 ms", "pytorch frames/s",
                "speed-up"):
        t.add_column(col, justify="right")
    for k, row in enumerate(result.engine):
        ref: dict[str, Any] = result.torch_fp32[k] if result.torch_fp32 else {}
        t.add_row(str(row["batch_size"]), f"{row['median_ms']:.2f}", f"{row['fps']:.0f}",
                  f"{row['bit_macs_per_s'] / 1e9:.1f}",
                  f"{100 * row['ceiling_fraction']:.1f}%" if "ceiling_fraction" in row else "-",
                  f"{ref['median_ms']:.2f}" if ref else "-", f"{ref['fps']:.0f}" if ref else "-",
                  f"{ref['median_ms'] / row['median_ms']:.1f}x" if ref else "-")
    console.print(t)
    first = result.engine[0]
    console.print(f"latency (batch {first['batch_size']}): median {first['median_ms']:.3f} ms, "
                  f"min {first['min_ms']:.3f} ms, p90 {first['p90_ms']:.3f} ms over {first['repeats']} runs")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, ckpt = load_model(args.checkpoint)
    dataset = ckpt.meta.get("dataset") or {}
    if "name" not in dataset:
        raise ConfigError(f"{args.checkpoint}: the model does not record its dataset")
    test = load_dataset(dataset["name"], "test", data_dir=args.data_dir, image_size=dataset.get("image_size"))
    engine = compile_engine(model, test.image_size, backend=args.backend, device=args.device)
    n = min(args.samples or len(test), len(test))
    model.eval()
    equal = correct_engine = correct_torch = 0
    with torch.no_grad():
        for start in range(0, n, args.batch_size):
            stop = min(start + args.batch_size, n)
            x, y = test.images[start:stop], test.labels[start:stop]
            a, b = engine(x), model(x)
            equal += int((a == b).all(1).sum())
            correct_engine += int((a.argmax(1) == y).sum())
            correct_torch += int((b.argmax(1) == y).sum())
    result = {"checkpoint": str(ckpt.path), "dataset": dataset["name"], "images": n, "exact_rows": equal,
              "engine_accuracy": 100.0 * correct_engine / n, "torch_accuracy": 100.0 * correct_torch / n,
              "bit_macs_per_image": engine.bit_macs}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{n} {dataset['name']} test images: engine logits equal PyTorch's exactly on {equal}/{n}; "
              f"accuracy engine {result['engine_accuracy']:.2f}%, PyTorch {result['torch_accuracy']:.2f}%")
    if equal != n:
        raise RuntimeError(f"the engine differs from the PyTorch forward on {n - equal} of {n} images; this is a bug")
    return 0


def cmd_bcnn(args: argparse.Namespace) -> int:
    if args.bcnn_command is None:
        raise ConfigError("prunus bcnn needs a command: train, prune, int8-stem, evaluate or bench (see prunus bcnn "
                          "--help)")
    commands = {"train": cmd_train, "prune": cmd_prune, "int8-stem": cmd_int8_stem, "bench": cmd_bench,
                "evaluate": cmd_evaluate, "verify": cmd_evaluate}
    return commands[args.bcnn_command](args)


COMMANDS = {"bcnn": cmd_bcnn}
