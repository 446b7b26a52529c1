"""BCNN accuracy: full-precision complex vs BCNN vs BCNN pruned 20x (live weights), engine == PyTorch (issue 19).

For each model x dataset x seed, these rows from one script run:
  fp           the full-precision complex model (CReLU), ``prunus bcnn train --fp``
  bcnn         the binarized complex model (binary hidden layers, full-precision first and last layer)
  bcnn-20x     that BCNN pruned by SLR filter pruning to 20x fewer live weights (``prunus bcnn prune``:
               E method epochs + R masked retraining epochs, starting from the bcnn row's weights)
  bcnn-20x-kd  the same, its retraining distilled from the unpruned BCNN (``--distill``; with --distill-row)
  bcnn-20x-long the same pruning with as many retraining epochs as the BCNN's training (with --long-row: does
               the gap close with retraining, or is it the pruned model's capacity?)
  bcnn-long    its fair control (with --long-control): the unpruned BCNN trained from scratch for as many
               epochs as bcnn-20x-long has seen in all (training + method + retraining epochs)
  bcnn-long-Cx bcnn-long, a converged BCNN, pruned to C x fewer live weights by the bcnn-20x recipe (with
               --from-long C ...: the usual protocol, pruning a converged model; a sweep over C shows where the
               loss against bcnn-long passes the tolerance)
  bcnn-small   the BCNN narrowed to the same 20x fewer live weights, trained from scratch (the baseline
               pruning must beat: "Rethinking the Value of Network Pruning", Liu et al., ICLR 2019)
``nin-binstem`` (a NIN whose first layer is binary too, the engine's faster variant) gets every row but fp;
its full-precision twin is nin's fp row.  ``--int8-stem VARIANT ...``: those rows of each model again as
``<model>-int8stem``, their first layer quantized to int8 after training (``prunus bcnn int8-stem``: the engine's
integer stem; the same weights otherwise). The trainings share the recipe (Adam lr 1e-3, cosine, no weight
decay, no augmentation, channels-last, batch 128). Widths are reduced where the 2-core CPU forces it and every row
carries its parameter count. Each pruned model runs on the engine over the whole test set:
``engine_equal`` says its logits equal PyTorch's on every image (``torch.equal`` per row).
The unpruned BCNN is checked the same way; the fp model has no engine.

Trainings live in ``.cache/bcnn/<model>-w<width>-<dataset>-<fp|bcnn>-e<epochs>-<precision>[-compiled]-s<seed>``
(prunings beside them, their names extended) and resume where they stopped;
with ``--continue`` finished rows are kept. Run it in the background across sessions:

    python benchmarks/bcnn_accuracy.py [--models nin resnet18 nin-binstem] [--datasets modulation fashion-mnist]
        [--seeds 0 1 2] [--epochs N] [--distill-row] [--long-row] [--long-control] [--from-long C ...]
        [--converged-only] [--int8-stem VARIANT ...] [--compile] [--continue] [--render]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    HERE,
    RESULTS,
    add_results_flags,
    add_row,
    mean_std,
    other_machines_note,
    pin,
    pinned,
    train_cached,
    write_result,
)
from rich.console import Console

from prunus.bcnn.engine import compile_engine
from prunus.bcnn.pruning import weight_counts
from prunus.data import load_dataset
from prunus.environment import environment_info
from prunus.harden.batchnorm import reestimate_batchnorm
from prunus.jobs.bcnn import BCNN_RETRAIN_SCHEDULE, CALIBRATION_FRAMES, prune_bcnn, quantize_first_layer
from prunus.jobs.prune import PruneConfig
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.train.config import TrainConfig

NAME = "bcnn_accuracy"
#: the recipe's forward precision: bf16 autocast, where the CPU has bfloat16 hardware; a float32 run (on a CPU that
#: would emulate bf16 13x slower than float32) is another recipe, so its rows go to a table of their own
REFERENCE_PRECISION = "bf16"


def result_name(precision: str) -> str:
    """``bcnn_accuracy`` for the bf16 recipe, ``bcnn_accuracy_<precision>`` for another: one recipe a table, so a
    group's mean and its target verdict never mix forward precisions."""
    return NAME if precision == REFERENCE_PRECISION else f"{NAME}_{precision}"


