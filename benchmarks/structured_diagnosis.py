"""Why structured SLR collapsed at hard-prune, measured: one change at a time on ResNet-20 (issue 18).

ResNet-20 on Fashion-MNIST 32x32 (the dense model of ``structured_retrain_free.py``), filter
pruning at 2x fewer MACs (the same plan), SLR for 3 epochs (Adam lr 1e-3, cosine, a round
every 100 batches), seed 0. Each variant adds one change to the one before:

  before       what prunus did until this benchmark: the channel sets hold the planned conv weights
               only (residual streams projected together, BatchNorms and the unplanned stem not), rho
               fixed at 0.1, the penalty on every entry; the final hard-prune zeroes whole channel sets
               (gamma and beta of the BatchNorms included)
  +bn          the channel sets hold every parameter on the channels: conv biases, BatchNorm gamma and
               beta, the stem (so the method drives what the hard-prune removes)
  +budget      rho grows by the budget (distance to the set 1e-3 by the last round)
  +removed     the penalty acts on the removed entries only (kept weights train freely): prunus' default

Columns: accuracy at the end of the SLR epochs (weights not yet projected), right after the
hard-prune, the same with BatchNorm statistics re-estimated on 200 training batches, and the
distance to the set ||W - Pi(W)|| / ||W|| of the constrained tensors after the last round.

    python benchmarks/structured_diagnosis.py [--continue]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import math
import tempfile
import time

import torch
import torch.nn.functional as F
from common import (
    RESULTS,
    add_results_flags,
    add_row,
    dense_hash_note,
    dense_sha256,
    other_machines_note,
    render_only,
    write_result,
)
from rich.console import Console
from structured_retrain_free import BN_BATCHES, PROBE, ROUND_TO, dense_checkpoint

from prunus.data import load_dataset
from prunus.deploy.allocation import uniform_filter_plan_for_macs
from prunus.environment import environment_info
from prunus.harden.batchnorm import recalibrate_batchnorm
from prunus.jobs.common import fixed_batch
from prunus.jobs.prune import PruneConfig, make_method
from prunus.methods import batch_closure
from prunus.models.loading import load_model
from prunus.plan.coupling import couple_plan
from prunus.plan.projection import hard_prune
from prunus.plan.recipe import ChannelSet
from prunus.train.trainer import Trainer, evaluate

NAME = "structured_diagnosis"
MODEL, TARGET, EPOCHS, SEED = "resnet20", 2.0, 3, 0
VARIANTS = {  # (channel sets with every parameter, rho schedule, penalize)
    "before": (False, "fixed", "all"),
    "+bn": (True, "fixed", "all"),
    "+budget": (True, "budget", "all"),
    "+removed": (True, "budget", "removed"),
}


def weights_only(plan, model):
    """The channel sets as prunus had them before: the planned conv weights of each coupled group only."""
    planned = {t.name for t in plan.resolve(model)}
    sets = [ChannelSet(tuple(n for n in c.params if n in planned), c.ratio) for c in plan.coupled]
    return dataclasses.replace(plan, coupled=[c for c in sets if c.params])


def run(variant: str, init, base_plan, train_set, test_set) -> dict:
    full_sets, schedule, penalize = VARIANTS[variant]
    model, _ = load_model(init)
    full = couple_plan(model, base_plan, PROBE)
    plan = full if full_sets else weights_only(full, model)
    config = PruneConfig(method="slr", epochs=EPOCHS, seed=SEED, rho_schedule=schedule, channels_last=True,
                         options={"penalize": penalize})
    x, y = fixed_batch(train_set, config.closure_samples, SEED)
    torch.manual_seed(SEED)
    method = make_method(config, model, plan, batch_closure(model, x, y, F.cross_entropy),
                         batches_per_epoch=math.ceil(len(train_set.labels) / config.batch_size))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(model, train_set, test_set, config.train_config(EPOCHS, config.lr, config.schedule), tmp,
                hooks=[method], console=Console(file=io.StringIO())).fit()
    before = evaluate(model, test_set)["accuracy"]
    # the same hard-prune for every variant: whole channel sets, BatchNorms included
    hard_prune(model, full.layout(model))
    recal = copy.deepcopy(model)
    recalibrate_batchnorm(recal, train_set, batches=BN_BATCHES, seed=SEED)
    last = method.history[-1]
    worst = max(last["distances"].items(), key=lambda kv: kv[1])
    return {"variant": variant, "before_hard_prune": before, "hard_pruned": evaluate(model, test_set)["accuracy"],
            "bn_recalibrated": evaluate(recal, test_set)["accuracy"], "distance": last["distance"],
            "worst_tensor": worst[0], "worst_distance": worst[1], "rho_final": last["rho"],
            "distance_history": [h["distance"] for h in method.history],
            "rounds": len(method.history), "seconds": time.perf_counter() - t0}


def summarize(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"## Why structured SLR collapsed at hard-prune (`benchmarks/{NAME}.py`)",
        "",
        f"ResNet-20, Fashion-MNIST 32x32, dense {data['dense_accuracy']:.2f}% "
        f"({dense_hash_note(data.get('sha256'))}); filter pruning at {TARGET:g}x fewer "
        f"MACs (ratio {data['ratio']:.4f}, multiples of {ROUND_TO[MODEL]}), SLR {EPOCHS} epochs (Adam 1e-3 cosine, "
        f"a round every 100 batches), seed {SEED}; every variant hard-prunes whole channel sets (BatchNorm gamma and "
        "beta included). Each row adds one change to the row above. *distance*: ||W - Pi(W)|| / ||W|| of the "
        "tensors the method constrains, after the last round. "
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}." + other_machines_note(data),
        "",
        ("| variant | before hard-prune % | hard-pruned % | + BN recalibration % "
         "| distance | largest (tensor) | final rho |"),
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["runs"], key=lambda r: list(VARIANTS).index(r["variant"])):
        lines.append(f"| {r['variant']} | {r['before_hard_prune']:.2f} | {r['hard_pruned']:.2f} | "
                     f"{r['bn_recalibrated']:.2f} | {r['distance']:.4f} | {r['worst_distance']:.3f} "
                     f"({r['worst_tensor']}) | {r['rho_final']:.3g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return
    path = RESULTS / f"{NAME}.json"
    init = dense_checkpoint(MODEL)
    train_set = load_dataset("fashion-mnist", "train", image_size=32)
    test_set = load_dataset("fashion-mnist", "test", image_size=32)
    model, _ = load_model(init)
    plan, ratio = uniform_filter_plan_for_macs(model, PROBE, TARGET, round_to=ROUND_TO[MODEL])
    data = json.loads(path.read_text()) if args.cont and path.exists() else None
    if data is None or data["sha256"] != dense_sha256(init):
        data = {"benchmark": NAME, "environment": environment_info(), "sha256": dense_sha256(init), "ratio": ratio,
                "dense_accuracy": evaluate(model, test_set)["accuracy"], "runs": []}
    done = {r["variant"] for r in data["runs"]}
    for variant in args.variants:
        if variant not in done:
            add_row(data, run(variant, init, plan, train_set, test_set))
            print(json.dumps(data["runs"][-1]), flush=True)
            write_result(NAME, data, summarize(data))


if __name__ == "__main__":
    main()
