"""Retrain-free filter pruning on real CNNs: SLR vs ADMM vs reweighted vs L1 vs Torch-Pruning's pruners (issue 18).

ResNet-20 and VGG-16 (width 0.5) on Fashion-MNIST padded to 32x32. One dense model per
architecture (``DENSE_EPOCHS`` epochs of SGD, cosine; its file hash is recorded). At 2x and
4x fewer MACs, one uniform filter ratio for every Conv2d/Linear but the classifier (the first
conv included), each layer keeping a multiple of ``ROUND_TO`` filters, found by bisection on
the physically smaller model's MACs (``prunus.deploy.allocation.uniform_filter_plan_for_macs``).

Every method gets the same budget, E method epochs + R retraining epochs, with the same
optimizers: phase 1 Adam lr 1e-3 (cosine), phase 2 Adam from lr 1e-4 (cosine), batch 128, and
the same forward precision (``PRECISION``: VGG-16's rows, its dense model's too, in bf16 autocast).

  slr, admm    prunus' defaults (no option set here): a round every 100 batches, rho grows by
               the budget, penalty on the removed entries, channel sets with their BatchNorms
  reweighted   prunus' defaults (lam from 1e-2, grown by the budget like rho; a round every 100 batches)
  l1           L1-norm filter pruning (Li et al. 2017) at the start, E masked epochs
  tp-l1        Torch-Pruning MetaPruner, GroupMagnitudeImportance(p=1), pruned at the start, E epochs
  tp-groupnorm Torch-Pruning GroupNormPruner (reg 5e-4, its CIFAR benchmark setting): E epochs of its
               regularizer (``pruner.regularize`` between backward and step), then ``pruner.step()``
  tp-growingreg Torch-Pruning GrowingRegPruner (reg 1e-4, delta_reg 1e-4, update_reg every 10 batches)

Columns: the accuracy at the end of phase 1 right after the hard-prune (``hard_pruned``;
for the one-shot methods the pruned model after E epochs), the same with BatchNorm statistics
re-estimated on 200 training batches (no gradient step; its own column, not retraining), after
1 and R retraining epochs; MACs and parameters of the physically pruned model; deployed
batch-64 latency from a separate timing pass (``--time``: dense and every distinct pruned
shape in one process, interleaved).

    python benchmarks/structured_retrain_free.py [--models resnet20 vgg16] [--targets 2 4]
        [--methods ...] [--seeds 0 1 2] [--continue] [--time] [--render]
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
import torch.nn as nn
from common import (
    HERE,
    RESULTS,
    add_row,
    check_same_dense,
    dense_hash_note,
    dense_sha256,
    mean_std,
    other_machines_note,
    prune_run,
    train_cached,
    write_result,
)
from rich.console import Console

from prunus.constraints.structures import num_pruned
from prunus.data import load_dataset
from prunus.deploy.allocation import uniform_filter_plan_for_macs
from prunus.deploy.latency import compare_latency, for_inference
from prunus.deploy.surgery import remove_pruned_channels
from prunus.environment import environment_info
from prunus.harden.batchnorm import recalibrate_batchnorm
from prunus.harden.stats import count_macs
from prunus.hooks import TrainingHook
from prunus.jobs.prune import PruneConfig
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.models.shapes import apply_layer_shapes, layer_shapes
from prunus.plan.recipe import Plan
from prunus.train.config import TrainConfig
from prunus.train.trainer import Trainer, evaluate

NAME = "structured_retrain_free"
MODELS = {"resnet20": {}, "vgg16": {"width": 0.5}}
#: the forward pass of every training of a model's rows, its dense model's included (TrainConfig.precision): VGG-16's
#: in bf16 autocast, which halves a full-precision CNN's step on an AVX-512 BF16 CPU (bcnn_training_speed.py: 2.0x
#: and 2.4x for the fp ResNet-18 and NIN); weights, the methods' state, BatchNorm re-estimation and evaluation stay
#: float32. ResNet-20's rows were run in float32 before that
PRECISION = {"resnet20": "fp32", "vgg16": "bf16"}
ROUND_TO = {"resnet20": 8, "vgg16": 16}  # as surgery_speedup.py: AVX-512 blocks of 16; ResNet-20's first stage has 16
DENSE_EPOCHS = 10
TARGETS = (2.0, 4.0)
E, R = 3, 3
LR, RETRAIN_LR = 1e-3, 1e-4
BN_BATCHES = 200
PROBE = torch.zeros(1, 1, 32, 32)
PRUNUS_METHODS = {"slr": ("slr", {}), "admm": ("admm", {}), "reweighted": ("reweighted", {}),
                  "l1": ("magnitude", {"norm": "l1"})}
TP_METHODS = {"tp-l1": {}, "tp-groupnorm": {"reg": 5e-4}, "tp-growingreg": {"reg": 1e-4, "delta_reg": 1e-4}}
METHODS = (*PRUNUS_METHODS, *TP_METHODS)
UPDATE_REG_EVERY = 10


# -- the dense models ------------------------------------------------------------------------------------------------
def dense_checkpoint(name: str) -> Path:
    """The dense model every row of ``name`` starts from (trained once, resumable)."""
    tag = "".join(f"-{k[0]}{v:g}" for k, v in sorted(MODELS[name].items()))
    tag += "" if PRECISION[name] == "fp32" else f"-{PRECISION[name]}"
    path = HERE / ".cache" / f"dense-{name}{tag}-e{DENSE_EPOCHS}-32"
    return train_cached(TrainConfig(model=name, dataset="fashion-mnist", epochs=DENSE_EPOCHS, image_size=32,
                                    augment=False, model_options=MODELS[name], channels_last=True,
                                    precision=PRECISION[name]), path)


def small_model_stats(small: nn.Module) -> dict:
    return {"macs": count_macs(small, PROBE).dense, "params": sum(p.numel() for p in small.parameters()),
            "layers": layer_shapes(small)}


# -- prunus' methods -------------------------------------------------------------------------------------------------
def prunus_row(init: Path, plan, method: str, seed: int, precision: str) -> dict:
    name, options = PRUNUS_METHODS[method]
    config = PruneConfig(method=name, epochs=E, retrain_epochs=R, lr=LR, retrain_lr=RETRAIN_LR,
                         retrain_schedule="cosine", precision=precision,
                         seed=seed, bn_recalibrate=BN_BATCHES, channels_last=True, options=options,
                         update_every=100 if name in ("slr", "admm") else None)

    def inspect(run_dir: Path) -> dict:
        model, _ = load_model(run_dir / "retrain")
        report = remove_pruned_channels(model, PROBE)
        results = json.loads((run_dir / "results.json").read_text())
        return {**small_model_stats(report.model), "blocked_channels": report.blocked,
                "bn_recalibrated": results["bn_recalibrated_accuracy"],
                "pruned_at_start": results.get("pruned_at_start_accuracy"),
                "distance_history": [h["distance"] for h in results["method_history"] if "distance" in h],
                "rho_history": [h["rho"] for h in results["method_history"] if "rho" in h]}

    run = prune_run(init, plan, config, inspect=inspect)
    run["config"] = {"update_every": config.update_every, "rho_schedule": config.rho_schedule, "options": options}
    return run


# -- Torch-Pruning's pruners, through its public API ---------------------------------------------------------------
class Regularizer(TrainingHook):
    """Calls a Torch-Pruning pruner's ``regularize`` between backward and step (and GrowingReg's ``update_reg``)."""

    def __init__(self, pruner, model: nn.Module, update_every: int | None = None):
        self.pruner, self.model, self.update_every, self.steps = pruner, model, update_every, 0

    def before_optimizer_step(self) -> None:
        self.pruner.regularize(self.model)

    def after_optimizer_step(self) -> None:
        self.steps += 1
        if self.update_every and self.steps % self.update_every == 0:
            self.pruner.update_reg()


def tp_ratios(model: nn.Module, plan: Plan) -> dict[nn.Module, float]:
    """Torch-Pruning's per-layer ratios that keep exactly the filters the prunus plan keeps (equal MACs).

    Torch-Pruning keeps ``int(channels * (1 - ratio))``; half a channel more than the kept count
    makes that floor land on it.
    """
    ratios = {}
    for t in plan.resolve(model):
        module = model.get_submodule(t.name.removesuffix(".weight"))
        channels = module.weight.shape[0]
        kept = channels - num_pruned(t.ratio, channels)
        ratios[module] = 1.0 - (kept + 0.5) / channels
    return ratios


def tp_pruner(method: str, model: nn.Module, plan: Plan):
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    common = {"example_inputs": PROBE, "pruning_ratio_dict": tp_ratios(model, plan), "ignored_layers": [classifier]}
    if method == "tp-l1":
        return tp.pruner.MetaPruner(model, importance=tp.importance.GroupMagnitudeImportance(p=1), **common)
    if method == "tp-groupnorm":
        return tp.pruner.GroupNormPruner(model, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                         **TP_METHODS[method], **common)
    return tp.pruner.GrowingRegPruner(model, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      **TP_METHODS[method], **common)


def tp_row(init: Path, plan: Plan, method: str, seed: int, train_set, test_set, precision: str) -> dict:
    t0 = time.perf_counter()
    model, _ = load_model(init)
    dense = evaluate(model, test_set)["accuracy"]
    torch.manual_seed(seed)
    pruner = tp_pruner(method, model, plan)
    row: dict = {"seed": seed, "dense_accuracy": dense, "pruned_at_start": None}
    quiet = Console(file=io.StringIO())

    def fit(epochs: int, lr: float, hooks, run_dir: Path) -> list[float]:
        config = TrainConfig(epochs=epochs, optimizer="adam", lr=lr, weight_decay=0.0, schedule="cosine", seed=seed,
                             channels_last=True, precision=precision)
        return [h["test_accuracy"] for h in Trainer(model, train_set, test_set, config, run_dir, hooks=hooks,
                                                   console=quiet).fit()]

    with tempfile.TemporaryDirectory() as tmp:
        if method == "tp-l1":  # one-shot: pruned before any training, like l1
            pruner.step()
            row["pruned_at_start"] = evaluate(model, test_set)["accuracy"]
            fit(E, LR, [], Path(tmp) / "phase1")
        else:
            fit(E, LR, [Regularizer(pruner, model, UPDATE_REG_EVERY if method == "tp-growingreg" else None)],
                Path(tmp) / "phase1")
            pruner.step()
        row["prune_seconds"] = time.perf_counter() - t0
        row["hard_pruned_accuracy"] = evaluate(model, test_set)["accuracy"]
        recal = copy.deepcopy(model)
        recalibrate_batchnorm(recal, train_set, batches=BN_BATCHES, seed=seed)
        row["bn_recalibrated"] = evaluate(recal, test_set)["accuracy"]
        t1 = time.perf_counter()
        row["retrain_accuracy"] = fit(R, RETRAIN_LR, [], Path(tmp) / "phase2")
        row["retrain_seconds"] = time.perf_counter() - t1
    row.update(small_model_stats(model))
    row["total_seconds"] = time.perf_counter() - t0
    return row


# -- the timing pass -------------------------------------------------------------------------------------------------
def time_rows(data: dict, names: list[str]) -> None:
    """Deployed batch-64 latency of the dense model and of a randomly initialised model of every distinct pruned
    shape, in one process, on one thread.

    One thread, because in a process that has trained, the timing flushes denormals (which random weights produce)
    only on the calling thread (prunus.deploy.latency): on the 2-vCPU VM these rows were trained on,
    single-thread passes agreed, while one two-thread pass in three timed the 4x shape at 4x its usual time.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _time_rows(data, names)
    finally:
        torch.set_num_threads(before)


