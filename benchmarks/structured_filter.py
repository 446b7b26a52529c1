"""Structured (filter) pruning of LeNet-5 on Fashion-MNIST at 2x and 4x fewer MACs.

Filters of conv1 and conv2 and neurons (rows) of fc1 and fc2 are pruned at one
ratio; fc3 (the classifier) stays dense. The ratio is the smallest one whose
hard-pruned model needs at most 1/2 (1/4) of the dense MACs once the zero filters
and the input channels they empty are removed (`CompressionReport.macs_structural`).
SLR and ADMM (a round every 100 batches) and one-shot magnitude pruning (filters
ranked by L2 norm, then masked training) get the same budget: 6 pruning epochs, then
3 masked retraining epochs. 3 seeds, one shared dense checkpoint.

LeNet-5 rather than a VGG: on this 2-core CPU a VGG-11 epoch of full Fashion-MNIST
takes minutes, and 18 runs x 9 epochs of it would not fit a session.

    python benchmarks/structured_filter.py [--seeds 0 1 2] [--continue] [--render]

The dense model's accuracy is evaluated in the run (not read from the checkpoint's metadata) and its
file's sha256 recorded. Each row is written as it finishes; --continue keeps them (refused when they
come from another dense file) and runs only the missing ones.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import (
    FROM_METADATA,
    add_results_flags,
    add_row,
    check_same_settings,
    continued_or_new,
    dense_sentence,
    mean_std,
    other_machines_note,
    render_only,
    write_result,
)
from retrain_free import dense_checkpoint
from rich.console import Console

from prunus.data import load_dataset
from prunus.harden.stats import count_macs
from prunus.jobs.prune import PruneConfig, run_pruning
from prunus.models.loading import load_model
from prunus.plan.projection import hard_prune
from prunus.plan.recipe import Plan

LAYERS = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")
VARIANTS = {"slr/100": ("slr", 100), "admm/100": ("admm", 100), "magnitude": ("magnitude", None)}
NAME = "structured_filter"


def filter_plan(ratio: float) -> Plan:
    return Plan.from_dict({"prune": {name: {"structure": "filter", "ratio": ratio} for name in LAYERS}}, source=NAME)


def ratio_for_mac_reduction(model, factor: float) -> tuple[float, int, int]:
    """Smallest ratio (step 0.01) whose filter-pruned model has <= dense/factor structural MACs."""
    example = torch.zeros(1, 1, 28, 28)
    dense = count_macs(model, example).dense
    for step in range(1, 100):
        ratio = step / 100
        pruned = copy.deepcopy(model)
        hard_prune(pruned, filter_plan(ratio).layout(pruned))
        macs = count_macs(pruned, example).structural
        if macs <= dense / factor:
            return ratio, dense, macs
    raise RuntimeError(f"no ratio reaches {factor}x fewer MACs")


def summarize(data: dict) -> str:
    runs, env = data["runs"], data["environment"]
    groups = {(r["factor"], r["variant"]): [] for r in runs}  # in the order run
    for r in runs:
        groups[r["factor"], r["variant"]].append(r)
    lines = [
        f"## Filter pruning, LeNet-5 on Fashion-MNIST (`benchmarks/{NAME}.py`)",
        "",
        f"Dense {data['dense_accuracy']:.2f}%. {dense_sentence(data, FROM_METADATA)} "
        "Filters of conv1, conv2 and neurons of fc1, fc2 pruned at one ratio, chosen so the "
        "model with zero filters removed needs 2x / 4x fewer MACs. SLR and ADMM at prunus' defaults (a round every "
        "100 batches, rho grown by the budget, the penalty on the removed filters); magnitude: filters ranked by L2 "
        f"norm, pruned at the start, then trained with the mask. {data['prune_epochs']} pruning epochs, then "
        f"{data['retrain_epochs']} masked retraining epochs (Adam, lr 1e-3). "
        f"Seeds {', '.join(map(str, sorted({r['seed'] for r in runs})))}. "
        f"Machine: {env['cpu']}, {env['cpu_count']} cores." + other_machines_note(data),
        "",
        "| MACs (dense -> pruned) | ratio | method | seeds | hard-pruned, 0 retraining | +1 epoch | +3 epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for factor in dict.fromkeys(f for f, _ in groups):
        for variant in (v for v in VARIANTS if (factor, v) in groups):  # a table still running lacks some
            group = groups[factor, variant]
            g0 = group[0]
            lines.append(
                f"| {g0['macs_dense']:,} -> {g0['macs_structural']:,} "
                f"({g0['macs_dense'] / g0['macs_structural']:.2f}x) | "
                f"{g0['ratio']:.2f} | {variant} | {len(group)} | "
                f"{mean_std([g['hard_pruned_accuracy'] for g in group])} | "
                f"{mean_std([g['retrain_accuracy'][0] for g in group])} | "
                f"{mean_std([g['retrain_accuracy'][-1] for g in group])} |"
            )
    walls = statistics.mean(r["wall_seconds"] for r in runs)
    lines += ["", f"Mean wall time per run (pruning + retraining): {walls:.0f} s."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--factors", type=float, nargs="+", default=[2, 4])
    ap.add_argument("--prune-epochs", type=int, default=6)
    ap.add_argument("--retrain-epochs", type=int, default=3)
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return

    init = dense_checkpoint()
    model, _ = load_model(init)
    data = continued_or_new(args, NAME, init, model, lambda: load_dataset("fashion-mnist", "test"), layers=LAYERS,
                            seeds=args.seeds, prune_epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs)
    check_same_settings(data, NAME, prune_epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs)
    done = {(r["factor"], r["variant"], r["seed"]) for r in data["runs"]}
    for factor in args.factors:
        ratio, _, macs = ratio_for_mac_reduction(model, factor)
        plan = filter_plan(ratio)
        for variant, (method, update_every) in VARIANTS.items():
            for seed in args.seeds:
                if (factor, variant, seed) in done:
                    continue
                config = PruneConfig(method=method, epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs,
                                     retrain_lr=PruneConfig.lr, seed=seed, update_every=update_every)
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    res = run_pruning(init, plan, config, Path(tmp) / "run", console=Console(file=io.StringIO()))
                run = {
                    "factor": factor, "ratio": ratio, "variant": variant, "seed": seed,
                    "hard_pruned_accuracy": res["hard_pruned_accuracy"], "retrain_accuracy": res["retrain_accuracy"],
                    "macs_dense": res["report"]["macs_dense"], "macs_structural": res["report"]["macs_structural"],
                    "wall_seconds": time.perf_counter() - t0,
                }
                assert run["macs_structural"] == macs, "the pruned model must have the MACs the ratio was chosen for"
                add_row(data, run)
                print(json.dumps(run), flush=True)
                write_result(NAME, data, summarize(data))
    print(summarize(data))


if __name__ == "__main__":
    main()