CACHE = HERE / ".cache" / "bcnn"
#: key -> (registry name, width that fits 2 CPU cores, model options); nin-binstem: NIN with a binary first layer
#: too (the engine's faster variant, bcnn_throughput.py), trained as a BCNN only (its fp twin is nin's); nin-full:
#: NIN at the seed paper's width (4x nin's weights and about 4x its training time), where 20x fewer live weights
#: still leaves 10 to 21 complex channels a layer (nin at width 0.5: 5 to 10)
MODELS = {"nin": ("cnin", 0.5, {}), "resnet18": ("cresnet18", 0.5, {}),
          "nin-binstem": ("cnin", 0.5, {"fp_first": False}), "nin-full": ("cnin", 1.0, {})}
IMAGE_SIZE = {"modulation": None, "fashion-mnist": 32}
TOLERANCE = {"modulation": 1.0, "fashion-mnist": 2.0}  # issue 19: BCNN-20x within this many points of the BCNN
# training epochs per dataset (--epochs overrides): 11,000 modulation frames x 15 = 1,290 steps of 128, 60,000
# Fashion-MNIST images x 5 = 2,345 steps; a 15-epoch Fashion-MNIST BCNN would take ~5 h per run on this CPU
EPOCHS = {"modulation": 15, "fashion-mnist": 5}
COMPRESSION, PRUNE_EPOCHS, RETRAIN_EPOCHS = 20.0, 3, 5
#: the bcnn-20x-kd row: the same pruning, its retraining distilled from the unpruned BCNN (prunus.train.distill)
DISTILL, DISTILL_TEMPERATURE = 1.0, 4.0
BN_RECALIBRATE = 100  # batches of BatchNorm recalibration after the hard-prune: its own column, on a copy
RECAL_FRAMES = 4096  # training frames each row's BatchNorm statistics are re-estimated on (the 'BN re-est.' column)
QUIET = Console(file=io.StringIO())


@dataclass(frozen=True)
class Steps:
    """How the training steps of a row's trainings and pruning run: the forward precision, eager or compiled
    (``--compile``: the same recipe, its training steps 1.7-1.8x and loss closure 2.2-2.5x faster on 2 cores,
    bcnn_training_speed.py; the numbers differ in the last bits)."""

    precision: str
    compiled: bool = False

    @property
    def tag(self) -> str:
        """The part of a run directory's name that keeps compiled and eager trainings apart."""
        return self.precision + ("-compiled" if self.compiled else "")

    def options(self) -> dict:
        return {"precision": self.precision, "compile": self.compiled}


def trained(model: str, dataset: str, fp: bool, seed: int, epochs: int, steps: Steps,
            width: float | None = None) -> Path:
    """The run directory of one training, trained (or resumed) to ``epochs`` (``width``: other than MODELS')."""
    name, default_width, options = MODELS[model]
    width = width or default_width
    run = CACHE / f"{model}-w{width:g}-{dataset}-{'fp' if fp else 'bcnn'}-e{epochs}-{steps.tag}-s{seed}"
    config = TrainConfig(model=f"{name}_fp" if fp else name, dataset=dataset, epochs=epochs, optimizer="adam",
                         lr=1e-3, weight_decay=0.0, schedule="cosine", seed=seed, image_size=IMAGE_SIZE[dataset],
                         augment=False, model_options={"width": width, **options}, channels_last=True,
                         **steps.options())
    train_cached(config, run, console=QUIET)
    return run


#: the retraining schedule of the rows from before BCNN_RETRAIN_SCHEDULE was cosine-step (they record none)
LEGACY_SCHEDULE = "cosine"


def retrain_schedule(row: dict) -> str | None:
    """The retraining lr schedule a pruned row ran (None for a trained row)."""
    return row.get("retrain_schedule", LEGACY_SCHEDULE) if "hard_pruned_accuracy" in row else None


def current_recipe(row: dict) -> bool:
    """A trained row, or a pruned row retrained on BCNN_RETRAIN_SCHEDULE."""
    return retrain_schedule(row) in (None, BCNN_RETRAIN_SCHEDULE)


