"""Why a pruned BCNN reads so much lower 'as trained' than with its BatchNorm statistics re-estimated (issue 19).

The 20x NIN of ``bcnn_accuracy.py`` reads 36.6% with the running statistics its training left and 46.6% once
they are re-estimated (the 'BN re-est.' column), while the unpruned BCNN loses a point to the same step. Two
explanations fit that gap: the running statistics were gathered while every other layer normalised with its
batch's own statistics (then only a sequential, one-BatchNorm-at-a-time estimate helps), or they trail weights
that were still changing when training stopped (then any fresh estimate helps, even in train mode). For each
committed BCNN checkpoint (``benchmarks/checkpoints/``, nothing trained here), the test accuracy with:

  as trained     the running statistics the training left
  ema +5         those statistics updated by 5 more train-mode batches of 128 at the training's momentum
                 (0.1), no weight change: 59% of the old averages stay
  all at once    statistics re-estimated exactly (momentum None) on 4,096 training frames in train mode, every
                 BatchNorm in the same passes, sampling seeds 0, 1, 2
  sequential     the deployment step of ``prunus bcnn prune`` (one BatchNorm at a time, the earlier ones in eval
                 mode), seed 0, 4,096 frames

and the learning rate of the checkpoint's last epoch (the cosine schedule sets one lr per epoch).

    python benchmarks/bcnn_bn_statistics.py [--continue] [--render]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from common import PINNED, RESULTS, add_results_flags, add_row, other_machines_note, render_only, write_result

from prunus.data import load_dataset
from prunus.data.loader import epoch_generator
from prunus.environment import environment_info
from prunus.harden.batchnorm import recalibrate_batchnorm, reestimate_batchnorm
from prunus.models.loading import load_model
from prunus.train.trainer import evaluate

NAME = "bcnn_bn_statistics"
#: label -> committed run directory (pruned runs: their retraining) in benchmarks/checkpoints/
CHECKPOINTS = {
    "nin w0.5 bcnn (15 epochs)": "nin-w0.5-modulation-bcnn-e15-bf16-s0",
    "nin w0.5 bcnn-20x (3 + 5)": "nin-w0.5-modulation-bcnn-e15-bf16-s0-slr20x-e3r5-prox/retrain",
    "nin w0.5 bcnn-long (33 epochs)": "nin-w0.5-modulation-bcnn-e33-bf16-s0",
    "nin w0.5 bcnn-long-2x": "nin-w0.5-modulation-bcnn-e33-bf16-s0-slr2x-e3r5-prox/retrain",
    "nin w0.5 bcnn-long-20x": "nin-w0.5-modulation-bcnn-e33-bf16-s0-slr20x-e3r5-prox/retrain",
    "nin-full bcnn-long (33 epochs)": "nin-full-w1-modulation-bcnn-e33-bf16-compiled-s0",
    "nin-full bcnn-long-20x": "nin-full-w1-modulation-bcnn-e33-bf16-compiled-s0-slr20x-e3r5-prox/retrain",
}
FRAMES, BATCH, EMA_BATCHES, SEEDS = 4096, 128, 5, (0, 1, 2)


def ema_continued(model: torch.nn.Module, train_set, batches: int) -> torch.nn.Module:
    """A copy of ``model`` whose running statistics ``batches`` more train-mode forward passes updated at the
    BatchNorms' own momentum, with the training's forward (bf16 autocast, channels-last); weights unchanged."""
    m = copy.deepcopy(model).train()
    order = torch.randperm(len(train_set.labels), generator=epoch_generator(0, -3))[: batches * BATCH]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for idx in order.split(BATCH):
            m(train_set.images[idx].contiguous(memory_format=torch.channels_last))
    return m.eval()


def row(label: str, train_set, test_set) -> dict:
    t0 = time.perf_counter()
    model, ckpt = load_model(PINNED / CHECKPOINTS[label])
    model.eval()
    all_at_once = []
    for seed in SEEDS:
        m = copy.deepcopy(model)
        recalibrate_batchnorm(m, train_set, batches=FRAMES // BATCH, batch_size=BATCH, seed=seed)
        all_at_once.append(evaluate(m, test_set)["accuracy"])
    sequential = copy.deepcopy(model)
    reestimate_batchnorm(sequential, train_set, frames=FRAMES, seed=0)
    last = ckpt.meta["history"][-1]
    return {"label": label, "checkpoint": CHECKPOINTS[label], "epochs": last["epoch"], "last_epoch_lr": last["lr"],
            "train_accuracy_last_epoch": last["train_accuracy"], "as_trained": evaluate(model, test_set)["accuracy"],
            "ema_continued": evaluate(ema_continued(model, train_set, EMA_BATCHES), test_set)["accuracy"],
            "all_at_once": all_at_once, "sequential": evaluate(sequential, test_set)["accuracy"],
            "seconds": time.perf_counter() - t0}


def summarize(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"## Why pruned BCNNs read low 'as trained': stale BatchNorm statistics (`benchmarks/{NAME}.py`)",
        "",
        "The committed BCNN checkpoints of `bcnn_accuracy.py` (modulation test set, 3,300 frames), no weight "
        "changed. *as trained*: the running statistics the training left; *EMA +5*: those updated by "
        f"{EMA_BATCHES} more train-mode batches of {BATCH} at the training's momentum 0.1 (59% of the old averages "
        f"stay); *all at once*: re-estimated exactly on {FRAMES:,} training frames in train mode (mean ± std over "
        f"sampling seeds {', '.join(map(str, SEEDS))}); *sequential*: the deployment step of `prunus bcnn prune` "
        "(one BatchNorm at a time, the earlier ones in eval mode; seed 0). *last-epoch lr*: the cosine schedule "
        "sets one learning rate per epoch, so a 5-epoch retraining ends at 9.5% of its lr and a 33-epoch training "
        f"at 0.2%. Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}."
        + other_machines_note(data),
        "",
        "| checkpoint | epochs | last-epoch lr | train acc. (last epoch, train mode) % | as trained % | EMA +5 % "
        "| all at once % | sequential % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = list(CHECKPOINTS)
    for r in sorted(data["runs"], key=lambda r: order.index(r["label"])):
        spread = (f"{statistics.mean(r['all_at_once']):.2f} ± {statistics.stdev(r['all_at_once']):.2f}"
                  if len(r["all_at_once"]) > 1 else f"{r['all_at_once'][0]:.2f}")
        lines.append(f"| {r['label']} | {r['epochs']} | {r['last_epoch_lr']:.2g} | "
                     f"{r['train_accuracy_last_epoch']:.2f} | {r['as_trained']:.2f} | {r['ema_continued']:.2f} | "
                     f"{spread} | {r['sequential']:.2f} |")
    lines += ["", "What the rows show (computed from them):", ""] + findings(data["runs"])
    return "\n".join(lines) + "\n"


def findings(runs: list[dict]) -> list[str]:
    """The gap 'as trained' leaves, and how much of it a train-mode (all at once) estimate already closes."""
    out = []
    for r in sorted(runs, key=lambda r: list(CHECKPOINTS).index(r["label"])):
        gap = r["sequential"] - r["as_trained"]
        once = statistics.mean(r["all_at_once"]) - r["as_trained"]
        share = f"{100 * once / gap:.0f}% of it" if gap > 1 else "-"
        out.append(f"- {r['label']}: sequential - as trained {gap:+.2f} pt; all at once - as trained {once:+.2f} pt "
                   f"({share}); EMA +5 - as trained {r['ema_continued'] - r['as_trained']:+.2f} pt")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return
    path = RESULTS / f"{NAME}.json"
    data = json.loads(path.read_text()) if args.cont and path.exists() else None
    if data is None:
        data = {"benchmark": NAME, "environment": environment_info(), "frames": FRAMES, "seeds": list(SEEDS),
                "runs": []}
    train_set, test_set = load_dataset("modulation", "train"), load_dataset("modulation", "test")
    done = {r["label"] for r in data["runs"]}
    for label in args.checkpoints:
        if label not in done:
            add_row(data, row(label, train_set, test_set))
            print(json.dumps(data["runs"][-1]), flush=True)
            write_result(NAME, data, summarize(data))


if __name__ == "__main__":
    main()
