"""Filter pruning that makes models faster: accuracy and measured CPU latency (issue 5).

For each model, the dense model of structured_retrain_free.py (Fashion-MNIST padded to 32x32; one file, one
training, for both tables); then,
at 2x and 4x fewer MACs, two methods get the same epoch budget E + R (``BUDGETS``):
  slr  SLR with a filter plan (E pruning epochs, Adam lr 1e-3, cosine), hard-prune
       per coupled group, R masked retraining epochs (Adam from lr 1e-4, cosine)
  l1   L1-norm filter pruning (Li et al. 2017): one-shot at the start, then
       E + R masked training epochs (the same schedules)
Allocation *uniform*: one filter ratio for every Conv2d/Linear but the last (the classifier),
found by bisection so that the MACs of the physically pruned model fall 2x or 4x; each
layer keeps a multiple of ``ROUND_TO`` filters (16 for VGG-16: AVX-512 holds 16 fp32
channels; 8 for ResNet-20, whose first stage has only 16) and the first convolution is pruned too
(at full resolution it carries the most
activation traffic). Allocation *latency*: the widths per coupled group that
``prunus.deploy.allocation.latency_aware_plan`` finds by measured, deployed batch-64 latency on this
machine (greedy, NetAdapt-style; same multiples, each group keeps at least a quarter), searched
once on the untrained architecture before any training and recorded with the rows. The
retrained model then goes
through surgery (``prunus.deploy.surgery``; outputs checked equal). After all training, one
timing pass (``--retime-only``, in a process of its own: it flushes denormals to zero on every
thread before anything else, since random weights make them; run alone it repeats the pass on a
quiet machine) times the dense and each small model in the same process, their runs interleaved
(``prunus.deploy.latency.compare_latency``, allocator held steady): median of 100 forward
passes after 5 warm-ups,
batch 1 and 64, torch's default threads on this machine; once as eager PyTorch
modules and once as deployed (``prunus.deploy.latency.for_inference``: BatchNorm folded
into the convolution, channels-last). MACs: Conv2d/Linear multiply-accumulates per
image.

    python benchmarks/surgery_speedup.py [--models vgg16 resnet20] [--targets 2 4]
                                         [--allocations uniform early latency]
                                         [--continue] [--plans-only] [--retime-only] [--render]

``--plans-only`` runs the latency searches and stops (run it on a quiet machine: the
search times models; the latency allocation trains only after it); training then needs no quiet
machine, and ``--retime-only`` times
every row again in one pass, from the architectures alone (no trained weights needed); a pass on
another CPU keeps the previous pass's batch-64 figures beside the new ones. ``--render`` only
rebuilds the table from the JSON.

The sha256 of each dense model's file is recorded in ``data["dense"]`` and each row keeps the accuracy
of the dense model it was pruned from (measured in its own run); ``--continue`` refuses to add rows
of a model whose recorded dense file differs from (or, from before hashes were kept, lacks) this one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import (
    HERE,
    RESULTS,
    add_results_flags,
    add_row,
    check_same_dense,
    dense_hash_note,
    dense_sha256,
    other_machines_note,
    prune_run,
    render_only,
    write_result,
)
from structured_retrain_free import DENSE_EPOCHS, PRECISION, dense_checkpoint
from structured_retrain_free import MODELS as RETRAIN_FREE_MODELS
from structured_retrain_free import ROUND_TO as ROUND_TO_SHARED

from prunus.deploy.allocation import latency_aware_plan, plan_for_macs, plan_from_widths, pruned_copy, shrink_to_widths
from prunus.deploy.footprint import weights_bytes
from prunus.deploy.latency import compare_latency, flush_denormals_for_timing, for_inference
from prunus.deploy.surgery import remove_pruned_channels
from prunus.environment import environment_info
from prunus.harden.stats import count_macs
from prunus.jobs.prune import PruneConfig
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan
from prunus.train.trainer import evaluate

NAME = "surgery_speedup"
# VGG-16 at half width (32..256 channels): at width 0.25 (16..128) the pruned layers are so thin that
# oneDNN's kernels lose efficiency almost as fast as MACs fall: 2x fewer MACs gave 1.37x deployed b64 there, 1.87x
# at width 0.5 and 2.02x at width 1.0 (width_speedup.py, round_to 16 at widths 0.5 and 1.0)
MODELS = {"vgg16": {"width": 0.5}, "resnet20": {}}
# (method epochs, masked retraining epochs, batches between SLR rounds) per model. SLR rounds every 100 batches
# (4-5 per epoch) rather than once per epoch: with 3 rounds SLR hard-pruned VGG-16 at 2x to 69.85% (seed 0), and
# slr_tuning.py found rounds every 100 batches best. With 1 + 1 epochs ResNet-20 ended 2.5-4 pt below dense at 2x
# (L1 89.83%, SLR 88.35%; dense 92.33%, seed 0), so it gets VGG-16's 3 + 1 (~2 min per epoch on the 2-core machine)
BUDGETS = {"vgg16": (3, 1, 100), "resnet20": (3, 1, 100)}
METHODS = {"slr": ("slr", {}), "l1": ("magnitude", {"norm": "l1"})}
TARGETS = (2.0, 4.0)
PROBE = torch.zeros(1, 1, 32, 32)
# Each layer keeps a multiple of ROUND_TO filters: AVX-512 holds 16 fp32 channels and oneDNN blocks channels by 16
# here (width_speedup.py, VGG-16 w0.5 at 2x fewer MACs: 1.64x deployed b64 with multiples of 8, 1.87x with 16).
# ResNet-20's first stage has 16 channels, coupled through its residual adds: with multiples of 16 it cannot be
# pruned at all, and the bisection stopped at 2.15x fewer MACs for a 4x target (ratio 0.99), so multiples of 8.
ROUND_TO = {"vgg16": 16, "resnet20": 8}
# The dense models are structured_retrain_free.py's (its dense_checkpoint: 10 epochs, SGD, cosine, channels-last;
# VGG-16 in bf16 autocast, the committed pins), trained once for both tables; every training of a model's rows runs
# in that model's precision (PRECISION) and channels-last, as there. The same models, pruned to the same multiples:
assert MODELS == RETRAIN_FREE_MODELS and ROUND_TO == ROUND_TO_SHARED
PLAN_OPTIONS = {"skip_first": False}
# Masked retraining starts a fresh Adam after the pruning phase's cosine has brought the lr to ~0: at lr 1e-3 it
# undid converged weights (L1, VGG-16 w0.5, 2x: 93.07% after the masked epochs, 91.20% after one retraining epoch
# at 1e-3, cosine; w0.25 4x at a constant 1e-3: 91.10 -> 89.33), so it starts ten times lower and decays (cosine)
RETRAIN_LR, RETRAIN_SCHEDULE = 1e-4, "cosine"
# How the filters to remove are spread over the layers, at the same MAC target:
#   uniform  one ratio everywhere
#   early    the layers at the two highest output resolutions keep EARLY_KEEP of their filters, the others one
#            ratio found by bisection. Those layers cost few MACs per channel but the most activation traffic
#            (BN, ReLU, pooling, memory), which MACs do not count and a CPU pays for.
#   latency  widths per coupled group by measured latency (prunus.deploy.allocation), for the same MAC target
ALLOCATIONS = ("uniform", "early", "latency")
SEARCH = {"batch_size": 64, "repeats": 10, "min_keep": 0.25}  # latency_aware_plan's settings (deployed form)
# early gave no speed over uniform at equal MACs (this table in commit b8bbaa9, width 0.25, 2x: eager b64 1.47-1.51x
# against 1.51-1.52x, deployed 1.28-1.32x against 1.27-1.33x)
DEFAULT_ALLOCATIONS = ("uniform",)
EARLY_KEEP = 0.5
REPEATS = 100  # timed forward passes per model and batch size (interleaved), after 5 warm-ups


def timings(dense, small) -> dict[str, float]:
    """Latency of the dense and the small model, eager and deployed, at batch 1 and 64 (ms, medians), and whether
    every thread flushed denormals while timing."""
    out, flushed = {}, []
    for mode, (d, s, probe) in {
        "eager": (dense, small, PROBE),
        "deployed": (for_inference(dense), for_inference(small), PROBE.to(memory_format=torch.channels_last)),
    }.items():
        lat = compare_latency({"dense": d, "small": s}, probe, (1, 64), repeats=REPEATS, warmup=5)
        for who in ("dense", "small"):
            for b in (1, 64):
                out[f"{mode}_{who}_b{b}_ms"] = lat[who][b].median_ms
                flushed.append(lat[who][b].denormals_flushed)
    return {**out, "denormals_flushed": all(flushed)}


def shrink(run_dir) -> dict:
    """Surgery on the retrained model: its size, and the check that it gives the masked model's outputs."""
    model, _ = load_model(run_dir / "retrain")
    report = remove_pruned_channels(model, PROBE)
    return {"params_after": report.params_after, "macs_after": report.macs_after, "max_abs_diff": report.max_abs_diff,
            "channels_removed": report.removed, "channels_blocked": report.blocked}


