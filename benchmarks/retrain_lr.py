"""The masked retraining's lr after a hard-prune: the pruning lr again, or a tenth of it (prunus prune's default).

VGG-11 width 0.25 on Fashion-MNIST (reweighted_structured.py's committed dense file), SLR at prunus' defaults
(3 pruning epochs, Adam lr 1e-3, cosine), hard-pruned at reweighted_structured's plans (filter 2x and 4x fewer
MACs, column 4x), then 3 masked retraining epochs at a constant lr of 1e-3 or 1e-4. The pruning is the same run
for both lrs (same seed, deterministic), so the rows differ only in the retraining: is the model that SLR leaves
near dense kept, or knocked off and trained back?

    python benchmarks/retrain_lr.py [--seeds 0] [--continue] [--render]
"""

from __future__ import annotations

import argparse
import json

import torch
from common import (
    add_results_flags,
    add_row,
    continued_or_new,
    dense_sentence,
    other_machines_note,
    prune_run,
    render_only,
    write_result,
)
from reweighted_structured import DENSE_EPOCHS, dense_checkpoint, ratio_for_macs

from prunus.data import load_dataset
from prunus.jobs.prune import RETRAIN_LR_FACTOR, PruneConfig
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan

NAME = "retrain_lr"
PLANS = (("filter", 2.0), ("filter", 4.0), ("column", 4.0))
LRS = (PruneConfig.lr, PruneConfig.lr * RETRAIN_LR_FACTOR)
PRUNE_EPOCHS, RETRAIN_EPOCHS = 3, 3


def summarize(data: dict) -> str:
    env = data["environment"]
    lines = [f"## Retraining after the hard-prune: the pruning lr or a tenth of it (`benchmarks/{NAME}.py`)", "",
             f"VGG-11 width 0.25, Fashion-MNIST 32x32, dense {data['dense_epochs']} epochs: "
             f"**{data['dense_accuracy']:.2f}%**. {dense_sentence(data)} SLR at prunus' defaults, {PRUNE_EPOCHS} "
             f"pruning epochs (Adam, lr {PruneConfig.lr:g}, cosine), hard-pruned at reweighted_structured.py's "
             f"plans, then {RETRAIN_EPOCHS} masked retraining epochs at a constant lr (Adam). The same pruning run "
             "for both lrs (one seed, deterministic): the rows differ only in the retraining lr. Seed "
             f"{', '.join(map(str, data['seeds']))}. Machine: {env['cpu']}, {env['cpu_count']} cores, torch "
             f"{env['torch']}." + other_machines_note(data), "",
             "| structure | MACs | retraining lr | hard-pruned % | "
             + " | ".join(f"+{e + 1} epoch %" for e in range(RETRAIN_EPOCHS)) + " | best retrained - hard-pruned |",
             "|---|---|---|---|" + "---|" * RETRAIN_EPOCHS + "---|"]
    for r in sorted(data["runs"], key=lambda r: (PLANS.index((r["structure"], r["target"])), -r["retrain_lr"],
                                                 r["seed"])):
        lines.append(f"| {r['structure']} | {r['target']:g}x fewer | {r['retrain_lr']:g} | "
                     f"{r['hard_pruned_accuracy']:.2f} | " + " | ".join(f"{a:.2f}" for a in r["retrain_accuracy"])
                     + f" | {max(r['retrain_accuracy']) - r['hard_pruned_accuracy']:+.2f} |")
    # the verdict per plan and seed: after the same epochs, the tenth of the lr against the lr itself
    pairs = {}
    for r in data["runs"]:
        pairs.setdefault((r["structure"], r["target"], r["seed"]), {})[r["retrain_lr"]] = r["retrain_accuracy"][-1]
    gaps = [(k, v[LRS[1]] - v[LRS[0]]) for k, v in sorted(pairs.items(), key=lambda kv: PLANS.index(kv[0][:2]))
            if set(LRS) <= set(v)]
    if gaps:
        lines += ["", f"After {RETRAIN_EPOCHS} epochs, lr {LRS[1]:g} minus lr {LRS[0]:g}: "
                  + "; ".join(f"{s} {t:g}x seed {seed} {gap:+.2f} pt" for (s, t, seed), gap in gaps)
                  + f". The tenth of the lr ends ahead in {sum(g > 0 for _, g in gaps)} of {len(gaps)} plans."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return
    init = dense_checkpoint()
    model, _ = load_model(init)
    probe = torch.zeros(1, 1, 32, 32)
    data = continued_or_new(args, NAME, init, model, lambda: load_dataset("fashion-mnist", "test", image_size=32),
                            dense_epochs=DENSE_EPOCHS, seeds=args.seeds)
    done = {(r["structure"], r["target"], r["retrain_lr"], r["seed"]) for r in data["runs"]}
    for structure, target in PLANS:
        ratio, _ = ratio_for_macs(model, structure, target, probe)
        plan = Plan.uniform(model, ratio, structure)
        for seed in args.seeds:
            for lr in LRS:
                if (structure, target, lr, seed) in done:
                    continue
                config = PruneConfig(method="slr", epochs=PRUNE_EPOCHS, retrain_epochs=RETRAIN_EPOCHS,
                                     retrain_lr=lr, seed=seed)
                run = prune_run(init, plan, config, structure=structure, target=target, ratio=ratio,
                                retrain_lr=lr)
                add_row(data, run)
                print(json.dumps(run), flush=True)
                write_result(NAME, data, summarize(data))


if __name__ == "__main__":
    main()
