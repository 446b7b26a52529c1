"""The report in the terminal: rich tables of the runs against the dense one, and of their layers."""

from __future__ import annotations

from rich.table import Table

from prunus.report.build import Report
from prunus.report.plots import FILE_LABELS


def summary_tables(report: Report) -> list[Table]:
    """Two tables, narrow enough for a terminal: accuracy and size; then cost to run and leakage."""
    title = f"{report.data['dataset']['name']}: compared with the dense run {report.data['dense']}"
    size = Table(title=f"accuracy and size ({title})")
    for col in ("run", "kind", "test acc.", "vs dense", "nonzero weights", "live", "smallest file"):
        size.add_column(col, justify="left" if col in ("run", "kind") else "right")
    batches = [str(b) for b in report.data["latency"]["batch_sizes"]]
    speed = Table(title="cost to run and leakage")
    for col in ("run", "MACs deployed", *(f"latency b{b}" for b in batches), "TPR@0.1%FPR"):
        speed.add_column(col, justify="left" if col == "run" else "right")
    for r in report.runs:
        v = r["vs_dense"]
        size.add_row(r["name"], f"{r['kind']}: {r['detail']}", f"{r['accuracy']['test']:.2f}%",
                     f"{v['accuracy_delta']:+.2f} pt", f"{r['totals']['nonzeros']:,} ({v['compression']:.1f}x)",
                     f"{v['live_compression']:.1f}x",
                     f"{v['smallest_file_bytes']:,} B {FILE_LABELS[v['smallest_file']]} ({v['size_ratio']:.1f}x)")
        lat = [f"{r['latency'][b]['median_ms']:.3f} ms ({v['speedup'][b]:.2f}x)" if r["latency"] else "-"
               for b in batches]
        tpr = max((a["tpr_at_0.1pct_fpr"] for a in r["audit"]["attacks"]), default=None) if r["audit"] else None
        speed.add_row(r["name"], f"{r['deployed']['macs']:,}", *lat, "-" if tpr is None else f"{100 * tpr:.2f}%")
    size.caption = ("compression: the dense run's nonzero (live) conv+linear weights / the run's; "
                    "file: vs dense safetensors")
    speed.caption = "deployed: pruned channels removed; latency: median (speed-up vs dense); strongest audited attack"
    return [size, speed]


def layer_table(report: Report) -> Table:
    """Nonzero / all weights of each Conv/Linear layer, one column per run."""
    names = list(dict.fromkeys(layer["name"] for r in report.runs for layer in r["layers"]))
    t = Table(title="nonzero / all weights per layer")
    t.add_column("layer")
    for r in report.runs:
        t.add_column(r["name"], justify="right")
    by_run = [{layer["name"]: layer for layer in r["layers"]} for r in report.runs]
    for n in names:
        t.add_row(n, *(f"{x[n]['nonzeros']:,}/{x[n]['parameters']:,}" if n in x else "-" for x in by_run))
    return t
