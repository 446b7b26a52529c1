"""``prunus surgery``: physically remove pruned channels (outputs checked equal), with the before/after footprint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from prunus.cli.args import check_new_dir, example_input, positive_int
from prunus.deploy.footprint import comparison_table, measure_footprint
from prunus.deploy.surgery import remove_pruned_channels
from prunus.errors import ConfigError
from prunus.io import save_checkpoint
from prunus.models.loading import load_model
from prunus.models.shapes import layer_shapes


def add_parsers(sub) -> None:
    su = sub.add_parser("surgery",
                        help="physically remove pruned channels from a checkpoint (outputs checked unchanged)")
    su.add_argument("checkpoint", help="checkpoint directory or run directory of a filter- or channel-pruned model")
    su.add_argument("--out", required=True, help="checkpoint directory to create for the smaller model")
    su.add_argument("--image-size", type=positive_int, help="input size to trace with (default: the checkpoint's data)")
    su.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                    help="measure CPU latency at batch 1 and 64 before and after (default: on)")
    su.add_argument("--repeats", type=positive_int, default=30, help="timed runs per batch size (median reported)")
    su.add_argument("--warmup", type=positive_int, default=5, help="untimed runs before timing")
    su.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model, ckpt = load_model(args.checkpoint)
    check_new_dir(out)
    example = example_input(ckpt, args.image_size)
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


COMMANDS = {"surgery": run}
