"""``prunus report``: a dense run and its compressed runs side by side, as an HTML page, a terminal table or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from prunus.cli.args import add_data_args, positive_int
from prunus.errors import ConfigError
from prunus.io import ensure_parent_dir, write_text_atomic
from prunus.report import ReportOptions, build_report, render_html
from prunus.report.build import common_dataset
from prunus.report.collect import read_runs
from prunus.report.plots import pyplot
from prunus.report.terminal import layer_table, summary_tables


def add_parsers(sub) -> None:
    r = sub.add_parser("report", help="compare a dense run with its compressed runs: accuracy, weights, file sizes, "
                                      "MACs, latency, sparsity, curves, residuals, audits (HTML, terminal, JSON)")
    r.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories (the dense one first, or the one the others were pruned from), and any "
                        "`prunus audit` directories of their models")
    r.add_argument("--out", metavar="FILE", help="write the self-contained HTML page here (e.g. report.html)")
    r.add_argument("--json", action="store_true", help="print every number as JSON instead of the tables")
    r.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency measurement")
    r.add_argument("--repeats", type=positive_int, default=10, help="timed runs per batch size (median reported)")
    r.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX export (its file size)")
    add_data_args(r)


def run(args: argparse.Namespace) -> int:
    common_dataset(read_runs(args.runs))  # every run checked before anything is measured or created
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise ConfigError(f"--out {out} is a directory; give a file name such as {out / 'report.html'}")
        pyplot()  # matplotlib is needed for the page: say so before measuring anything
        ensure_parent_dir(out, f"--out {out}")
    options = ReportOptions(latency=args.latency, repeats=args.repeats, onnx=args.onnx, data_dir=args.data_dir,
                            download=args.download, device=args.device)
    report = build_report(args.runs, options)
    if out is not None:
        write_text_atomic(out, render_html(report))
    if args.json:
        print(json.dumps({**report.data, "out": str(out) if out else None}))
        return 0
    console = Console()
    for table in (*summary_tables(report), layer_table(report)):
        console.print(table)
    if out is not None:
        print(f"report written to {out.resolve()} (open it in a browser; it needs no network)")
    return 0


COMMANDS = {"report": run}
