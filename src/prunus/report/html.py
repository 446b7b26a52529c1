"""The report as one self-contained HTML page: inline CSS, figures as PNG ``data:`` URIs, nothing fetched.

A Content-Security-Policy forbids every network load.  A few lines of inline script mark each section
``data-rendered="1"`` once every figure in it has decoded (``naturalWidth > 0``), so a headless browser's
dumped DOM shows that the page really rendered.
"""

from __future__ import annotations

import html
from typing import Any

from prunus.report import plots
from prunus.report.build import SECTIONS, Report

TITLES = {"summary": "Summary", "accuracy": "Accuracy", "layers": "Weights and MACs per layer",
          "size": "Size on disk", "latency": "Latency (deployed)", "sparsity": "Sparsity per layer",
          "curves": "Training curves", "residuals": "Method residuals", "privacy": "Membership-inference audit"}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.5em; color: #1d2330; background: #fbfbfd; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #dde2ea; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
section { background: #fff; border: 1px solid #e3e7ee; border-radius: 6px; padding: 0.4em 1.2em 1em;
          margin: 1.2em 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #dde2ea; padding: 0.25em 0.6em; text-align: right; }
th { background: #f1f4f8; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
.row { display: flex; flex-wrap: wrap; gap: 1em; } .row img { max-width: 49%; }
.note { color: #5a6475; font-size: 0.9em; } .dense { font-weight: 600; }
.better { color: #17703a; } .worse { color: #a2261b; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  document.querySelectorAll("section").forEach(function (s) {
    var imgs = Array.prototype.slice.call(s.querySelectorAll("img"));
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    s.setAttribute("data-decoded", String(ok));
    s.setAttribute("data-rendered", ok === imgs.length ? "1" : "0");
  });
  document.body.setAttribute("data-ready", "1");
});
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def esc(x: Any) -> str:
    return html.escape(str(x))