def _time_rows(data: dict, names: list[str]) -> None:
    flushed = []
    for name in names:
        dense = build_model(name, in_channels=1, num_classes=10, **MODELS[name]).eval()
        shapes = {}
        for r in data["runs"]:
            if r["model"] == name:
                shapes.setdefault(json.dumps(r["layers"], sort_keys=True), []).append(r)
        models = {"dense": for_inference(dense)}
        for i, key in enumerate(shapes):
            small = apply_layer_shapes(build_model(name, in_channels=1, num_classes=10, **MODELS[name]),
                                       json.loads(key))
            models[f"s{i}"] = for_inference(small.eval())
        lat = compare_latency(models, PROBE.to(memory_format=torch.channels_last), (64,), repeats=50, warmup=5)
        data["dense"][name]["deployed_b64_ms"] = lat["dense"][64].median_ms
        for i, rows in enumerate(shapes.values()):
            for r in rows:
                r["deployed_b64_ms"] = lat[f"s{i}"][64].median_ms
        flushed += [v[64].denormals_flushed for v in lat.values()]
    data["timing"] = {"environment": environment_info(), "repeats": 50, "batch": 64,
                      "denormals_flushed": bool(flushed) and all(flushed)}


# -- the table -------------------------------------------------------------------------------------------------------
def timing_sentence(data: dict) -> str:
    """What the latency column measured, and where (the timing pass may run on another machine than the rows)."""
    t = data.get("timing")
    if not t:
        return ""
    env = t["environment"]
    flushed = ", denormals flushed to zero" if t.get("denormals_flushed") else ""
    return (f" *Deployed b64 ms*: median of {t['repeats']} forward passes of a batch of {t['batch']} through a "
            "randomly initialised model of the pruned shape, physically pruned (prunus.deploy.latency.for_inference, "
            "channels-last), the dense model and every pruned shape interleaved in one process (`--time`)"
            f"{flushed}, on {env['cpu']}, "
            f"{env['torch_threads']} thread{'s' if env['torch_threads'] > 1 else ''}; "
            "the speed-up is the dense model's time over the pruned one's.")


