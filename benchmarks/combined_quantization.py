"""Pruning + quantization on LeNet-5 / Fashion-MNIST: accuracy and true size in bytes (issue 4).

For each seed and sparsity: reweighted pruning (E epochs + R masked retraining
epochs), then quantization of every Conv2d/Linear weight with the pruned zeros kept:
  slr    3 epochs of SLR whose Z-step projects onto the levels (rho 0.1), hard-quantize,
         F epochs of straight-through fine-tuning (lr 1e-4)
  none   hard-quantize the pruned model directly, then the same F fine-tuning epochs
Schemes: 4-bit symmetric fixed point and ternary, one least-squares scale per layer.
Biases are stored in 8 bits with a power-of-two step (``rest="int8"``). The size is
the byte count of the exported file (``prunus.deploy.compressed``: range-coded positions
and codes, scales, biases, header); the ratio is against the dense float32 model
(4 bytes x 61,706 parameters). Each run also records the information the positions
and codes carry (i.i.d. entropy of each bitmap, empirical entropy of each layer's
codes), to show how close the coder gets.

Sparsities (``SPARSITIES``): global unstructured 20x over conv2/fc1/fc2 (first and last
layer dense) and block:4x1 20x (4 output rows x 1 input column share a zero), both
E + R = 6 + 3 as in ``reweighted_unstructured.py``, F = 2; and the row aimed at the
target (>= 100x smaller, within 1.5 pt of dense): global unstructured 33x over all
five layers with 4-bit codes, pruned on a longer budget (E + R = 30 + 10, retraining
from lr 1e-4 with a cosine decay, F = 5 fine-tuning epochs, also cosine), and the same
pruned models fine-tuned for F = 15. Rows that differ only in quantization share the
pruned model of their seed (``cached_pruning``).

    python benchmarks/combined_quantization.py [--seeds 0 1 2] [--continue] [--render]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import shutil
import statistics
from dataclasses import dataclass

import numpy as np
from common import (
    HERE,
    add_results_flags,
    add_row,
    dense_hash_note,
    dense_sha256,
    mean_std,
    other_machines_note,
    render_only,
    resumed,
    write_result,
)
from retrain_free import dense_checkpoint
from rich.console import Console

from prunus.environment import environment_info
from prunus.jobs.prune import PruneConfig, run_pruning
from prunus.jobs.quantize import QuantizeConfig, run_quantization
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan, ratio_for_compression

NAME = "combined_quantization"
CACHE = HERE / ".cache" / NAME


@dataclass(frozen=True)
class Sparsity:
    structure: str
    global_: bool
    compression: float = 20.0
    all_layers: bool = False  # prune the first and last layer too (else they stay dense)
    schemes: tuple[str, ...] = ("4", "ternary")
    methods: tuple[str, ...] = ("slr", "none")
    epochs: int = 6  # reweighted pruning epochs (Adam 1e-3, cosine)
    retrain_epochs: int = 3
    retrain_lr: float | None = None  # None: 1e-3, constant (as reweighted_unstructured.py); else this lr, cosine
    finetune_epochs: int = 2  # straight-through fine-tuning after hard quantization
    finetune_schedule: str = "constant"  # or cosine: the fine-tuning ends at lr ~0, not on its last batches' noise

    @property
    def tag(self) -> str:
        return self.structure.replace(":", "") + (f"-all{self.compression:g}x" if self.all_layers else "")

    def label(self) -> str:
        layers = ", all layers" if self.all_layers else ""
        return f"{self.structure}{layers} {self.compression:g}x"

    def budget(self) -> str:
        return f"{self.epochs} + {self.retrain_epochs} + {self.finetune_epochs}"


SPARSITIES = {
    "unstructured": Sparsity("unstructured", True),
    "block:4x1": Sparsity("block:4x1", False),
    # 20x cannot reach 100x (the positions alone nearly fill the budget, see the note); 33x over every layer fits
    # positions and 4-bit codes, and the longer budget buys back the accuracy the higher sparsity costs
    "unstructured, all layers, 33x": Sparsity("unstructured", True, 33.0, True, ("4",), ("slr", "none"), 30, 10, 1e-4,
                                              5, "cosine"),
    # the same pruned models (one per seed, shared through cached_pruning), fine-tuned three times longer: after 5
    # epochs the 4-bit model was still 0.46 pt below its fp32 pruned self (89.04 against 89.50, 3 seeds)
    "unstructured, all layers, 33x, longer fine-tuning": Sparsity("unstructured", True, 33.0, True, ("4",),
                                                                  ("slr", "none"), 30, 10, 1e-4, 15, "cosine"),
}
SCHEMES = ("4", "ternary")
QUANT_METHODS = ("slr", "none")
TARGET_RATIO, TARGET_DROP = 100.0, 1.5
REST = "int8"


def information_bytes(model) -> dict[str, float]:
    """What the positions and codes of the quantized weights carry: i.i.d. entropy of each weight's nonzero
    bitmap, and the empirical entropy of its nonzero values (its codes), in bytes, summed over the layers."""
    positions = codes = 0.0
    for name, w in model.named_parameters():
        if w.dim() < 2:
            continue
        w = w.detach().reshape(-1).numpy()
        nz = w[w != 0]
        p = nz.size / w.size
        if 0 < p < 1:
            positions += w.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
        _, counts = np.unique(nz, return_counts=True)
        codes += float(-(counts * np.log2(counts / counts.sum())).sum()) / 8
    return {"positions": positions, "codes": codes}


def cached_pruning(pruned_dir, init, config: PruneConfig) -> dict | None:
    """The results of a finished pruning run made from ``init`` with ``config``, else None.

    Rows that differ only in how they quantize share one pruned model per seed (the 33x
    pruning takes ~15 min), so a new quantization row does not prune again."""
    path = pruned_dir / "results.json"
    if not path.exists() or not (pruned_dir / "retrain").exists():
        return None
    results = json.loads(path.read_text())
    # a field added to PruneConfig since the run was made (e.g. precision) ran at its default
    recorded = {**dataclasses.asdict(PruneConfig()), **results.get("config", {})}
    if recorded["retrain_lr"] is None:  # recorded before retraining defaulted to a tenth of the lr: it ran at lr
        recorded["retrain_lr"] = recorded["lr"]
    same = recorded == dataclasses.asdict(config) and results.get("init") == str(init)
    return results if same else None


def summarize(data: dict) -> str:
    dense = data["dense_accuracy"]
    env = data["environment"]
    digest = data.get("dense_sha256")
    source = (f"the file every row was pruned from, measured in the same run; {dense_hash_note(digest)}" if digest
              else "dense file hash not recorded: an earlier run's dense model, rows from before hashes were kept")
    lines = [
        f"## Pruning + quantization, LeNet-5 on Fashion-MNIST: accuracy and true size (`benchmarks/{NAME}.py`)",
        "",
        f"Dense LeNet-5: **{dense:.2f}%** ({source}), {data['dense_fp32_bytes']:,} bytes in float32; "
        "the target (issue 4) is "
        f">= {TARGET_RATIO:g}x smaller ({data['dense_fp32_bytes'] / TARGET_RATIO:,.0f} bytes) within {TARGET_DROP} pt "
        "of dense. Reweighted pruning (one global threshold; the 20x rows prune conv2, fc1, fc2 and keep the first and "
        "last layer dense), masked retraining, then every Conv2d/Linear weight quantized with one least-squares scale "
        "per layer, zeros kept: 'slr' = 3 SLR epochs projecting onto the levels, hard-quantize, straight-through "
        "fine-tuning; 'none' = hard-quantize, then the same fine-tuning. Budget = pruning + retraining + fine-tuning "
        "epochs. Biases in 8 bits (power-of-two step). Size = bytes of the exported file (range-coded positions and "
        "codes, scales, biases, header, checksums); 'entropy' = what its positions (i.i.d. per layer) and codes "
        "(per layer) carry, the floor for any coder of this kind. "
        f"Seeds {', '.join(map(str, sorted({r['seed'] for r in data['runs']})))} (the 'seeds' column: how many a row "
        f"has); mean ± std. Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}."
        + other_machines_note(data),
        "",
        "| sparsity | quantization | method | budget | seeds | "
        "pruned (fp32) % | hard-quantized % | after fine-tuning % "
        "| positions + codes: coded / entropy bytes | file bytes | smaller than dense fp32 | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    latest = {(r["sparsity"], r["scheme"], r["method"], r["seed"]): r for r in data["runs"]}  # a re-run replaces
    groups: dict[tuple, list] = {}
    for r in latest.values():
        groups.setdefault((r["sparsity"], r["scheme"], r["method"]), []).append(r)
    order = lambda k: (list(SPARSITIES).index(k[0]), SCHEMES.index(k[1]), QUANT_METHODS.index(k[2]))  # noqa: E731
    for key in sorted(groups, key=order):
        g, sp = groups[key], SPARSITIES[key[0]]
        final = [x["final_accuracy"] for x in g]
        ratio = statistics.mean(x["ratio"] for x in g)
        ok = ratio >= TARGET_RATIO and statistics.mean(final) >= dense - TARGET_DROP
        coded = statistics.mean(x["raw_bytes"]["masks"] + x["raw_bytes"]["codes"] for x in g)
        floor = statistics.mean(x["entropy_bytes"]["positions"] + x["entropy_bytes"]["codes"] for x in g)
        lines.append(
            f"| {sp.label()} | {'4-bit' if key[1] == '4' else key[1]} | {key[2]} | {sp.budget()} | {len(g)} | "
            f"{mean_std([x['pruned_accuracy'] for x in g])} | {mean_std([x['hard_quantized_accuracy'] for x in g])} | "
            f"{mean_std(final)} | {coded:,.0f} / {floor:,.0f} | {statistics.mean(x['file_bytes'] for x in g):,.0f} | "
            f"{ratio:.1f}x | {'met' if ok else 'not met'} |"
        )
    twenty = [r for r in latest.values() if r["sparsity"] == "unstructured" and r["scheme"] == "4"]
    if twenty:
        pos = statistics.mean(r["entropy_bytes"]["positions"] for r in twenty)
        lines += [
            "",
            f"Why 20x cannot reach {TARGET_RATIO:g}x here: the positions of 20x unstructured sparsity alone carry "
            f"{pos:,.0f} bytes (i.i.d. entropy, mean over seeds), and the 4-bit codes of its ~3,700 weights come on "
            f"top, against a budget of {data['dense_fp32_bytes'] / TARGET_RATIO:,.0f} bytes. A position costs "
            "H(p)/p bits per kept weight (5.7 at p = 5%, 6.6 at 3%), so the budget is met by keeping fewer weights "
            "over every layer (the 33x row) or by sharing positions (block:4x1), and the accuracy then has to come "
            "from a longer pruning budget.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsities", nargs="+", default=list(SPARSITIES), choices=list(SPARSITIES))
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return

    init = dense_checkpoint()
    model, _ = load_model(init)
    digest = dense_sha256(init)
    data = resumed(args, NAME, init)
    quiet = Console(file=io.StringIO())
    for seed in args.seeds:
        for sparsity in args.sparsities:
            sp = SPARSITIES[sparsity]
            pruned_dir = CACHE / f"{sp.tag}-seed{seed}"
            done = {(r["sparsity"], r["scheme"], r["method"], r["seed"]) for r in (data or {}).get("runs", [])}
            if all((sparsity, s, m, seed) in done for s in sp.schemes for m in sp.methods):
                continue
            retrain = ({"retrain_lr": PruneConfig.lr} if sp.retrain_lr is None
                       else {"retrain_lr": sp.retrain_lr, "retrain_schedule": "cosine"})
            config = PruneConfig(method="reweighted", epochs=sp.epochs, retrain_epochs=sp.retrain_epochs, seed=seed,
                                 **retrain)
            pruned = cached_pruning(pruned_dir, init, config)
            if pruned is None:
                shutil.rmtree(pruned_dir, ignore_errors=True)
                plan = Plan.uniform(model, ratio_for_compression(sp.compression), sp.structure,
                                    global_unstructured=sp.global_, skip_first=not sp.all_layers,
                                    skip_last=not sp.all_layers)
                pruned = run_pruning(init, plan, config, pruned_dir, console=quiet)
            for scheme in sp.schemes:
                for method in sp.methods:
                    if (sparsity, scheme, method, seed) in done:
                        continue
                    qdir = CACHE / (f"q-{sp.tag}-{scheme}-{method}-f{sp.finetune_epochs}"
                                    f"{sp.finetune_schedule}-seed{seed}")
                    shutil.rmtree(qdir, ignore_errors=True)
                    q = run_quantization(pruned_dir / "retrain", QuantizeConfig(scheme=scheme, method=method, seed=seed,
                                                                                finetune_epochs=sp.finetune_epochs,
                                                                                finetune_schedule=sp.finetune_schedule,
                                                                                rest=REST),
                                         qdir, console=quiet)
                    if data is None:
                        data = {"benchmark": NAME, "dense_accuracy": pruned["dense_accuracy"],
                                "dense_checkpoint": str(init.relative_to(HERE)), "dense_sha256": digest,
                                "dense_fp32_bytes": q["size"]["dense_fp32_bytes"], "seeds": args.seeds,
                                "environment": environment_info(), "runs": []}
                    quantized, _ = load_model(qdir / "quantized")
                    run = {"sparsity": sparsity, "scheme": scheme, "method": method, "seed": seed,
                           "budget": [sp.epochs, sp.retrain_epochs, sp.finetune_epochs], "rest": REST,
                           "finetune_schedule": sp.finetune_schedule,
                           "compression": pruned["report"]["compression"],
                           "pruned_accuracy": pruned["retrain_accuracy"][-1],
                           "hard_pruned_accuracy": pruned["hard_pruned_accuracy"],
                           "hard_quantized_accuracy": q["hard_quantized_accuracy"],
                           "finetune_accuracy": q["finetune_accuracy"],
                           "final_accuracy": q["final_accuracy"], "reloaded_accuracy": q["reloaded_accuracy"],
                           "file_bytes": q["size"]["file_bytes"], "ratio": q["size"]["ratio"],
                           "raw_bytes": q["size"]["raw_bytes"],
                           "entropy_bytes": information_bytes(quantized),
                           "quantized_weights": q["quantized_weights"], "method_seconds": q["method_seconds"]}
                    add_row(data, run)
                    print(json.dumps(run), flush=True)
                    write_result(NAME, data, summarize(data))


if __name__ == "__main__":
    main()