def table(headers: list[str], rows: list[list[Any]], dense_first: bool = False) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    dense = ' class="dense"'
    body = "".join(f"<tr{dense if dense_first and i == 0 else ''}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def num(x: float | None, fmt: str = ",") -> str:
    return "n/a" if x is None else format(x, fmt)


def delta(x: float, fmt: str = "+.2f", good_if_positive: bool = True) -> str:
    cls = "better" if (x > 0) == good_if_positive and x != 0 else "worse" if x != 0 else ""
    return f'<span class="{cls}">{format(x, fmt)}</span>'


def _summary(report: Report) -> str:
    batches = [str(b) for b in report.data["latency"]["batch_sizes"]]
    rows = []
    for r in report.runs:
        v = r["vs_dense"]
        lat = r["latency"]
        speed = v["speedup"] or {}
        tpr = max((a["tpr_at_0.1pct_fpr"] for a in r["audit"]["attacks"]), default=None) if r["audit"] else None
        rows.append([esc(r["name"]), esc(f"{r['kind']}: {r['detail']}"), f"{r['accuracy']['test']:.2f}%",
                     delta(v["accuracy_delta"]), f"{r['totals']['nonzeros']:,} ({v['compression']:.1f}x)",
                     f"{v['live_compression']:.1f}x",
                     (f"{v['smallest_file_bytes']:,} {esc(plots.FILE_LABELS[v['smallest_file']])} "
                      f"({v['size_ratio']:.1f}x)"),
                     *(f"{lat[b]['median_ms']:.3f} ms ({speed[b]:.2f}x)" if lat else "n/a" for b in batches),
                     "n/a" if tpr is None else f"{100 * tpr:.2f}%"])
    d = report.data
    env = d["environment"]
    return (table(["run", "kind", "test acc.", "vs dense (pt)", "nonzero weights (compression)", "live compression",
                   "smallest file (vs dense safetensors)", *(f"latency b{b} (speed-up)" for b in batches),
                   "TPR@0.1%FPR"], rows, dense_first=True)
            + note(f"Dense run: {d['dense']} (compressed runs are compared with it). Dataset {d['dataset']['name']}, "
                   f"{d['dataset']['test_examples']:,} test images. prunus {d['prunus']}, torch {env['torch']}, "
                   f"{env['cpu']}, {env['cpu_count']} cores."))


def _accuracy(report: Report) -> str:
    runs = report.runs
    recorded = sorted({k for r in runs for k in r["recorded_accuracy"]})
    rows = [[esc(r["name"]), f"{r['accuracy']['test']:.2f}%", f"{r['accuracy']['loss']:.4f}",
             *(num(r["recorded_accuracy"].get(k), ".2f") for k in recorded)] for r in runs]
    classes = range(len(runs[0]["accuracy"]["per_class"]))
    per_class = [[esc(r["name"]), *(num(v, ".1f") for v in r["accuracy"]["per_class"])] for r in runs]
    return (img(plots.accuracy_figure(runs), "test accuracy per run and per class")
            + table(["run", "test accuracy (measured now)", "test loss", *(f"{k} (recorded)" for k in recorded)], rows,
                    dense_first=True)
            + "<h3>Per class (%)</h3>" + table(["run", *(str(c) for c in classes)], per_class, dense_first=True))


def _layers(report: Report) -> str:
    runs = report.runs
    names = list(dict.fromkeys(layer["name"] for r in runs for layer in r["layers"]))
    by_run = [{layer["name"]: layer for layer in r["layers"]} for r in runs]
    rows = [[esc(n), *(f"{x[n]['parameters']:,} / {x[n]['nonzeros']:,} / {x[n]['live']:,}" if n in x else "-"
                       for x in by_run)] for n in names]
    rows.append(["total", *(f"{r['totals']['weights']:,} / {r['totals']['nonzeros']:,} / {r['totals']['live']:,}"
                            for r in runs)])
    macs = [[esc(r["name"]), f"{r['macs']['dense']:,}", f"{r['macs']['nonzero']:,}", f"{r['macs']['structural']:,}",
             f"{r['deployed']['macs']:,}", f"{r['totals']['parameters']:,}", f"{r['deployed']['parameters']:,}",
             str(r["deployed"]["channels_removed"])] for r in runs]
    notes = [f"{r['name']}: {r['deployed']['note']}" for r in runs if r["deployed"]["note"]]
    return (table(["layer", *(f"{r['name']}: all / nonzero / live" for r in runs)], rows)
            + note("live: nonzero weights reading an input that can be nonzero (a weight reading a channel every "
                   "path leaves at zero computes nothing).")
            + "<h3>MACs per input and the deployed model</h3>"
            + table(["run", "MACs dense", "MACs nonzero", "MACs zero channels removed", "MACs deployed",
                     "parameters", "parameters deployed", "channels removed"], macs, dense_first=True)
            + "".join(note(n) for n in notes))


def _size(report: Report) -> str:
    rows = [[esc(r["name"]), *(num(r["files"][k]) for k in plots.FILE_LABELS),
             f"{r['vs_dense']['size_ratio']:.1f}x"] for r in report.runs]
    notes = [f"{r['name']}: {r['files_note']}" for r in report.runs if r["files_note"]]
    return (img(plots.size_figure(report.runs), "file bytes and weights per run")
            + table(["run", *(f"{v} (bytes)" for v in plots.FILE_LABELS.values()), "dense safetensors / smallest"],
                    rows, dense_first=True)
            + note("safetensors: the checkpoint's weights file (float32, zeros included); after surgery: the same "
                   "with pruned channels removed; .pcz: the compressed file a quantize run wrote; ONNX: the "
                   "deployed model exported and checked with onnxruntime.") + "".join(note(n) for n in notes))


def _latency(report: Report) -> str:
    info = report.data["latency"]
    if not info["measured"]:
        return note("Latency not measured (--no-latency).")
    batches = [str(b) for b in info["batch_sizes"]]
    rows = [[esc(r["name"]), *(f"{r['latency'][b]['median_ms']:.3f} (p90 {r['latency'][b]['p90_ms']:.3f})"
                               for b in batches),
             *(f"{r['vs_dense']['speedup'][b]:.2f}x" for b in batches)] for r in report.runs]
    return (img(plots.latency_figure(report.runs, info["batch_sizes"]), "median latency per run")
            + table(["run", *(f"batch {b}: median ms" for b in batches), *(f"speed-up b{b}" for b in batches)], rows,
                    dense_first=True)
            + note(f"Deployed models (pruned channels removed, BatchNorm folded, channels-last), timed in turns: "
                   f"median of {info['repeats']} runs after 2 warm-ups, {info['device']}, {info['threads']} "
                   "thread(s). Timings on a shared machine are noisy; compare the ratios."))


def _sparsity(report: Report) -> str:
    return "".join(img(plots.sparsity_figure(name, grids), f"sparsity of {name}")
                   for name, grids in report.grids.items())


def _curves(report: Report) -> str:
    with_curves = [r for r in report.runs if r["curves"]]
    missing = [r["name"] for r in report.runs if not r["curves"]]
    return ("".join(img(plots.curves_figure(r), f"training curves of {r['name']}") for r in with_curves)
            + (note(f"No metrics.jsonl in: {', '.join(missing)}.") if missing else ""))


def _residuals(report: Report) -> str:
    runs = [r for r in report.runs if r["method_history"]]
    if not runs:
        return note("No run records a method's rounds (prune, quantize or defend with a pruning method do).")
    rows = [[esc(r["name"]), str(len(r["method_history"])),
             *(num(r["method_history"][i].get(k), ".3g") for k in ("residual", "distance") for i in (0, -1))]
            for r in runs]
    return (img(plots.residual_figure(runs), "residual and distance per round")
            + table(["run", "rounds", "residual first", "residual last", "distance first", "distance last"], rows))


def _privacy(report: Report) -> str:
    runs = [r for r in report.runs if r["audit"]]
    if not runs:
        return note("No audit given: run `prunus audit CHECKPOINT --out DIR` and add DIR to the report's runs.")
    parts = []
    for r in runs:
        a = r["audit"]
        rows = [[esc(x["attack"]), f"{x['auc']:.4f}", f"{100 * x['tpr_at_1pct_fpr']:.2f}%",
                 f"{100 * x['tpr_at_0.1pct_fpr']:.2f}%" + (" (0 FP)" if x["fpr_resolution"] > 0.001 else ""),
                 f"{x['members']}/{x['nonmembers']}"] for x in a["attacks"]]
        acc = a["accuracy"] or {}
        parts_of = {"test": "test", "members": "members", "nonmembers": "non-members"}
        accuracy = ", ".join(f"{label} {acc[k]:.2f}%" for k, label in parts_of.items() if k in acc)
        parts.append(f"<h3>{esc(r['name'])} (audit {esc(a['path'])})</h3>"
                     + note(f"Accuracy of the audited model: {accuracy}.")
                     + table(["attack", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "members/non-members"], rows)
                     + '<div class="row">' + "".join(img(uri, f"ROC of {r['name']}") for uri in plots.roc_uris(r))
                     + "</div>")
    return "".join(parts) + note("(0 FP): fewer than 1000 non-members, so 0.1% FPR means no false positive at all.")


RENDER = {"summary": _summary, "accuracy": _accuracy, "layers": _layers, "size": _size, "latency": _latency,
          "sparsity": _sparsity, "curves": _curves, "residuals": _residuals, "privacy": _privacy}


def render_html(report: Report) -> str:
    """The whole page."""
    sections = []
    for key in SECTIONS:
        body = RENDER[key](report)
        sections.append(f'<section id="{key}" data-images="{body.count("<img ")}" data-rendered="0">'
                        f"<h2>{TITLES[key]}</h2>{body}</section>")
    names = ", ".join(r["name"] for r in report.runs)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>prunus report: {esc(names)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>"
            f"<body><h1>prunus report</h1><p class=\"note\">{esc(names)}</p>{''.join(sections)}</body></html>\n")
