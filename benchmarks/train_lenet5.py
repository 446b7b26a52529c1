"""LeNet-5 trained by prunus' reference loop on full Fashion-MNIST (the foundation's figure).

Target (issue 2): at least 90.0% test accuracy in at most 15 epochs.
Runs the same code as `prunus train --model lenet5 --dataset fashion-mnist --epochs 15`
for three seeds and records accuracy per epoch and wall time.

    python benchmarks/train_lenet5.py [--epochs 15] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

from common import mean_std, write_result

from prunus.environment import environment_info
from prunus.train.config import TrainConfig
from prunus.train.run import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()

    runs = []
    for seed in args.seeds:
        config = TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=args.epochs, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            trainer = train(config, f"{tmp}/run")
            wall = time.perf_counter() - t0
        hist = trainer.history
        runs.append(
            {
                "seed": seed,
                "final_test_accuracy": hist[-1]["test_accuracy"],
                "best_test_accuracy": max(h["test_accuracy"] for h in hist),
                "first_epoch_at_90": next((h["epoch"] for h in hist if h["test_accuracy"] >= 90.0), None),
                "wall_seconds": wall,
                "history": hist,
            }
        )
    config = dataclasses.asdict(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=args.epochs))
    config.pop("seed")
    data = {"benchmark": "train_lenet5", "config": config, "seeds": args.seeds, "environment": environment_info(),
            "runs": runs}
    final = [r["final_test_accuracy"] for r in runs]
    walls = [r["wall_seconds"] for r in runs]
    env = data["environment"]
    table = f"""## LeNet-5 on Fashion-MNIST, dense (`benchmarks/train_lenet5.py`)

`prunus train --model lenet5 --dataset fashion-mnist --epochs {args.epochs}`: SGD (momentum {config['momentum']},
weight decay {config['weight_decay']}), lr {config['lr']} with a cosine schedule, batch {config['batch_size']}, \
no augmentation;
60,000 training and 10,000 test images. Seeds {', '.join(map(str, args.seeds))}.
Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads).

| epochs | test accuracy % (mean ± std) | min over seeds | first epoch >= 90% (per seed) | wall time per run, s |
|---|---|---|---|---|
| {args.epochs} | {mean_std(final)} | {min(final):.2f} | {', '.join(str(r['first_epoch_at_90']) for r in runs)} | \
{statistics.mean(walls):.1f} |

Target: >= 90.0% in at most 15 epochs: **{'met' if min(final) >= 90.0 else 'NOT met'}** (every seed).
"""
    write_result("train_lenet5", data, table)
    print(table)


if __name__ == "__main__":
    main()