def pruned(bcnn_run: Path, seed: int, steps: Steps, distill: float = 0.0, retrain_epochs: int = RETRAIN_EPOCHS,
           compression: float = COMPRESSION) -> tuple[Path, dict]:
    """The BCNN of ``bcnn_run`` pruned to ``compression`` x fewer live weights; a run killed half-way is started
    again.

    prune_bcnn's defaults: SLR's penalty as a proximal step, BatchNorm's beta left free on pruned channels.
    ``distill``: the retraining also distils from the unpruned BCNN (weight, at DISTILL_TEMPERATURE).
    The retraining's schedule (BCNN_RETRAIN_SCHEDULE) is named in the run directory unless it is the legacy one
    (whose committed runs keep their names).
    """
    kd = f"-kd{distill:g}t{DISTILL_TEMPERATURE:g}" if distill else ""
    tag = "" if BCNN_RETRAIN_SCHEDULE == LEGACY_SCHEDULE else f"-{BCNN_RETRAIN_SCHEDULE}"
    run = bcnn_run.with_name(bcnn_run.name + f"-slr{compression:g}x-e{PRUNE_EPOCHS}r{retrain_epochs}-prox{kd}{tag}")
    if not (pinned(run) / "results.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        config = PruneConfig(method="slr", epochs=PRUNE_EPOCHS, retrain_epochs=retrain_epochs, seed=seed,
                             channels_last=True, bn_recalibrate=BN_RECALIBRATE, **steps.options(),
                             retrain_schedule=BCNN_RETRAIN_SCHEDULE, distill=distill,
                             distill_temperature=DISTILL_TEMPERATURE)
        prune_bcnn(bcnn_run, compression, config, run, console=QUIET, reestimate_frames=0)  # reestimated(): every row
        pin(run, skip=("prune", "hard-pruned"))  # the rows read results.json and the retrained model
    return run, json.loads((run / "results.json").read_text())


def small_width(model: str, test_set) -> tuple[float, int]:
    """The widest width at which the unpruned BCNN has at least COMPRESSION times fewer live weights than the
    bcnn row's model (the 'bcnn-small' row: the 20x model's weight budget, trained from scratch), and the bcnn row's
    prunable weight count (what both compressions are counted against)."""
    name, width, options = MODELS[model]

    def counts(w: float) -> dict:
        m = build_model(name, in_channels=test_set.in_channels, num_classes=test_set.num_classes, width=w,
                        **options).eval()
        return weight_counts(m, compile_engine(m, test_set.image_size, backend="fp32"))

    reference = counts(width)["dense_weights"]
    lo, hi = 0, 400  # widths in steps of 1/400 of the bcnn row's; bisect for the fewest steps that reach COMPRESSION
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reference / counts(width * (1 - mid / 400))["live_weights"] >= COMPRESSION:
            hi = mid
        else:
            lo = mid
    return round(width * (1 - hi / 400), 6), reference


@torch.no_grad()
def engine_check(model, test_set) -> bool:
    """Engine logits equal PyTorch's on every test image."""
    engine = compile_engine(model, test_set.image_size)
    for start in range(0, len(test_set), 500):
        x = test_set.images[start:start + 500]
        if not torch.equal(engine(x), model(x)):
            return False
    return True


def _relative(path: Path) -> str:
    return str(path.relative_to(HERE)) if path.is_relative_to(HERE) else str(path)


@torch.no_grad()
def test_accuracy(model, test_set) -> float:
    model.eval()
    correct = sum(int((model(test_set.images[s:s + 500]).argmax(1) == test_set.labels[s:s + 500]).sum())
                  for s in range(0, len(test_set), 500))
    return 100.0 * correct / len(test_set)


def reestimated(model, train_set, test_set, binary: bool) -> dict:
    """Accuracy with BatchNorm statistics re-estimated for inference (sequentially, on RECAL_FRAMES training frames;
    no gradient step), and the engine on that model: the same deployment step for every row."""
    model = copy.deepcopy(model)
    reestimate_batchnorm(model, train_set, frames=RECAL_FRAMES)  # seed 0 for every row: one deployment step
    return {"bn_reestimated_accuracy": test_accuracy(model, test_set),
            "bn_reestimated_engine_equal": engine_check(model.eval(), test_set) if binary else None}


def row(run: Path, test_set, train_set, reference_weights: int | None = None, **fields) -> dict:
    """One row; compressions against the model's own prunable weights, or ``reference_weights`` (bcnn-small)."""
    model, ckpt = load_model(run)
    accuracy = test_accuracy(model, test_set)
    counts = weight_counts(model, compile_engine(model, test_set.image_size, backend="fp32")) \
        if fields["variant"] != "fp" else None
    dense_weights = (reference_weights or counts["dense_weights"]) if counts else None
    return {**fields, "accuracy": accuracy, **reestimated(model, train_set, test_set, fields["variant"] != "fp"),
            "checkpoint": _relative(ckpt.path),
            "parameters": sum(p.numel() for p in model.parameters()),
            "live_compression": dense_weights / counts["live_weights"] if counts else 1.0,
            "nonzero_compression": dense_weights / counts["nonzero_weights"] if counts else 1.0,
            "engine_equal": engine_check(model, test_set) if fields["variant"] != "fp" else None}


