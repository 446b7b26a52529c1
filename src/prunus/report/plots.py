"""The report's figures, each returned as a PNG ``data:`` URI so the page needs no other file.

matplotlib is optional (the ``report`` extra): it is imported here, inside the functions, and a missing
one is a single :class:`~prunus.errors.MissingDependencyError` line naming the extra.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

from prunus._optional import require
from prunus.privacy.report import RocCurve, roc_figure

DPI = 100
FILE_LABELS = {"safetensors": "safetensors", "safetensors_deployed": "safetensors after surgery", "pcz": ".pcz",
               "onnx": "ONNX"}


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    matplotlib = require("matplotlib", "prunus report's plots", extra="report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_uri(fig) -> str:
    """The figure as a base64 PNG data URI; the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(ax, names: list[str], series: dict[str, list[float | None]], *, log: bool = False) -> None:
    """Grouped horizontal bars: one group per name, one bar per series (None: no bar)."""
    height = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series.items()):
        ys = [i + (k - (len(series) - 1) / 2) * height for i in range(len(names))]
        xs = [np.nan if v is None else v for v in values]
        ax.barh(ys, xs, height=height, label=label)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    if log:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on short ranges
    if len(series) > 1:
        ax.legend(fontsize=7, ncol=len(series), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)


def accuracy_figure(runs: list[dict[str, Any]]) -> str:
    """Test accuracy per run, and per class side by side."""
    plt = pyplot()
    names = [r["name"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.5 * len(runs) + 2.2), gridspec_kw={"width_ratios": [1, 2]})
    _bars(ax1, names, {"test accuracy": [r["accuracy"]["test"] for r in runs]})
    for i, r in enumerate(runs):
        ax1.text(r["accuracy"]["test"], i, f" {r['accuracy']['test']:.2f}%", va="center", fontsize=8)
    ax1.set_xlim(0, 118)
    ax1.set_xlabel("test accuracy (%)")
    classes = len(runs[0]["accuracy"]["per_class"])
    width = 0.8 / len(runs)
    for k, r in enumerate(runs):
        xs = np.arange(classes) + (k - (len(runs) - 1) / 2) * width
        ax2.bar(xs, [np.nan if v is None else v for v in r["accuracy"]["per_class"]], width=width, label=r["name"])
    ax2.set_xticks(range(classes))
    ax2.set_xlabel("class")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_ylim(0, 105)
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return to_uri(fig)


def size_figure(runs: list[dict[str, Any]]) -> str:
    """File bytes per run and format (log axis), and nonzero weights per run."""
    plt = pyplot()
    names = [r["name"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.6 * len(runs) + 2.2))
    _bars(ax1, names, {label: [r["files"][k] for r in runs] for k, label in FILE_LABELS.items()}, log=True)
    ax1.set_xlabel("bytes (log scale)")
    _bars(ax2, names, {"weights": [r["totals"]["weights"] for r in runs],
                       "nonzero": [r["totals"]["nonzeros"] for r in runs],
                       "live": [r["totals"]["live"] for r in runs]}, log=True)
    ax2.set_xlabel("conv + linear weights (log scale)")
    fig.tight_layout()
    return to_uri(fig)


def latency_figure(runs: list[dict[str, Any]], batch_sizes: list[int]) -> str:
    """Median latency per run, one panel per batch size."""
    plt = pyplot()
    names = [r["name"] for r in runs]
    fig, axes = plt.subplots(1, len(batch_sizes), figsize=(11, 0.5 * len(runs) + 2.2), squeeze=False)
    for ax, b in zip(axes[0], batch_sizes):
        _bars(ax, names, {f"batch {b}": [r["latency"][str(b)]["median_ms"] for r in runs]})
        for i, r in enumerate(runs):
            ax.text(r["latency"][str(b)]["median_ms"], i, f" {r['latency'][str(b)]['median_ms']:.3g}", va="center",
                    fontsize=8)
        ax.set_xlabel(f"batch {b}: median ms per forward (deployed)")
        ax.margins(x=0.2)
    fig.tight_layout()
    return to_uri(fig)


def sparsity_figure(name: str, grids: dict[str, np.ndarray]) -> str:
    """One heat map per layer: share of nonzero weights, rows = output channels, columns = inputs read."""
    plt = pyplot()
    cols = min(len(grids), 4)
    rows = math.ceil(len(grids) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 1, 2.3 * rows + 0.4), squeeze=False)
    image = None
    for ax, (layer, grid) in zip(axes.flat, grids.items()):
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{layer} ({100 * float(grid.mean()):.1f}% nonzero)", fontsize=8)
        ax.set_xlabel("input (channel x kernel)", fontsize=7)
        ax.set_ylabel("output channel", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(grids):]:
        ax.axis("off")
    fig.suptitle(f"{name}: share of nonzero weights", fontsize=10)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="nonzero share")
    return to_uri(fig)


def curves_figure(run: dict[str, Any]) -> str:
    """Loss and accuracy per epoch through every training phase of the run (phases separated by lines)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
    start = 0
    for k, phase in enumerate(run["curves"]):
        epochs = phase["epochs"]
        x = [start + i + 1 for i in range(len(epochs))]
        for ax, key in ((ax1, "loss"), (ax2, "accuracy")):
            ax.plot(x, [e.get(f"train_{key}", np.nan) for e in epochs], "-o", ms=3, color=f"C{k}",
                    label=f"{phase['phase']}: train set")
            ax.plot(x, [e.get(f"test_{key}", np.nan) for e in epochs], "--s", ms=3, color=f"C{k}",
                    label=f"{phase['phase']}: test set")
            if start:
                ax.axvline(start + 0.5, color="grey", lw=0.8, ls=":")
        start += len(epochs)
    for ax, label in ((ax1, "loss"), (ax2, "accuracy (%)")):
        ax.set_xlabel("epoch (all phases in order)")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle(f"{run['name']}: training curves", fontsize=10)
    fig.tight_layout()
    return to_uri(fig)


def residual_figure(runs: list[dict[str, Any]]) -> str:
    """The method's residual and the weights' distance to the constraint set, per round (log scale)."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
    for k, r in enumerate(runs):
        rounds = r["method_history"]
        for ax, key in ((ax1, "residual"), (ax2, "distance")):
            points = [(h["round"], h[key]) for h in rounds if key in h and h[key] > 0]
            if points:
                ax.plot(*zip(*points), "-o", ms=3, color=f"C{k}", label=r["name"])
    ax1.set_ylabel("residual ||W - Z||")
    ax2.set_ylabel("distance ||W - Pi(W)|| / ||W||")
    for ax in (ax1, ax2):
        ax.set_xlabel("round")
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return to_uri(fig)


def roc_uris(run: dict[str, Any]) -> list[str]:
    """The audit's ROC curves on linear and on log-log axes."""
    curves = [RocCurve.from_dict(a) for a in run["audit"]["attacks"]]
    return [to_uri(roc_figure(curves, log=log, title=f"{run['name']}: ROC{' (log-log)' if log else ''}"))
            for log in (False, True)]
