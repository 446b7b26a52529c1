"""The seed paper's privacy claims judged from privacy_mia.json, and the accuracy-vs-leakage plot (issue 22).

*Attack accuracy* (the seed's metric) of a run: the best balanced accuracy among its attacks, each at
the threshold chosen on reference data only.  Each claim compares means over seeds and calls a
difference real only beyond two standard errors (``met`` / ``tie`` / ``not met``):

* pruning reduces attack accuracy: every pruning-alone row against the undefended target;
* pruning + game gives the lowest attack accuracy: every MCMIA row against the undefended target, the
  game alone (AdvReg) and pruning alone at the same compression (SLR, ADMM, magnitude);
* beats DP-SGD at equal accuracy: privacy_mia's goal table (LiRA AUC against DP-SGD's front).

The plot puts every row at (test accuracy, TPR at 0.1% FPR of its strongest attack), mean ± std over seeds.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

TWO_SE = 2.0


def attack_accuracy(run: dict) -> float:
    """The strongest attack's balanced accuracy at its reference-chosen threshold."""
    return max(a["balanced_accuracy"] for a in run["attacks"].values() if a.get("balanced_accuracy") is not None)


def strongest_tpr(run: dict, adaptive: bool = False) -> float:
    """TPR at 0.1% FPR of the attack that reaches the highest one; with ``adaptive``, the adaptive attacker's
    attacks count too (where the row was audited by one: its references trained with the row's defense)."""
    attacks = list(run["attacks"].values())
    if adaptive and run.get("adaptive"):
        attacks += list(run["adaptive"]["attacks"].values())
    return max(a["tpr_at_0.1pct_fpr"] for a in attacks)


def _mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.mean(values), se


def lower(a: list[float], b: list[float]) -> tuple[str, float]:
    """Is ``a``'s mean below ``b``'s beyond two standard errors? (verdict, difference in points)."""
    (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
    diff, se = ma - mb, math.hypot(sa, sb)
    verdict = "met" if diff < -TWO_SE * se else "not met" if diff > TWO_SE * se else "tie"
    if se == 0 and diff == 0:
        verdict = "tie"
    return verdict, 100 * diff


def claim_lines(groups: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    """One line per comparison behind the seed's claims (markdown bullets)."""
    acc = {name: [attack_accuracy(r) for r in runs] for name, runs in groups.items()}
    if "undefended" not in acc:
        return ["- the undefended row is needed to judge the claims"]
    lines = ["**The seed's claims** (attack accuracy = the strongest attack's balanced accuracy at its "
             "reference-chosen threshold; a difference counts beyond two standard errors of the seed means):", ""]

    def line(claim: str, row: str, other: str) -> str:
        verdict, diff = lower(acc[row], acc[other])
        single = min(len(acc[row]), len(acc[other])) < 2
        return (f"- {claim}: {labels.get(row, row)} {100 * statistics.mean(acc[row]):.2f}% vs "
                f"{labels.get(other, other)} {100 * statistics.mean(acc[other]):.2f}% ({diff:+.2f} pt, "
                f"{len(acc[row])} and {len(acc[other])} seeds) -> **{verdict}**"
                f"{' (one seed: no spread known, so any difference counts)' if single else ''}")

    for name in (n for n in acc if n.startswith("prune-")):
        lines.append(line("pruning reduces attack accuracy", name, "undefended"))
    compression = {name: _compression(runs) for name, runs in groups.items()}
    for name in (n for n in acc if n.startswith("mcmia")):
        others = ["undefended"] + [n for n in ("advreg",) if n in acc]
        others += [n for n in acc if n.startswith("prune-") and compression[n] == compression[name]]
        for other in others:
            lines.append(line("pruning + game lowest attack accuracy", name, other))
    return lines


def _compression(runs: list[dict]) -> float | None:
    """A pruned row's compression of its pruned layers (equal for every seed: the plan fixes it), else None."""
    values = [r["compression"] for r in runs if r.get("compression")]
    return round(statistics.mean(values), 1) if values else None


def pareto_png(groups: dict[str, list[dict]], labels: dict[str, str], path: Path) -> None:
    """Test accuracy against the strongest attack's TPR at 0.1% FPR for every row, as a PNG.

    Rows sit close together, so each point carries a number (nudged off the other numbers) and the
    key beside the axes names it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {"undefended": ("black", "o"), "prune": ("tab:blue", "s"), "advreg": ("tab:orange", "^"),
                "mcmia": ("tab:red", "D"), "dpsgd": ("tab:green", "v"), "relaxloss": ("tab:purple", "P")}
    fig, ax = plt.subplots(figsize=(11, 5.5))
    key, points = [], []
    for number, (name, runs) in enumerate(groups.items(), start=1):
        family = next((f for f in families if name.startswith(f)), "undefended")
        color, marker = families[family]
        x = [r["test_accuracy"] for r in runs]
        y = [100 * strongest_tpr(r) for r in runs]
        sx = statistics.stdev(x) if len(x) > 1 else 0.0
        sy = statistics.stdev(y) if len(y) > 1 else 0.0
        ax.errorbar(statistics.mean(x), statistics.mean(y), xerr=sx, yerr=sy, color=color, marker=marker,
                    capsize=2, linestyle="none", alpha=0.85)
        points.append((statistics.mean(x), statistics.mean(y), str(number), color))
        key.append(f"{number:>2}  {labels.get(name, name)}")
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("TPR at 0.1% FPR, strongest attack (%)")
    ax.set_title("accuracy against leakage (lower right is better)")
    ax.grid(alpha=0.3)
    fig.text(0.70, 0.93, "\n".join(key), va="top", ha="left", fontsize=7.5, family="monospace")
    fig.subplots_adjust(left=0.07, right=0.68, bottom=0.1, top=0.92)
    _numbers_without_overlap(ax, points)  # last: it measures the labels in the final layout
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


def _numbers_without_overlap(ax, points: list[tuple[float, float, str, str]]) -> None:
    """Put each point's number at the first of a few offsets where it overlaps no number placed before."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(4, 4), (4, -10), (-12, 4), (-12, -10), (4, 14), (4, -20), (-12, 14), (-12, -20), (14, -3), (-22, -3)]
    for x, y, text, color in points:
        for dx, dy in offsets:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                                color=color, fontweight="bold")
            box = label.get_window_extent(renderer).expanded(1.1, 1.1)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == offsets[-1]:
                placed.append(box)
                break
            label.remove()
