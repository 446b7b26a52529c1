"""An audit's report: the markdown table, the terminal summary and the ROC plots (also drawn by ``prunus report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from prunus.io import atomic_write
from prunus.privacy.metrics import AttackMetrics


def write_npz(path: Path, **arrays) -> None:
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})


def markdown_table(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    lines = [
        f"# Membership-inference audit of `{report['checkpoint']}`",
        "",
        (f"Defense: {report['defense'] or 'unknown'}. Test accuracy {acc['test']:.2f}%, members {acc['members']:.2f}%, "
         f"non-members {acc['nonmembers']:.2f}%. {report['queries']}. "
         f"Attacker: {report.get('attacker', 'non-adaptive')}."),
        "",
        "| attack | AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | members | non-members | threshold chosen on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in report["attacks"]:
        ci = a.get("ci", {})
        bal = "n/a" if a["balanced_accuracy"] is None else \
            f"{100 * a['balanced_accuracy']:.2f}%{_interval(ci, 'balanced_accuracy', percent=True)}"
        low = f"{100 * a['tpr_at_0.1pct_fpr']:.2f}%" + (" (0 FP)" if a["fpr_resolution"] > 0.001 else "") + \
            _interval(ci, "tpr_at_0.1pct_fpr", percent=True)
        lines.append(f"| {a['attack']} | {a['auc']:.4f}{_interval(ci, 'auc')} | {bal} | "
                     f"{100 * a['tpr_at_1pct_fpr']:.2f}%{_interval(ci, 'tpr_at_1pct_fpr', percent=True)} | {low} | "
                     f"{a['members']} | {a['nonmembers']} | {a['threshold_source']} |")
    lines += ["", ("AUC, TPR@FPR: threshold-free, over all thresholds on the evaluated members/non-members. "
                   "Balanced accuracy: at a threshold fixed beforehand on reference data only. "
                   "\"(0 FP)\": fewer than 1000 non-members, so 0.1% FPR means no false positive at all. "
                   "[low, high]: 95% bootstrap interval (members and non-members resampled separately)."), ""]
    return "\n".join(lines)


def _interval(ci: dict, key: str, percent: bool = False) -> str:
    if key not in ci:
        return ""
    lo, hi = ci[key]
    return f" [{100 * lo:.2f}, {100 * hi:.2f}]" if percent else f" [{lo:.3f}, {hi:.3f}]"


def summary_table(results: list[AttackMetrics], accuracy: dict[str, float]) -> Table:
    table = Table(title=f"membership inference (test {accuracy['test']:.2f}%, members {accuracy['members']:.2f}%, "
                        f"non-members {accuracy['nonmembers']:.2f}%)")
    for col in ("attack", "AUC", "bal. acc.", "TPR@1%FPR", "TPR@0.1%FPR", "members/non"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    for r in results:
        bal = "n/a" if r.balanced_accuracy is None else f"{100 * r.balanced_accuracy:.2f}%"
        table.add_row(r.attack, f"{r.auc:.4f}", bal, f"{100 * r.tpr_at_1pct_fpr:.2f}%",
                      f"{100 * r.tpr_at_01pct_fpr:.2f}%", f"{r.members}/{r.nonmembers}")
    return table


@dataclass(frozen=True)
class RocCurve:
    """One attack's ROC as a plot needs it: from an :class:`AttackMetrics` or from its ``to_dict()`` in report.json."""

    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    fpr_resolution: float

    @classmethod
    def of(cls, r: AttackMetrics) -> RocCurve:
        return cls(r.attack, r.fpr, r.tpr, r.auc, r.fpr_resolution)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RocCurve:
        return cls(d["attack"], np.asarray(d["roc"]["fpr"], dtype=float), np.asarray(d["roc"]["tpr"], dtype=float),
                   float(d["auc"]), float(d["fpr_resolution"]))


def roc_figure(curves: list[RocCurve], *, log: bool, title: str):
    """A matplotlib figure with one ROC curve per attack and the chance line (log-log axes when ``log``).

    Shared by the audit's PNG files and ``prunus report``'s page; the caller saves and closes it.
    """

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    for r in curves:
        fpr, tpr = r.fpr, r.tpr
        if log:
            keep = (fpr > 0) & (tpr > 0)
            fpr, tpr = fpr[keep], tpr[keep]
        ax.plot(fpr, tpr, label=f"{r.label} (AUC {r.auc:.3f})", lw=1.4)
    lo = min((r.fpr_resolution for r in curves), default=1e-3) if log else 0.0
    ax.plot([max(lo, 1e-6), 1], [max(lo, 1e-6), 1], "k--", lw=0.8, label="chance")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(max(lo, 1e-6), 1)
        ax.set_ylim(max(lo, 1e-6), 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_roc(results: list[AttackMetrics], path: Path, *, log: bool, title: str) -> None:
    """One ROC curve per attack, written atomically as a PNG (log-log axes when ``log``)."""

    import matplotlib.pyplot as plt

    fig = roc_figure([RocCurve.of(r) for r in results], log=log, title=title)
    try:
        with atomic_write(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