def precision_note(precision: str) -> str:
    return "float32" if precision == "fp32" else f"{precision} autocast (weights, methods' state, evaluation float32)"


def summarize(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"## Retrain-free filter pruning: SLR, ADMM, reweighted, L1 and Torch-Pruning (`benchmarks/{NAME}.py`)",
        "",
        f"Fashion-MNIST padded to 32x32. One dense model per architecture ({DENSE_EPOCHS} epochs SGD lr 0.05, cosine, "
        "no augmentation; every row compared with the dense file it was pruned from: "
        + "; ".join(f"{m} {dense_hash_note(d.get('sha256'))}" for m, d in data["dense"].items())
        + "). Uniform filter ratio for every Conv2d/Linear but the "
        "classifier (first conv included), multiples of "
        + " / ".join(f"{v} ({m})" for m, v in data["round_to"].items())
        + " filters, bisected to 2x / 4x fewer MACs of the physically pruned model. Budget for every method: "
        f"E = {E} method epochs (Adam lr {LR:g}, cosine) + R = {R} retraining epochs (Adam from lr {RETRAIN_LR:g}, "
        "cosine). slr/admm/reweighted: prunus' defaults, no option set (a round every 100 batches, the penalty "
        "(rho; reweighted's lambda) grown by the budget, the penalty on the removed entries; every method constrains "
        "each filter with its bias and BatchNorm and the convs of its residual stream); l1 / tp-l1: pruned at the "
        "start, E epochs with the mask; "
        "tp-groupnorm (reg 5e-4) / tp-growingreg (reg 1e-4, +1e-4 every 10 batches): Torch-Pruning "
        f"{data.get('torch_pruning', '')}'s regularizer for E epochs, then its `step()`. *hard-pruned*: right after "
        f"the hard-prune at the end of phase 1, no retraining; *+BN*: the same model with BatchNorm statistics "
        f"re-estimated on {BN_BATCHES} training batches (no gradient step). Mean ± std over seeds (data order; the "
        f"dense model is shared). Forward pass of every training (the dense model's too): "
        + "; ".join(f"{m} {precision_note(d.get('precision', 'fp32'))}" for m, d in data["dense"].items())
        + f". Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}."
        + other_machines_note(data)
        + timing_sentence(data),
        "",
        "| model | dense % | MACs target | method | seeds | hard-pruned % | Δ vs dense | +BN % | +1 % | +3 % "
        "| MACs (fewer) | params | deployed b64 ms (speed-up) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list] = {}
    for r in data["runs"]:
        groups.setdefault((r["model"], r["target"], r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    for (model, target, method), g in sorted(groups.items(), key=lambda kv: (list(MODELS).index(kv[0][0]), kv[0][1],
                                                                              order[kv[0][2]])):
        d = data["dense"][model]
        hard = [r["hard_pruned_accuracy"] for r in g]
        macs = statistics.mean(r["macs"] for r in g)
        lat = [r["deployed_b64_ms"] for r in g if "deployed_b64_ms" in r]
        speed = (f"{statistics.mean(lat):.2f} ({d['deployed_b64_ms'] / statistics.mean(lat):.2f}x)"
                 if lat and "deployed_b64_ms" in d else "not timed")
        lines.append(
            f"| {model} | {d['accuracy']:.2f} | {target:g}x | {method} | {len(g)} | {mean_std(hard)} | "
            f"{statistics.mean(hard) - d['accuracy']:+.2f} | {mean_std([r['bn_recalibrated'] for r in g])} | "
            f"{mean_std([r['retrain_accuracy'][0] for r in g])} | {mean_std([r['retrain_accuracy'][-1] for r in g])} | "
            f"{macs:,.0f} ({d['macs'] / macs:.2f}x) | {statistics.mean(r['params'] for r in g):,.0f} | {speed} |")
    lines += ["", "Targets (issue 18; mean over the seeds run):", ""] + verdicts(data, groups)
    return "\n".join(lines) + "\n"


def verdicts(data: dict, groups: dict) -> list[str]:
    out = []
    for model in MODELS:
        for target, bound in ((2.0, 1.0), (4.0, 2.5)):
            for method in ("slr", "admm", "reweighted"):
                g = groups.get((model, target, method))
                if not g:
                    continue
                gap = statistics.mean(r["hard_pruned_accuracy"] for r in g) - data["dense"][model]["accuracy"]
                out.append(f"- {model} {target:g}x {method}: hard-pruned {gap:+.2f} pt vs dense (target within "
                           f"{bound:g} pt) -> **{'met' if gap >= -bound else 'NOT met'}**")
            # on the seeds SLR and every Torch-Pruning row share (a seed still running would compare unlike sets)
            rivals = [m for m in TP_METHODS if (model, target, m) in groups]
            slr = groups.get((model, target, "slr"))
            seeds = set.intersection(*({r["seed"] for r in groups[(model, target, m)]} for m in ["slr", *rivals])) \
                if slr and rivals else set()
            if seeds:
                best, who = max((final_mean(groups[(model, target, m)], seeds), m) for m in rivals)
                mine = final_mean(slr, seeds)
                out.append(f"- {model} {target:g}x after R = {R}: slr {mine:.2f} vs best Torch-Pruning ({who}) "
                           f"{best:.2f} (seeds {', '.join(map(str, sorted(seeds)))}) -> "
                           f"**{'met' if mine >= best else 'NOT met'}**")
    return out


def final_mean(rows: list[dict], seeds: set[int]) -> float:
    """The mean accuracy after the last retraining epoch over the rows of ``seeds``."""
    return statistics.mean(r["retrain_accuracy"][-1] for r in rows if r["seed"] in seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--continue", dest="cont", action="store_true", help="keep the rows already in the JSON")
    ap.add_argument("--time", action="store_true", help="only the timing pass over the rows in the JSON")
    ap.add_argument("--render", action="store_true", help="only rebuild the table from the JSON")
    args = ap.parse_args()
    path = RESULTS / f"{NAME}.json"
    data = json.loads(path.read_text()) if (args.cont or args.time or args.render) and path.exists() else None
    if args.render or args.time:
        if data is None:
            raise SystemExit(f"{path} does not exist yet; run the benchmark first")
        if args.time:
            time_rows(data, [m for m in args.models if m in data["dense"]])
        return write_result(NAME, data, summarize(data))
    if data is None:
        import torch_pruning

        data = {"benchmark": NAME, "environment": environment_info(), "torch_pruning": torch_pruning.__version__,
                "budget": {"E": E, "R": R, "lr": LR, "retrain_lr": RETRAIN_LR, "bn_batches": BN_BATCHES},
                "round_to": {}, "dense": {}, "plans": {}, "runs": []}
    train_set = load_dataset("fashion-mnist", "train", image_size=32)
    test_set = load_dataset("fashion-mnist", "test", image_size=32)
    done = {(r["model"], r["target"], r["method"], r["seed"]) for r in data["runs"]}
    # seed-major: every method at seed 0 first, so a partial run already compares them all
    for seed in args.seeds:
        for name in args.models:
            init = dense_checkpoint(name)
            model, _ = load_model(init)
            digest = dense_sha256(init)
            check_same_dense(data, digest, path, model=name)
            if name not in data["dense"]:
                data["dense"][name] = {"checkpoint": str(init.relative_to(HERE)), "sha256": digest,
                                       "precision": PRECISION[name],
                                       "accuracy": evaluate(model, test_set)["accuracy"], **small_model_stats(model)}
                del data["dense"][name]["layers"]
            data["round_to"][name] = ROUND_TO[name]
            for target in args.targets:
                key = f"{name} {target:g}x"
                if key not in data["plans"]:
                    _, ratio = uniform_filter_plan_for_macs(model, PROBE, target, round_to=ROUND_TO[name])
                    data["plans"][key] = {"ratio": ratio}
                ratio = data["plans"][key]["ratio"]  # the bisection's result, the same for every seed
                plan = Plan.uniform(model, ratio, "filter", skip_first=False, round_to=ROUND_TO[name])
                for method in args.methods:
                    if (name, target, method, seed) in done:
                        continue
                    print(f"{name} {target:g}x {method} seed {seed}", flush=True)
                    if method in PRUNUS_METHODS:
                        row = prunus_row(init, plan, method, seed, PRECISION[name])
                    else:
                        row = tp_row(init, plan, method, seed, train_set, test_set, PRECISION[name])
                    row.update(model=name, target=target, method=method, ratio=ratio, epochs=[E, R],
                               precision=PRECISION[name],
                               dense=row["dense_accuracy"], hard_pruned=row["hard_pruned_accuracy"],
                               final=row["retrain_accuracy"][-1])
                    add_row(data, row)
                    print(json.dumps({k: v for k, v in row.items() if k != "layers"}), flush=True)
                    write_result(NAME, data, summarize(data))


if __name__ == "__main__":
    main()