def high_resolution_layers(model) -> set[str]:
    """Conv2d weights whose outputs have one of the two largest spatial sizes (for PROBE)."""
    sizes: dict[str, int] = {}
    hooks = [mod.register_forward_hook(lambda _m, _i, out, n=name: sizes.__setitem__(f"{n}.weight", out.shape[-1]))
             for name, mod in model.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(PROBE)
    finally:
        for h in hooks:
            h.remove()
    top = sorted(set(sizes.values()), reverse=True)[:2]
    return {n for n, size in sizes.items() if size in top}


def plan_for(model, allocation: str, ratio: float, round_to: int) -> Plan:
    """The filter plan of one allocation; ``ratio`` is the uniform ratio (for 'early': that of the other layers)."""
    options = {**PLAN_OPTIONS, "round_to": round_to}
    uniform = Plan.uniform(model, ratio, "filter", **options)
    if allocation == "uniform":
        return uniform
    early = high_resolution_layers(model)
    halved = Plan.uniform(model, 1.0 - EARLY_KEEP, "filter", **options)
    rules = [r for r in halved.rules if r.pattern in early] + [r for r in uniform.rules if r.pattern not in early]
    return Plan(rules, source=f"early-heavy filter plan (keep {EARLY_KEEP:g} early, {ratio:.4f} elsewhere)")


def ratio_for(model, allocation: str, target: float, round_to: int) -> float:
    """The smallest ratio (to 0.0001) whose plan gives ``target`` times fewer MACs after surgery."""
    return plan_for_macs(model, PROBE, target, lambda ratio: plan_for(model, allocation, ratio, round_to))[1]


def search_widths(model, target: float, round_to: int) -> dict:
    """The latency allocation's widths for ``target`` times fewer MACs, and how the search went."""
    t0 = time.perf_counter()
    found = latency_aware_plan(model, PROBE, target, round_to=round_to, **SEARCH,
                               log=lambda s: print(f"  search: {s.group} -> {s.kept} ({s.latency_ms:.2f} ms)",
                                                   flush=True))
    seconds = time.perf_counter() - t0
    # the same shapes timed as the table times them, beside the uniform allocation at the same target
    uniform = pruned_copy(model, plan_for(model, "uniform", ratio_for(model, "uniform", target, round_to), round_to),
                          PROBE)
    small = shrink_to_widths(model, PROBE, found.kept)
    models = {"dense": model, "uniform": uniform, "latency": small}
    deployed = {k: for_inference(m) for k, m in models.items()}
    lat = compare_latency(deployed, PROBE.to(memory_format=torch.channels_last), (1, 64), repeats=REPEATS, warmup=5)
    shapes = {k: {"macs": count_macs(m, PROBE).dense, **{f"deployed_b{b}_ms": lat[k][b].median_ms for b in (1, 64)}}
              for k, m in models.items()}
    return {"widths": found.kept, "channels": found.channels, "fewer_macs": found.fewer_macs,
            "steps": len(found.steps), "seconds": seconds, **SEARCH, "untrained_shapes": shapes}


def row_plan(model, allocation: str, ratio: float | None, round_to: int, widths: dict | None) -> Plan:
    """A row's plan: by widths for the latency allocation, else by its ratio."""
    if allocation == "latency":
        return plan_from_widths(model, PROBE, widths)
    return plan_for(model, allocation, ratio, round_to)


def rebuild_small(dense_model, allocation: str, ratio: float | None, round_to: int, params_after: int,
                  widths: dict | None = None):
    """The small model's architecture, rebuilt from the plan for the timing pass.

    Size and speed depend only on the tensors' shapes, and those only on the plan (ratios with
    rounded kept counts, or widths), not on the trained weights: prune the dense model with the same
    plan and remove the channels; the parameter count must match the trained run's.
    """
    if allocation == "latency":
        small = shrink_to_widths(dense_model, PROBE, widths)
    else:
        small = pruned_copy(dense_model, plan_for(dense_model, allocation, ratio, round_to), PROBE)
    if sum(p.numel() for p in small.parameters()) != params_after:
        raise RuntimeError(f"rebuilt model has a different shape than the recorded one ({params_after:,} parameters)")
    return small


def retime(name: str, dense_model, data: dict) -> None:
    """Time every row of ``name`` against the dense model in one pass, after all training (a quiet machine)."""
    for r in data["runs"]:
        if r["model"] == name:
            small = rebuild_small(dense_model, r.get("allocation", "uniform"), r["ratio"], data["round_to"][name],
                                  r["params_after"], r.get("widths"))
            r["weights_bytes_after"] = weights_bytes(small)
            r.update(timings(dense_model, small))
            print(f"{name} {r['target']:g}x {r.get('allocation', 'uniform')} {r['variant']}: eager b64 "
                  f"{r['eager_dense_b64_ms'] / r['eager_small_b64_ms']:.2f}x, deployed b64 "
                  f"{r['deployed_dense_b64_ms'] / r['deployed_small_b64_ms']:.2f}x", flush=True)


def keep_earlier_pass(data: dict, names: list[str], always: bool = False) -> None:
    """Before re-timing on another CPU (or, ``always``, before the rows are trained again), keep the last pass's
    batch-64 figures: speed-ups are per machine."""
    timing = data.get("timing")
    if not timing or (not always and timing["environment"]["cpu"] == environment_info()["cpu"]):
        return
    keys = [f"{mode}_{who}_b64_ms" for mode in ("eager", "deployed") for who in ("dense", "small")]
    rows = [{**{k: r[k] for k in ("model", "target", "variant")}, "allocation": r.get("allocation", "uniform"),
             **{k: r[k] for k in keys}} for r in data["runs"] if r["model"] in names and keys[0] in r]
    data.setdefault("earlier_timings", []).append({**timing, "rows": rows})


def start_or_continue(path: Path, cont: bool) -> dict:
    """The results to add rows to: ``path``'s with ``cont``; otherwise new ones that keep what depends on the
    shapes alone, not on the dense weights (the latency searches, and the last timing pass as an earlier one),
    when ``path`` was made with the same bisection (``round_to``), so the same shapes."""
    if cont and path.exists():
        return json.loads(path.read_text())
    data = {"benchmark": NAME, "dense_epochs": DENSE_EPOCHS, "precision": PRECISION,
            "threads": torch.get_num_threads(), "environment": environment_info(), "dense": {}, "runs": []}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("round_to") == ROUND_TO:
            keep_earlier_pass(old, list(MODELS), always=True)
            data.update({k: old[k] for k in ("searches", "earlier_timings") if k in old})
    return data


def summarize(data: dict) -> str:
    env = data["environment"]
    allocations = sorted({r.get("allocation", "uniform") for r in data["runs"]}, key=ALLOCATIONS.index)
    timing = data.get("timing", {})
    timed = timing.get("environment", env)
    early = (f"; *early*: the convs at the two highest output resolutions keep {EARLY_KEEP:g} of their filters and "
             "the others one ratio (they cost few MACs but the most "
             "activation traffic)") if "early" in allocations else ""
    searches = data.get("searches", {})
    latency = ("; *latency*: the widths per coupled group that `prunus.deploy.allocation.latency_aware_plan` found by "
               f"measured deployed batch-{SEARCH['batch_size']} latency (greedy: each step removes one multiple from "
               "the group that saves the most time per MAC, until the MAC target; every group keeps at least "
               f"{SEARCH['min_keep']:g} of its filters), searched on the untrained architecture before training ("
               + "; ".join(f"{k}: {v['steps']} steps, {v['seconds']:.0f} s, on {v['environment']['cpu']}"
                           for k, v in searches.items()) + ")") if "latency" in allocations else ""
    widths = ", ".join(f"{m} {', '.join(f'{k} {v:g}' for k, v in o.items())}" for m, o in MODELS.items() if o)
    lines = [
        f"## Filter pruning that makes models faster: surgery and CPU latency (`benchmarks/{NAME}.py`)",
        "",
        f"Fashion-MNIST padded to 32x32 ({widths}); dense models trained {data['dense_epochs']} epochs (SGD, cosine"
        + (", structured_retrain_free.py's dense files; every training in "
           + ", ".join(f"{p} ({m})" for m, p in data["precision"].items()) + " forward precision, channels-last"
           if "precision" in data else "") + "). "
        "Filter pruning of every Conv2d/Linear but the classifier (the first conv included), each layer keeping a "
        f"multiple of {' / '.join(f'{v} ({m})' for m, v in data['round_to'].items())} filters (an AVX-512 register "
        "holds 16 fp32 values, an AVX2 one 8; ResNet-20's first stage has only 16). Allocation *uniform*: one "
        f"ratio everywhere{early}, chosen by bisection so that the MACs of the physically smaller "
        f"model fall at least 2x or 4x{latency}. Budget E + R (the "
        "'budget' column): slr = E SLR epochs (a round every 100 "
        "batches) + hard-prune (per coupled group) + R masked epochs; l1 = L1-norm filter pruning at the start + "
        f"E + R masked epochs; the R retraining epochs start at lr {data.get('retrain_lr', 1e-3):g} (Adam) and decay "
        f"({data.get('retrain_schedule', 'constant')}). Then surgery "
        "(outputs checked equal to the masked model's) and latency of the dense and the small model in the same "
        f"process, their runs interleaved: median of {timing.get('repeats', REPEATS)} forward passes after "
        f"{timing.get('warmup', 5)} warm-ups, inference mode, in one pass after all training, on models rebuilt from "
        "each row's plan (speed depends on the shapes, not the trained values; the parameter count is checked). "
        + ("The allocator is held in its steady state (`prunus.deploy.latency.steady_allocator`: "
           "freed activation buffers "
           "stay in the process), so no forward page-faults on fresh buffers; without it the same model's time "
           "depended on what the process had allocated before. "
           if timing.get("steady_allocator") else
           "The timing process has already evaluated the dense model on the test set (batches of 1000): these are "
           "the warmed figures; a fresh process page-faults on new activation buffers and gives other ratios. ")
        + "*eager*: the PyTorch modules as trained; *deployed*: both models with "
        "BatchNorm folded into the convolutions and channels-last layout (`prunus.deploy.latency.for_inference`). "
        f"{timing.get('threads', data['threads'])} threads"
        + {True: ", denormals flushed to zero on every thread (random weights make them; the timing process sets "
                 "it before anything else)", False: ", denormals NOT flushed on every thread"}.get(
            timing.get("denormals_flushed"), "")
        + ". MACs = Conv2d/Linear multiply-accumulates per image; "
        "file bytes = the checkpoint's model.safetensors. *dense acc %*: the dense model the row was pruned from"
        + (", measured in the row's own run" if all("dense_accuracy" in r for r in data["runs"]) else
           ", measured in the row's own run (rows from before that was kept: the model's dense accuracy as the script "
           "first evaluated it)")
        + "; " + "; ".join(f"{m}: {dense_hash_note(d.get('sha256'))}" for m, d in data["dense"].items())
        + ". One seed (0). Timing machine: "
        f"{timed['cpu']}, {timed['cpu_count']} cores, torch {timed['torch']}"
        + (f" (training ran on {env['cpu']})." if timed["cpu"] != env["cpu"] else ".")
        + other_machines_note(data),
        "",
        "| model | dense acc % | target | allocation | method | budget | MACs (fewer) "
        "| params (fewer) | file bytes (smaller) | hard-pruned % | final % | Δ vs dense "
        "| eager b1 ms (speedup) | eager b64 ms (speedup) | deployed b1 ms (speedup) | deployed b64 ms (speedup) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r, mode, b):
        if f"{mode}_small_b{b}_ms" not in r:  # trained, not timed yet: the timing pass runs after all training
            return "not timed yet"
        small, dense = r[f"{mode}_small_b{b}_ms"], r[f"{mode}_dense_b{b}_ms"]
        return f"{small:.2f} ({dense / small:.2f}x)"

    order = {(m, t, a): i
             for i, (m, a, t) in enumerate((m, a, t) for m in MODELS for a in ALLOCATIONS for t in TARGETS)}
    for r in sorted(data["runs"], key=lambda r: (order[r["model"], r["target"], r.get("allocation", "uniform")],
                                                  list(METHODS).index(r["variant"]))):
        d = data["dense"][r["model"]]
        dense_accuracy = r.get("dense_accuracy", d["accuracy"])  # the dense model this row was pruned from
        final = r["retrain_accuracy"][-1]
        e, rt = r.get("budget") or BUDGETS[r["model"]][:2]  # rows written before the budget was recorded
        size = (f"{r['weights_bytes_after']:,} ({d['weights_bytes'] / r['weights_bytes_after']:.2f}x)"
                if "weights_bytes_after" in r else "not timed yet")  # the timing pass writes the small file
        lines.append(
            f"| {r['model']} | {dense_accuracy:.2f} | {r['target']:g}x "
            f"| {r.get('allocation', 'uniform')} | {r['variant']} | "
            f"{e} + {rt} | "
            f"{r['macs_after']:,} ({d['macs'] / r['macs_after']:.2f}x) | {r['params_after']:,} "
            f"({d['params'] / r['params_after']:.2f}x) | {size} | {r['hard_pruned_accuracy']:.2f} | {final:.2f} | "
            f"{final - dense_accuracy:+.2f} | {cell(r, 'eager', 1)} | {cell(r, 'eager', 64)} | "
            f"{cell(r, 'deployed', 1)} | {cell(r, 'deployed', 64)} |"
        )
    for key, v in searches.items():
        sh = v["untrained_shapes"]
        ratio = {k: sh["dense"]["deployed_b64_ms"] / sh[k]["deployed_b64_ms"] for k in ("uniform", "latency")}
        lines += ["", f"Latency allocation search, {key} (untrained shapes, deployed batch 64, median of "
                  f"{REPEATS}, timed on {v['environment']['cpu']}; not trained yet): dense "
                  f"{sh['dense']['deployed_b64_ms']:.2f} ms; uniform "
                  f"{sh['dense']['macs'] / sh['uniform']['macs']:.2f}x "
                  f"fewer MACs, {ratio['uniform']:.2f}x faster; latency-searched "
                  f"{sh['dense']['macs'] / sh['latency']['macs']:.2f}x fewer MACs, {ratio['latency']:.2f}x faster "
                  f"({v['steps']} steps, {v['seconds']:.0f} s). Widths: "
                  + ", ".join(f"{g} {k}/{v['channels'][g]}" for g, k in v["widths"].items() if k < v["channels"][g])
                  + "."]
    for earlier in data.get("earlier_timings", []):
        cpu = earlier["environment"]["cpu"]
        note = ("" if "(" in cpu else
                " (before the vector extension was recorded: the AVX-512 machine of the first runs)")
        lines += ["", f"An earlier timing pass of these shapes on {cpu}{note}, {earlier['threads']} threads, batch 64, "
                  "speed-up over dense (eager / deployed): "
                  + "; ".join(f"{r['model']} {r['target']:g}x {r['allocation']} {r['variant']} "
                              f"{r['eager_dense_b64_ms'] / r['eager_small_b64_ms']:.2f}x / "
                              f"{r['deployed_dense_b64_ms'] / r['deployed_small_b64_ms']:.2f}x"
                              for r in earlier["rows"]) + "."]
    missing = [m for m in MODELS if not any(r["model"] == m for r in data["runs"])]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    untimed = sum("eager_small_b64_ms" not in r for r in data["runs"])
    if untimed:
        note = (f"{untimed} of {len(data['runs'])} rows not timed yet: the timing pass (`--retime-only`, a quiet "
                "machine) runs once every row is trained.")
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--allocations", nargs="+", default=list(DEFAULT_ALLOCATIONS), choices=list(ALLOCATIONS))
    ap.add_argument("--retime-only", action="store_true",
                    help="no training: re-time the rows in the JSON (run on a quiet machine)")
    ap.add_argument("--plans-only", action="store_true",
                    help="only run the latency allocation's searches and record them (run on a quiet machine)")
    add_results_flags(ap)
    args = ap.parse_args()
    if args.retime_only or args.plans_only:  # a timing process: before any parallel operation starts the workers
        flush_denormals_for_timing()
    args.cont |= args.retime_only | args.plans_only
    path = RESULTS / f"{NAME}.json"
    if render_only(args, NAME, summarize):
        return
    data = start_or_continue(path, args.cont)
    # the plan and retraining constants every row is made with (rebuild_small checks the plan's shapes again)
    if isinstance(data.setdefault("round_to", {}), int):  # files from before round_to was per model: all vgg16
        data["round_to"] = {m: data["round_to"] for m in {r["model"] for r in data["runs"]}}
    data.setdefault("retrain_schedule", RETRAIN_SCHEDULE)
    data.setdefault("retrain_lr", RETRAIN_LR)
    if (data["retrain_schedule"], data["retrain_lr"]) != (RETRAIN_SCHEDULE, RETRAIN_LR):
        raise SystemExit(f"{path} was made with {data['retrain_schedule']} retraining at lr {data['retrain_lr']:g}; "
                         "run without --continue")
    for name in args.models:
        if data["round_to"].setdefault(name, ROUND_TO[name]) != ROUND_TO[name]:
            raise SystemExit(f"{path}: its {name} rows keep multiples of {data['round_to'][name]} filters, this script "
                             f"{ROUND_TO[name]}; run without --continue")
    done = {(r["model"], r["target"], r.get("allocation", "uniform"), r["variant"]) for r in data["runs"]}
    # latency searches first, on the untrained architecture (only shapes matter), while the machine is quiet
    searches = data.setdefault("searches", {})
    if "latency" in args.allocations and not args.retime_only:
        for name in args.models:
            for target in args.targets:
                key = f"{name} {target:g}x"
                if key not in searches:
                    if not args.plans_only:  # the search times models: a process of its own, denormals flushed
                        raise SystemExit(f"{path} has no latency search for {key}; run --plans-only first")
                    print(f"{key}: latency allocation search", flush=True)
                    torch.manual_seed(0)
                    searches[key] = search_widths(build_model(name, in_channels=1, num_classes=10, **MODELS[name]),
                                                  target, ROUND_TO[name])
                    searches[key]["environment"] = environment_info()
                    path.write_text(json.dumps(data, indent=1) + "\n")
    if args.plans_only:
        return
    from prunus.data import load_dataset

    test_set = load_dataset("fashion-mnist", "test", image_size=32)
    if args.retime_only:
        keep_earlier_pass(data, args.models)
    for name in args.models:
        if args.retime_only:  # timing needs only the architecture: no dense training on a fresh machine
            if name not in data["dense"]:
                raise SystemExit(f"{path} has no {name} rows to re-time; run without --retime-only")
            torch.manual_seed(0)
            model = build_model(name, in_channels=1, num_classes=10, **MODELS[name])
            accuracy, dense_file = data["dense"][name]["accuracy"], {}
        else:
            init = dense_checkpoint(name)
            digest = dense_sha256(init)
            check_same_dense(data, digest, path, model=name)
            model, _ = load_model(init)
            accuracy = evaluate(model, test_set)["accuracy"]
            dense_file = {"checkpoint": str(init.relative_to(HERE)), "sha256": digest}
        # the rows already there were pruned from this dense file (checked above); its accuracy as first measured
        data["dense"][name] = {**data["dense"].get(name, {}), **dense_file,
                               "accuracy": data["dense"].get(name, {}).get("accuracy", accuracy),
                               "macs": count_macs(model, PROBE).dense,
                               "params": sum(p.numel() for p in model.parameters()),
                               "weights_bytes": weights_bytes(model)}
        for target, allocation in [(t, a) for a in args.allocations for t in args.targets]:
            if args.retime_only:
                break
            if all((name, target, allocation, v) in done for v in METHODS):
                continue
            widths = searches[f"{name} {target:g}x"]["widths"] if allocation == "latency" else None
            ratio = None if widths else ratio_for(model, allocation, target, ROUND_TO[name])
            plan = row_plan(model, allocation, ratio, ROUND_TO[name], widths)
            for variant, (method, options) in METHODS.items():
                if (name, target, allocation, variant) in done:
                    continue
                epochs, retrain, every = BUDGETS[name]
                config = PruneConfig(method=method, epochs=epochs, retrain_epochs=retrain, seed=0, options=options,
                                     retrain_lr=RETRAIN_LR, retrain_schedule=RETRAIN_SCHEDULE,
                                     precision=PRECISION[name], channels_last=True,
                                     update_every=every if method == "slr" else None)
                run = prune_run(init, plan, config, inspect=shrink, model=name, target=target, ratio=ratio,
                                variant=variant, allocation=allocation, budget=[epochs, retrain],
                                **({"widths": widths} if widths else {}))
                add_row(data, run)
                print(json.dumps(run), flush=True)
                path.write_text(json.dumps(data, indent=1) + "\n")  # the table comes after the timing pass
        if args.retime_only:
            retime(name, model, data)
            data["timing"] = {"repeats": REPEATS, "warmup": 5, "threads": torch.get_num_threads(),
                              "steady_allocator": True, "environment": environment_info(),
                              "denormals_flushed": all(r.get("denormals_flushed", False) for r in data["runs"]
                                                       if r["model"] == name)}
            write_result(NAME, data, summarize(data))
    if not args.retime_only:
        path.write_text(json.dumps(data, indent=1) + "\n")
        # the timing pass in a process of its own (it flushes denormals on every thread), once rows wait for it:
        # a --continue with every row timed does not time them again (--retime-only does, on purpose)
        if any("eager_small_b64_ms" not in r for r in data["runs"] if r["model"] in args.models):
            subprocess.run([sys.executable, __file__, "--retime-only", "--models", *args.models], check=True)


if __name__ == "__main__":
    main()
