"""Structured pruning at 2x and 4x fewer MACs: reweighted vs SLR vs ADMM on VGG-11 (issue 4).

VGG-11 at width 0.25 (BatchNorm; 0.58M parameters, 9.6M MACs at 32x32), trained
densely on Fashion-MNIST padded to 32x32. Every Conv2d/Linear but the first and
last is pruned with one ratio, chosen (by bisection on the dense model) so that
the MACs fall 2x or 4x:
  filter  output channels; MACs counted with empty channels removed (what a
          physically smaller model runs; the BN channel goes with its filter)
  column  GEMM columns (input channel x kernel position); MACs of the nonzero
          columns (what an im2col GEMM with those columns dropped runs)
Every method gets the same budget: 3 pruning epochs (Adam, lr 1e-3, cosine),
hard-prune, 1 masked retraining epoch (Adam at lr 1e-3 again, constant: prunus
prune's default when the table was first made; it now retrains at a tenth). One seed (2-core CPU budget).

    python benchmarks/reweighted_structured.py [--continue] [--render]

The dense model's accuracy is measured in the run and its file's sha256 recorded; ``--continue``
refuses to add rows to a JSON whose rows were pruned from another dense file.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from common import (
    HERE,
    add_results_flags,
    add_row,
    continued_or_new,
    dense_sentence,
    other_machines_note,
    prune_run,
    render_only,
    train_cached,
    write_result,
)

from prunus.data import load_dataset
from prunus.harden.stats import count_macs
from prunus.jobs.prune import PruneConfig
from prunus.models.loading import load_model
from prunus.plan.projection import hard_prune
from prunus.plan.recipe import Plan
from prunus.train.config import TrainConfig

NAME = "reweighted_structured"
DENSE = HERE / ".cache" / "dense-vgg11-w025"
DENSE_EPOCHS = 6
METHODS = ("reweighted", "slr", "admm")
STRUCTURES = ("filter", "column")
TARGETS = (2.0, 4.0)


def dense_checkpoint():
    return train_cached(TrainConfig(model="vgg11", dataset="fashion-mnist", epochs=DENSE_EPOCHS, image_size=32,
                                    augment=False, model_options={"width": 0.25}), DENSE)


def macs_after(model, structure: str, ratio: float, probe: torch.Tensor) -> int:
    """MACs of the dense model hard-pruned at ``ratio`` (see the module docstring for how each is counted)."""
    m = copy.deepcopy(model)
    plan = Plan.uniform(m, ratio, structure)
    if structure == "filter":
        from prunus.plan.coupling import project_coupled

        project_coupled(m, plan, probe)
        return count_macs(m, probe).structural
    hard_prune(m, plan.layout(m))
    return count_macs(m, probe).nonzero


def ratio_for_macs(model, structure: str, target: float, probe: torch.Tensor) -> tuple[float, int]:
    """The smallest uniform ratio (to 0.0001) whose hard-pruned model has ``target`` times fewer MACs."""
    dense = count_macs(model, probe).dense
    lo, hi = 0.0, 0.99
    for _ in range(14):
        mid = (lo + hi) / 2
        if dense / macs_after(model, structure, mid, probe) < target:
            lo = mid
        else:
            hi = mid
    return hi, macs_after(model, structure, hi, probe)


def summarize(data: dict) -> str:
    dense = data["dense_accuracy"]
    lines = [
        f"## Structured pruning at 2x and 4x fewer MACs, VGG-11 on Fashion-MNIST (`benchmarks/{NAME}.py`)",
        "",
        f"VGG-11 width 0.25 with BatchNorm, Fashion-MNIST padded to 32x32, dense {data['dense_epochs']} epochs: "
        f"**{dense:.2f}%**, {data['dense_macs']:,} MACs per image. {dense_sentence(data)} "
        "One uniform ratio for every Conv2d/Linear but the "
        "first and last, found by bisection so that the MACs fall 2x or 4x: filter = MACs with empty channels removed "
        "(the BN channel is pruned with its filter); column = MACs of the nonzero GEMM columns. Every method at "
        "prunus' defaults (a round every 100 batches, its penalty (rho; reweighted's lambda) grown by the budget, "
        "SLR's and ADMM's on the removed entries): "
        f"{data['prune_epochs']} pruning epochs (Adam, lr 1e-3, cosine), hard-prune, {data['retrain_epochs']} masked "
        "retraining epochs at the pruning lr again (Adam lr 1e-3, constant: a hard-pruned model near dense can end "
        "its first epoch below where it started, which is why prunus prune now retrains at a tenth of the lr). "
        f"Seed {', '.join(map(str, data['seeds']))}. Machine: {data['environment']['cpu']}, "
        f"{data['environment']['cpu_count']} cores, torch {data['environment']['torch']}."
        + other_machines_note(data) + " *Pruning wall s*: the wall time of the pruning epochs on a machine that ran "
        "other work beside them: not a speed comparison.",
        "",
        "| structure | MACs | ratio | method | hard-pruned % | "
        + " | ".join(f"+{e + 1} epoch %" for e in range(data["retrain_epochs"]))
        + " | pruning wall s |",
        "|---|---|---|---|---|" + "---|" * data["retrain_epochs"] + "---|",
    ]
    for r in sorted(data["runs"],
                    key=lambda r: (STRUCTURES.index(r["structure"]), r["target"], METHODS.index(r["variant"]))):
        retrain = " | ".join(f"{a:.2f}" for a in r["retrain_accuracy"])
        lines.append(
            f"| {r['structure']} | {data['dense_macs'] / r['macs']:.2f}x fewer | {r['ratio']:.3f} | {r['variant']} | "
            f"{r['hard_pruned_accuracy']:.2f} | {retrain} | {r['prune_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--prune-epochs", type=int, default=3)
    ap.add_argument("--retrain-epochs", type=int, default=1)
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return

    init = dense_checkpoint()
    model, _ = load_model(init)
    probe = torch.zeros(1, 1, 32, 32)
    data = continued_or_new(args, NAME, init, model, lambda: load_dataset("fashion-mnist", "test", image_size=32),
                            dense_epochs=DENSE_EPOCHS, prune_epochs=args.prune_epochs,
                            retrain_epochs=args.retrain_epochs, seeds=args.seeds,
                            dense_macs=count_macs(model, probe).dense)
    done = {(r["structure"], r["target"], r["variant"], r["seed"]) for r in data["runs"]}
    for structure in STRUCTURES:
        for target in TARGETS:
            ratio, _ = ratio_for_macs(model, structure, target, probe)
            plan = Plan.uniform(model, ratio, structure)
            for seed in args.seeds:
                for method in METHODS:
                    if (structure, target, method, seed) in done:
                        continue
                    config = PruneConfig(method=method, epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs,
                                         retrain_lr=PruneConfig.lr, seed=seed)  # the table's recipe: the same lr
                    run = prune_run(init, plan, config, structure=structure, target=target, ratio=ratio, variant=method)
                    run["macs"] = run["macs_structural"] if structure == "filter" else run["macs_nonzero"]
                    add_row(data, run)
                    print(json.dumps(run), flush=True)
                    write_result(NAME, data, summarize(data))


if __name__ == "__main__":
    main()
