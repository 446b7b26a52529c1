"""Retrain-free pruning: SLR vs ADMM vs magnitude on LeNet-5 / full Fashion-MNIST.

From one dense checkpoint, every method gets the same pruning budget (the same
epochs, optimizer and learning rate), is hard-pruned, and is then retrained with
its mask fixed. We record test accuracy right after hard-pruning (0 retraining
epochs) and after each retraining epoch, for 3 seeds (the seed sets data order
and the batch SLR evaluates its conditions on; the dense model is shared).

Variants:
  slr, admm              prunus' defaults, no option set: a round every 100 batches (about 4.7 per
                         epoch), rho grown by the budget so the weights reach the set by the last round,
                         the penalty on the entries the Z-step removed (kept weights train freely)
  slr/fixed, admm/fixed  the textbook setting: rho fixed at 0.1, the penalty on every entry, a round
                         every 100 batches (the earlier benchmark's best rows, slr/100 and admm/100)
  slr/prox, admm/prox    the defaults with the penalty as a proximal step after each Adam step
                         (penalty_step="proximal"): its pull grows with rho, not bounded by Adam's ~lr per step
  magnitude              one-shot magnitude pruning at the start, masked training after
  gradual                gradual magnitude pruning, cubic ramp (Zhu & Gupta 2017)

The plan is global unstructured pruning of every Conv2d/Linear weight but the
first and last layer at 20x, 50x, 100x (compression = planned weights /
nonzero weights). Results are appended to the JSON after every run, so an
interrupted benchmark continues where it stopped (--continue).

    python benchmarks/retrain_free.py [--rates 20 50 100] [--seeds 0 1 2] [--continue] [--render]

The dense model's accuracy is measured in the run and its file's sha256 recorded; ``--continue``
refuses to add rows to a JSON whose rows were pruned from another dense file.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from common import (
    add_results_flags,
    add_row,
    continued_or_new,
    dense_sentence,
    mean_std,
    other_machines_note,
    render_only,
    train_cached,
    write_result,
)
from rich.console import Console

from prunus.data import load_dataset
from prunus.jobs.prune import PruneConfig, run_pruning
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan, ratio_for_compression
from prunus.train.config import TrainConfig

DENSE = Path(__file__).resolve().parent / ".cache" / "dense-lenet5"
FIXED = {"rho_schedule": "fixed", "options": {"penalize": "all"}, "update_every": 100}
VARIANTS = {  # method, PruneConfig fields
    "slr": ("slr", {}),
    "admm": ("admm", {}),
    "slr/fixed": ("slr", FIXED),
    "admm/fixed": ("admm", FIXED),
    "slr/prox": ("slr", {"options": {"penalty_step": "proximal"}}),
    "admm/prox": ("admm", {"options": {"penalty_step": "proximal"}}),
    "magnitude": ("magnitude", {}),
    "gradual": ("gradual", {}),
}
NAME = "retrain_free"


def dense_checkpoint() -> Path:
    return train_cached(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=15, seed=0), DENSE)


def epochs_to_recover(run: dict, dense: float) -> int | None:
    curve = [run["hard_pruned_accuracy"], *run["retrain_accuracy"]]
    return next((e for e, acc in enumerate(curve) if acc >= dense - 1.0), None)


def summarize(data: dict) -> str:
    runs, dense = data["runs"], data["dense_accuracy"]
    R = data["retrain_epochs"]
    lines = [
        f"## Retrain-free pruning, LeNet-5 on Fashion-MNIST (`benchmarks/{NAME}.py`)",
        "",
        f"Dense LeNet-5 (15 epochs, seed 0): **{dense:.2f}%**. Global unstructured pruning of conv2, fc1, fc2 "
        f"(first and last layer dense). Every method: {data['prune_epochs']} pruning epochs of Adam "
        f"(lr {data['lr']}, cosine), then masked retraining with Adam at a constant lr {data['lr']}. "
        f"{_variants_sentence({r['variant'] for r in runs})} {dense_sentence(data)} "
        f"Seeds {', '.join(map(str, data['seeds']))}; mean ± std of test accuracy (%). "
        f"Machine: {data['environment']['cpu']}, {data['environment']['cpu_count']} cores, torch "
        f"{data['environment']['torch']}." + other_machines_note(data),
        "",
        ("| compression | method | hard-pruned, 0 retraining | +1 epoch | +3 epochs "
         "| retraining epochs to within 1 pt of dense (per seed) | pruning wall s |"),
        "|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple, list] = {}
    for r in runs:
        by_key.setdefault((r["rate"], r["variant"]), []).append(r)
    for (rate, variant), group in sorted(by_key.items(), key=lambda kv: (kv[0][0], list(VARIANTS).index(kv[0][1]))):
        hard = [g["hard_pruned_accuracy"] for g in group]
        one = [g["retrain_accuracy"][0] for g in group]
        three = [g["retrain_accuracy"][2] for g in group]
        rec = ", ".join(str(e) if (e := epochs_to_recover(g, dense)) is not None else f">{R}" for g in group)
        wall = statistics.mean(g["prune_seconds"] for g in group)
        lines.append(f"| {rate:g}x | {variant} | {mean_std(hard)} | {mean_std(one)} | {mean_std(three)} | {rec} | "
                     f"{wall:.0f} |")

    def mean_of(rate, variant, key="hard_pruned_accuracy"):
        vals = [r[key] for r in runs if r["rate"] == rate and r["variant"] == variant]
        return statistics.mean(vals) if vals else None

    lines += ["", "Targets (issue 18), from the rows above:", ""]
    s20 = mean_of(20, "slr")
    if s20 is not None:
        lines.append("- slr hard-pruned at 20x within 0.5 pt of dense: "
                     f"{s20:.2f} vs {dense:.2f} ({s20 - dense:+.2f}) -> "
                     f"**{'met' if s20 >= dense - 0.5 else 'NOT met'}**")
    for rate in (50, 100):
        a, b = mean_of(rate, "slr"), mean_of(rate, "magnitude")
        if a is not None and b is not None:
            lines.append(f"- slr hard-pruned >= one-shot magnitude (after its {data['prune_epochs']} masked epochs) at "
                         f"{rate}x: {a:.2f} vs {b:.2f} ({a - b:+.2f}) -> **{'met' if a >= b else 'NOT met'}**")
    for slr, admm in (("slr", "admm"), ("slr/fixed", "admm/fixed")):
        a, b = mean_of(100, slr), mean_of(100, admm)
        if a is not None and b is not None:
            lines.append(f"- {slr} - {admm} at 100x, hard-pruned: {a:.2f} vs {b:.2f} ({a - b:+.2f} pt; target >= +3) "
                         f"-> **{'met' if a - b >= 3.0 else 'NOT met'}**")
    if "repeat" in data:
        rep = data["repeat"]
        lines.append(f"- reproducibility: {rep['row']} run again in the same process: {rep['first']:.2f} then "
                     f"{rep['again']:.2f}, every accuracy {'equal' if rep['equal'] else 'DIFFERENT'}")
    lines += _slr_admm_lines(runs)
    return "\n".join(lines) + "\n"


VARIANT_TEXT = {  # what each variant of the table is, said once per pair
    ("slr", "admm"): "prunus' defaults (a round every 100 batches, rho grown by the budget to a distance of 1e-3 from "
                     "the set by the last round, the penalty on the removed entries)",
    ("slr/fixed", "admm/fixed"): "rho 0.1 fixed, the penalty on every entry, a round every 100 batches",
    ("slr/prox", "admm/prox"): "the defaults with the penalty as a proximal step after each Adam step",
    ("magnitude",): "pruned at the start, the pruning epochs with the mask",
    ("gradual",): "gradual magnitude pruning, cubic ramp (Zhu & Gupta 2017)",
}


def _variants_sentence(present: set[str]) -> str:
    """The variants the table holds, and what they are (only those: rows still to run are not described)."""
    parts = [f"{', '.join(v for v in names if v in present)}: {text}"
             for names, text in VARIANT_TEXT.items() if any(v in present for v in names)]
    return "; ".join(parts) + "." if parts else ""


def _slr_admm_lines(runs: list[dict]) -> list[str]:
    """What was tried for the SLR - ADMM target, each pair judged from its rows: a difference counts only beyond
    two standard errors of the seed means."""
    out = []
    for rate in sorted({r["rate"] for r in runs}):
        for slr, admm, how in (("slr/fixed", "admm/fixed", "the paper's setting, rho fixed"),
                               ("slr", "admm", "rho grown by the budget for both"),
                               ("slr/prox", "admm/prox", "the penalty as a proximal step for both")):
            a = [r["hard_pruned_accuracy"] for r in runs if r["rate"] == rate and r["variant"] == slr]
            b = [r["hard_pruned_accuracy"] for r in runs if r["rate"] == rate and r["variant"] == admm]
            if len(a) < 2 or len(b) < 2:
                continue
            diff = statistics.mean(a) - statistics.mean(b)
            se = math.hypot(statistics.stdev(a) / math.sqrt(len(a)), statistics.stdev(b) / math.sqrt(len(b)))
            verdict = "a tie" if abs(diff) <= 2 * se else ("SLR ahead" if diff > 0 else "ADMM ahead")
            out.append(f"  - {rate:g}x, {how}: {diff:+.2f} pt (two standard errors {2 * se:.2f}): {verdict}")
    if not out:
        return []
    return ["", "What was tried for SLR - ADMM (hard-pruned, same budget and rounds; the multiplier rule is the only "
            "difference within a pair; `slr_tuning.py` lists rho, s0, M and round-frequency settings too):", ""] + out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[20, 50, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--prune-epochs", type=int, default=6)
    ap.add_argument("--retrain-epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return

    init = dense_checkpoint()
    model, _ = load_model(init)
    data = continued_or_new(args, NAME, init, model, lambda: load_dataset("fashion-mnist", "test"),
                            prune_epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs, lr=args.lr,
                            seeds=args.seeds)
    done = {(r["rate"], r["variant"], r["seed"]) for r in data["runs"]}
    for rate in args.rates:
        plan = Plan.uniform(model, ratio_for_compression(rate), global_unstructured=True)
        for variant in args.variants:
            for seed in args.seeds:
                if (rate, variant, seed) in done:
                    continue
                run = one_run(init, plan, rate, variant, seed, args)
                add_row(data, run)
                print(json.dumps(run), flush=True)
                write_result(NAME, data, summarize(data))
    if "repeat" not in data and (100, "slr", 1) in {(r["rate"], r["variant"], r["seed"]) for r in data["runs"]}:
        # the same command and seed again in the same process: equal bits or a nondeterminism to explain
        again = one_run(init, Plan.uniform(model, ratio_for_compression(100), global_unstructured=True), 100, "slr", 1,
                        args)
        first = next(r for r in data["runs"] if (r["rate"], r["variant"], r["seed"]) == (100, "slr", 1))
        data["repeat"] = {"row": "100x slr seed 1", "first": first["hard_pruned_accuracy"],
                          "again": again["hard_pruned_accuracy"],
                          "equal": first["retrain_accuracy"] == again["retrain_accuracy"]
                          and first["hard_pruned_accuracy"] == again["hard_pruned_accuracy"]}
        write_result(NAME, data, summarize(data))


def one_run(init: Path, plan: Plan, rate: float, variant: str, seed: int, args) -> dict:
    method, fields = VARIANTS[variant]
    config = PruneConfig(method=method, epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs,
                         lr=args.lr, retrain_lr=args.lr, seed=seed, **fields)  # retraining at the same lr
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = run_pruning(init, plan, config, Path(tmp) / "run", console=Console(file=io.StringIO()))
    distances = [h["distance"] for h in res["method_history"] if "distance" in h]
    return {
        "rate": rate, "variant": variant, "seed": seed,
        "hard_pruned_accuracy": res["hard_pruned_accuracy"], "retrain_accuracy": res["retrain_accuracy"],
        "prune_seconds": res["prune_seconds"], "retrain_seconds": res["retrain_seconds"],
        "total_seconds": time.perf_counter() - t0, "compression": res["report"]["compression"],
        "method_rounds": len(res["method_history"]), "final_distance": distances[-1] if distances else None,
    }


if __name__ == "__main__":
    main()