def _epochs_text(data: dict) -> str:
    """The training epochs per dataset, from the rows (rows from before they recorded it: the run's one value)."""
    per = {}
    for r in data["runs"]:
        per.setdefault(r["dataset"], set()).add(r.get("epochs", data.get("epochs")))
    return ", ".join(f"{'/'.join(map(str, sorted(e)))} epochs ({d})" for d, e in per.items()) or "-"


def summarize(data: dict) -> str:
    env = data["environment"]
    precision = data.get("precision", "fp32")
    subject = "" if precision == REFERENCE_PRECISION else f", {'float32' if precision == 'fp32' else precision} forward"
    lines = [f"## BCNN accuracy: full-precision complex, BCNN, BCNN pruned 20x{subject} (`benchmarks/{NAME}.py`)", "",
             f"Trainings: {_epochs_text(data)}, Adam lr 1e-3 cosine, no weight decay or augmentation, batch 128, "
             f"forward pass in {precision} (bcnn_training_speed.py); "
             f"bcnn-20x: SLR filter pruning of the bcnn row's model to {COMPRESSION:g}x fewer live weights "
             f"({PRUNE_EPOCHS} method epochs + {RETRAIN_EPOCHS} masked retraining epochs on a cosine "
             "lr decayed per step to 0 (rows marked *per-epoch cosine*: one lr per epoch, the last epoch at 9.5% "
             "of it), same forward precision; the penalty as a proximal step, BatchNorm's beta free on pruned "
             "channels: "
             f"prunus.jobs.bcnn). bcnn-small: the BCNN at the widest width with {COMPRESSION:g}x fewer live weights "
             "than the bcnn row's, trained from scratch with the same recipe (does pruning beat training the "
             "small model?). bcnn-20x-kd: bcnn-20x with its retraining distilled from the unpruned BCNN (--distill "
             f"{DISTILL:g}, temperature {DISTILL_TEMPERATURE:g}). bcnn-20x-long: bcnn-20x retrained as many epochs "
             "as the BCNN was trained (so it has seen more epochs than the unpruned BCNN); bcnn-long: the unpruned "
             f"BCNN trained from scratch as many epochs as bcnn-20x-long has seen (2 x training + {PRUNE_EPOCHS}), "
             "its fair control. "
             + ("bcnn-long-Cx: the converged bcnn-long model pruned to C x fewer live weights by the bcnn-20x recipe "
                f"({PRUNE_EPOCHS} + {RETRAIN_EPOCHS} epochs), compared with bcnn-long: the usual protocol of pruning "
                "a converged model. " if any(r["variant"].startswith("bcnn-long-") for r in data["runs"]) else "")
             + ("<model>-int8stem: that model's row with its first layer quantized to int8 after training (prunus "
                f"bcnn int8-stem: int8 weights with a scale per filter, int8 inputs with one scale from "
                f"{CALIBRATION_FRAMES:,} training frames; no training step), which the engine runs on 8-bit dot "
                "products. " if any(r.get("int8_from") for r in data["runs"]) else "")
             + _compiled_text(data["runs"])
             + "Widths reduced for a 2-core CPU (parameter "
             "counts in the table). *BN re-est.*: the same weights with BatchNorm statistics re-estimated "
             f"for inference on {RECAL_FRAMES:,} training frames, one BatchNorm at a time (no gradient step; "
             "prunus.harden.batchnorm). *engine == PyTorch*: the bit-packed engine's logits equal the "
             "PyTorch forward on every test image (both models). "
             "Test accuracy in %, mean ± std over the seeds. Machine: "
             f"{env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}." + other_machines_note(data), "",
             "| model | dataset | variant | parameters | seeds | accuracy % | BN re-est. % | live compression "
             "| nonzero compression | engine == PyTorch |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in data["runs"]:
        groups.setdefault((r["model"], r["dataset"], _variant_label(r)), []).append(r)
    for (model, dataset, variant), rows in groups.items():
        eq = {r["engine_equal"] for r in rows} | {r.get("bn_reestimated_engine_equal") for r in rows}
        if eq != {None}:
            eq.discard(None)  # fp rows have no engine; rows from before the re-estimate have no second check
        reest = [r["bn_reestimated_accuracy"] for r in rows if "bn_reestimated_accuracy" in r]
        lines.append(f"| {model} (width {rows[0]['width']:g}) | {dataset} | {variant} | {rows[0]['parameters']:,} | "
                     f"{len(rows)} | {mean_std([r['accuracy'] for r in rows])} | {mean_std(reest) if reest else '-'} | "
                     f"{statistics.mean(r['live_compression'] for r in rows):.1f}x | "
                     f"{statistics.mean(r['nonzero_compression'] for r in rows):.1f}x | "
                     f"{'n/a' if eq == {None} else ('yes' if eq == {True} else 'NO')} |")
    lines += ["", "Targets (issue 19), BCNN-20x against the unpruned BCNN on the same seeds:", ""]
    for (model, dataset, variant), rows in groups.items():
        if not variant.startswith("bcnn-20x"):
            continue
        lines += _target_lines(f"{model} {variant} on {dataset}", rows, groups.get((model, dataset, "bcnn"), []),
                               TOLERANCE[dataset])
        small = {r["seed"]: r["bn_reestimated_accuracy"] for r in groups.get((model, dataset, "bcnn-small"), [])}
        deltas = [r["bn_reestimated_accuracy"] - small[r["seed"]] for r in rows if r["seed"] in small]
        if deltas:
            lines.append(f"- pruning against training small ({model} on {dataset}, BN re-estimated): {variant} - "
                         f"bcnn-small {statistics.mean(deltas):+.2f} pt over {len(deltas)} seed(s)")
        if variant.startswith("bcnn-20x-long"):  # against its fair control, the unpruned BCNN given as many epochs
            lines += _target_lines(f"{model} {variant} against bcnn-long (the unpruned BCNN given as many "
                                   f"epochs) on {dataset}", rows, groups.get((model, dataset, "bcnn-long"), []),
                                   TOLERANCE[dataset])
    lines += _stem_lines(groups)
    sweep = sorted(((k, rows) for k, rows in groups.items() if k[2].startswith("bcnn-long-")),
                   key=lambda kv: (kv[0][0], kv[0][1], kv[1][0]["target_compression"]))
    if sweep:
        lines += ["", ("Pruning the converged BCNN (bcnn-long-Cx against bcnn-long, the model it was pruned from; "
                       f"the target is the {COMPRESSION:g}x row):"), ""]
    for (model, dataset, variant), rows in sweep:
        lines += _target_lines(f"{model} {variant} ({statistics.mean(r['live_compression'] for r in rows):.1f}x "
                               f"live) against bcnn-long on {dataset}", rows,
                               groups.get((model, dataset, "bcnn-long"), []), TOLERANCE[dataset])
    return "\n".join(lines) + "\n"


#: model-key suffix -> what its first layer is, against the model without the suffix (the same rows otherwise)
STEMS = {"-binstem": "binary first layer", "-int8stem": "int8 first layer"}


def _stem_lines(groups: dict[tuple, list[dict]]) -> list[str]:
    """What the engine's faster stems cost in accuracy: each nin-binstem (nin-int8stem, ...) row against the row of
    its base model of the same variant, dataset and seed (the two models differ in their first layer alone)."""
    lines = []
    for (model, dataset, variant), rows in groups.items():
        suffix = next((s for s in STEMS if model.endswith(s)), None)
        if suffix is None:
            continue
        base_model = model[: -len(suffix)]
        base = {r["seed"]: r for r in groups.get((base_model, dataset, variant), [])}
        pairs = [(r, base[r["seed"]]) for r in rows if r["seed"] in base]
        if not pairs:
            continue
        deltas = [r["accuracy"] - b["accuracy"] for r, b in pairs]
        reest = [r["bn_reestimated_accuracy"] - b["bn_reestimated_accuracy"] for r, b in pairs
                 if "bn_reestimated_accuracy" in r and "bn_reestimated_accuracy" in b]
        how = " (quantized after training)" if any(r.get("int8_from") for r in rows) else ""
        lines.append(f"- {STEMS[suffix]}{how} ({variant} on {dataset}): {model} - {base_model} "
                     f"{statistics.mean(deltas):+.2f} pt as trained"
                     + (f", {statistics.mean(reest):+.2f} pt with BN re-estimated" if reest else "")
                     + f" over {len(pairs)} seed(s)")
    return ["", "The engine's faster stems (a binary or an int8 first layer) against the full-precision one, same "
            "recipe and seeds:", ""] + lines if lines else []


#: the fields an int8-stem row keeps from the row it was quantized from (the recipe that made its weights)
INT8_KEPT = ("dataset", "seed", "width", "epochs", "variant", "retrain_epochs", "retrain_schedule",
             "target_compression", "source_epochs", "training_epochs", "compiled")


def add_int8_stem(data: dict, source: dict, test_set, train_set) -> None:
    """The ``source`` row's model with its first layer quantized to int8 after training (``prunus bcnn int8-stem``,
    input scale from CALIBRATION_FRAMES training frames, seed 0), as a row of ``<model>-int8stem``; pinned."""
    t0 = time.perf_counter()
    run = _run_of(source)
    pinned(CACHE / run)  # the source model, restored from its pin on a machine that lost .cache/
    out = pinned(CACHE / f"{run}-int8stem")
    if not out.is_dir():
        quantize_first_layer(HERE / source["checkpoint"], out, frames=CALIBRATION_FRAMES)
        pin(out)
    model = f"{source['model']}-int8stem"
    add_row(data, row(out, test_set, train_set, model=model, int8_from=source["checkpoint"],
                      seconds=time.perf_counter() - t0, **{k: source[k] for k in INT8_KEPT if k in source}))
    write_result(result_name(data["precision"]), data, summarize(data))


def _run_of(row: dict) -> str:
    """The cached run folder a row's checkpoint lies in (a pruning's, for its retrained model)."""
    parts = Path(row["checkpoint"]).parts
    return parts[parts.index("retrain") - 1] if "retrain" in parts else parts[parts.index("bcnn") + 1]


def _variant_label(row: dict) -> str:
    """The row's variant, naming the retraining schedule of a pruned row that ran another than today's: rows of
    two schedules never share a mean."""
    if current_recipe(row):
        return row["variant"]
    schedule = retrain_schedule(row)
    return f"{row['variant']} ({'per-epoch cosine' if schedule == LEGACY_SCHEDULE else schedule})"


def _compiled_text(runs: list[dict]) -> str:
    """Which rows trained and pruned through torch.compile (``--compile``), if any."""
    compiled = sorted({(r["model"], r["dataset"], r["seed"]) for r in runs if r.get("compiled")})
    if not compiled:
        return ""
    return ("Trained and pruned through torch.compile (--compile: the same recipe, the numbers differ from eager in "
            "the last bits): " + ", ".join(f"{m} on {d} seed {s}" for m, d, s in compiled) + "; the other rows "
            "eager. ")


def _target_lines(label: str, rows: list[dict], base_rows: list[dict], tolerance: float) -> list[str]:
    """``rows`` against ``base_rows`` on the same seeds, as trained and both with BN re-estimated: within
    ``tolerance`` pt (mean of the per-seed differences)?"""
    out = []
    for key, how in (("accuracy", "as trained"), ("bn_reestimated_accuracy", "both with BN re-estimated")):
        base = {r["seed"]: r[key] for r in base_rows if key in r}
        deltas = [r[key] - base[r["seed"]] for r in rows if r["seed"] in base and key in r]
        if deltas:
            d = statistics.mean(deltas)
            out.append(f"- {label}, {how}: {d:+.2f} pt over {len(deltas)} seed(s) (within {tolerance:g} pt) -> "
                       f"**{'met' if d >= -tolerance else 'NOT met'}**"
                       + (" (fewer than 3 seeds)" if len(deltas) < 3 else ""))
    return out


def backfill_reestimated(data: dict, dataset: str, train_set, test_set) -> None:
    """Rows recorded before the 'BN re-est.' column get it from their checkpoint (weights unchanged)."""
    for r in data["runs"]:
        if r["dataset"] == dataset and "bn_reestimated_accuracy" not in r:
            model, _ = load_model(HERE / r["checkpoint"])
            r.update(reestimated(model, train_set, test_set, r["variant"] != "fp"))
            write_result(result_name(data["precision"]), data, summarize(data))


def add_trained(data: dict, model: str, dataset: str, variant: str, seed: int, steps: Steps, test_set, train_set,
                common: dict, width: float | None = None, reference_weights: int | None = None,
                training_epochs: int | None = None) -> None:
    """Train (or resume, or restore) the fp, bcnn, bcnn-small or bcnn-long model of one seed and add its row
    (``training_epochs``: other than the dataset's recipe, recorded in the row)."""
    t0 = time.perf_counter()
    run = trained(model, dataset, variant == "fp", seed, training_epochs or common["epochs"], steps, width=width)
    extra = {"training_epochs": training_epochs} if training_epochs else {}
    extra["compiled"] = steps.compiled
    add_row(data, row(run, test_set, train_set, reference_weights=reference_weights, variant=variant,
                      seconds=time.perf_counter() - t0, **{**common, "width": width or common["width"]},
                      **extra))
    write_result(result_name(data["precision"]), data, summarize(data))


def add_pruned(data: dict, model: str, dataset: str, variant: str, seed: int, steps: Steps, distill: float,
               retrain_epochs: int, test_set, train_set, common: dict, compression: float = COMPRESSION,
               source_epochs: int | None = None) -> None:
    """Prune the seed's BCNN (trained ``source_epochs``, default the recipe's) to ``compression`` x fewer live
    weights (retraining distilled or not, ``retrain_epochs`` long) and add its row."""
    source = trained(model, dataset, False, seed, source_epochs or common["epochs"], steps)
    run, results = pruned(source, seed, steps, distill, retrain_epochs, compression)
    extra = {"target_compression": compression, "source_epochs": source_epochs} if source_epochs else {}
    extra["compiled"] = steps.compiled
    # a row of another retraining schedule is replaced: a group's mean and its target verdict are of one recipe
    data["runs"] = [r for r in data["runs"] if (r["model"], r["dataset"], r["variant"], r["seed"])
                    != (model, dataset, variant, seed)]
    add_row(data, row(run / "retrain", test_set, train_set, variant=variant, retrain_epochs=retrain_epochs,
                      retrain_schedule=BCNN_RETRAIN_SCHEDULE,
                      hard_pruned_accuracy=results["hard_pruned_accuracy"],
                      bn_recalibrated_accuracy=results.get("bn_recalibrated_accuracy"),
                      retrain_accuracy=results["retrain_accuracy"],
                      final_distance=(results.get("method_history") or [{}])[-1].get("distance"),
                      ratio=results["bcnn"]["ratio"], **common, **extra))
    write_result(result_name(data["precision"]), data, summarize(data))


def check_same_recipe(data: dict, args, path: Path) -> None:
    """A --continue keeps rows only of the same training recipe: refuse another --precision, or other epochs for a
    dataset whose rows are there (a group's mean and the BCNN-20x vs BCNN target would mix two recipes)."""
    if data.get("precision", "fp32") != args.precision:
        raise SystemExit(f"{path}: its rows were trained with --precision {data.get('precision', 'fp32')}; continue "
                         "with that, or run without --continue")
    for dataset in args.datasets:
        recorded = {r.get("epochs", data.get("epochs")) for r in data["runs"] if r["dataset"] == dataset}
        epochs = args.epochs or EPOCHS[dataset]
        if recorded and recorded != {epochs}:
            raise SystemExit(f"{path}: its {dataset} rows were trained {'/'.join(map(str, sorted(recorded)))} "
                             f"epochs, not {epochs}; continue with --epochs {min(recorded)} or run without --continue")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--datasets", nargs="+", default=list(IMAGE_SIZE), choices=list(IMAGE_SIZE))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="training epochs for every dataset (default: "
                    + ", ".join(f"{d} {e}" for d, e in EPOCHS.items()) + ")")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=REFERENCE_PRECISION,
                    help="the trainings' forward pass (bf16 autocast: 1.4-2.9x faster steps on AVX-512 BF16 CPUs); "
                    f"fp32 rows go to {result_name('fp32')}.json, a table of their own")
    ap.add_argument("--compile", action="store_true", help="seeds with no row yet train and prune through "
                    "torch.compile (the same recipe, its steps 1.7-1.8x faster on 2 cores; recorded in each row; a "
                    "seed with rows keeps the mode it started in)")
    ap.add_argument("--distill-row", action="store_true", help="also the bcnn-20x-kd row (off by default: it "
                    "costs ~25 min a seed and distillation did not help on the seed measured, see the table)")
    ap.add_argument("--long-row", action="store_true", help="also the bcnn-20x-long row: the same pruning, "
                    "retrained as many epochs as the BCNN was trained (~35 min a seed on 2 cores)")
    ap.add_argument("--long-control", action="store_true", help="also the bcnn-long row: the unpruned BCNN trained "
                    "as many epochs as bcnn-20x-long has seen (~65 min a seed on 2 cores)")
    ap.add_argument("--from-long", type=float, nargs="+", default=[], metavar="C",
                    help="also bcnn-long-Cx rows: the converged bcnn-long model (trained if missing) pruned to C x "
                    f"fewer live weights, {PRUNE_EPOCHS} method + {RETRAIN_EPOCHS} retraining epochs (~12 min each)")
    ap.add_argument("--converged-only", action="store_true", help="only the bcnn-long row and its --from-long rows "
                    "(the usual protocol alone: for a costlier model, e.g. nin-full)")
    ap.add_argument("--int8-stem", nargs="+", default=[], metavar="VARIANT",
                    help="also <model>-int8stem rows: these variants' rows (e.g. bcnn-long bcnn-long-20x) with the "
                    "first layer quantized to int8 after training (prunus bcnn int8-stem; ~4 min each)")
    add_results_flags(ap)
    args = ap.parse_args()
    if args.render:
        tables = sorted(RESULTS.glob(f"{NAME}*.json"))
        if not tables:
            raise SystemExit(f"{RESULTS / NAME}.json does not exist yet; run the benchmark first")
        for path in tables:
            data = json.loads(path.read_text())
            write_result(path.stem, data, summarize(data))
        return
    path = RESULTS / f"{result_name(args.precision)}.json"
    data = json.loads(path.read_text()) if args.cont and path.exists() else None
    if data is None:
        data = {"benchmark": NAME, "precision": args.precision,
                "environment": environment_info(), "runs": []}
    check_same_recipe(data, args, path)
    started = {(r["model"], r["dataset"], r["seed"]): bool(r.get("compiled")) for r in data["runs"]}
    # a pruned row retrained on another schedule than BCNN_RETRAIN_SCHEDULE is run again (and replaced)
    done = {(r["model"], r["dataset"], r["variant"], r["seed"]) for r in data["runs"] if current_recipe(r)}
    for dataset in args.datasets:
        test_set = load_dataset(dataset, "test", image_size=IMAGE_SIZE[dataset])
        train_set = load_dataset(dataset, "train", image_size=IMAGE_SIZE[dataset])
        backfill_reestimated(data, dataset, train_set, test_set)
        for seed in args.seeds:
            for model in args.models:
                epochs = args.epochs or EPOCHS[dataset]
                # a seed's rows are pruned from its own trainings: it keeps the mode its first rows ran in
                steps = Steps(args.precision, started.get((model, dataset, seed), args.compile))
                common = {"model": model, "dataset": dataset, "seed": seed, "width": MODELS[model][1], "epochs": epochs}
                short = not args.converged_only  # the rows of the recipe's training length
                # the BCNN and its 20x pruning first: they are what the targets compare; the fp twin last
                if short and (model, dataset, "bcnn", seed) not in done:
                    add_trained(data, model, dataset, "bcnn", seed, steps, test_set, train_set, common)
                variants = []
                if short:
                    variants = [("bcnn-20x", 0.0, RETRAIN_EPOCHS)]
                    variants += [("bcnn-20x-kd", DISTILL, RETRAIN_EPOCHS)] if args.distill_row else []
                    # (where the training is as short as the retraining, the long row would be bcnn-20x again)
                    variants += [("bcnn-20x-long", 0.0, epochs)] if args.long_row and epochs > RETRAIN_EPOCHS else []
                for variant, distill, retrain_epochs in variants:
                    if (model, dataset, variant, seed) not in done:
                        add_pruned(data, model, dataset, variant, seed, steps, distill, retrain_epochs,
                                   test_set, train_set, common)
                long_epochs = 2 * epochs + PRUNE_EPOCHS
                if (args.long_control or args.from_long or not short) and (model, dataset, "bcnn-long", seed) \
                        not in done:
                    add_trained(data, model, dataset, "bcnn-long", seed, steps, test_set, train_set, common,
                                training_epochs=long_epochs)
                for c in args.from_long:
                    if (model, dataset, f"bcnn-long-{c:g}x", seed) not in done:
                        add_pruned(data, model, dataset, f"bcnn-long-{c:g}x", seed, steps, 0.0,
                                   RETRAIN_EPOCHS, test_set, train_set, common, compression=c,
                                   source_epochs=long_epochs)
                if short and (model, dataset, "bcnn-small", seed) not in done:
                    width, reference = small_width(model, test_set)
                    add_trained(data, model, dataset, "bcnn-small", seed, steps, test_set, train_set, common,
                                width=width, reference_weights=reference)
                if short and not MODELS[model][2] and (model, dataset, "fp", seed) not in done:
                    add_trained(data, model, dataset, "fp", seed, steps, test_set, train_set, common)
                sources = [r for r in data["runs"] if (r["model"], r["dataset"], r["seed"]) == (model, dataset, seed)
                           and r["variant"] in args.int8_stem and current_recipe(r)]
                for source in sources:
                    if (f"{model}-int8stem", dataset, source["variant"], seed) not in done:
                        add_int8_stem(data, source, test_set, train_set)
                print(json.dumps(data["runs"][-1]), flush=True)


if __name__ == "__main__":
    main()
