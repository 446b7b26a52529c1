"""What was tried to tune SLR (and ADMM) for hard-pruned accuracy on LeNet-5 / Fashion-MNIST.

One seed, the same dense checkpoint and plan as `retrain_free.py` (global
unstructured, first and last layer dense), 6 pruning epochs, no retraining: the
hard-pruned accuracy of prunus' defaults and of the papers' setting (rho fixed) with
one of rho, its growth, s0, M or how often the method's rounds run changed. This is
the record behind the settings `retrain_free.py` compares; it is a search, so read it
as one seed.

    python benchmarks/slr_tuning.py [--rates 20 50] [--continue] [--render]

The dense model's accuracy is evaluated in the run (not read from the checkpoint's metadata) and its
file's sha256 recorded. Each setting is written as it finishes; --continue keeps them (refused when they
come from another dense file) and runs only the missing ones.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

from common import (FROM_METADATA, add_results_flags, check_same_settings, continued_or_new, dense_sentence,
                    render_only, write_result)
from retrain_free import dense_checkpoint
from rich.console import Console

from prunus.data import load_dataset
from prunus.jobs.prune import PruneConfig, run_pruning
from prunus.models.loading import load_model
from prunus.plan.recipe import Plan, ratio_for_compression



def paper(update_every: int, **options) -> dict:
    """PruneConfig fields of the papers' setting (rho fixed at 0.1, the penalty on every entry) with ``options``
    changed; ``update_every`` 0: a round per epoch."""
    return {"rho_schedule": "fixed", "update_every": update_every, "options": {"penalize": "all", **options}}


SETTINGS = [  # (label, method, PruneConfig fields)
    ("slr, prunus' defaults (rho grown by the budget, the penalty on the removed entries, a round every 100 batches)",
     "slr", {}),
    ("admm, prunus' defaults (the same)", "admm", {}),
    ("slr, the paper's setting (rho 0.1 fixed, s0 0.01, M 300, r 0.1, the penalty on every entry), a round per "
     "epoch", "slr", paper(0)),
    ("slr, paper + rho 1.0", "slr", paper(0, rho=1.0)),
    ("slr, paper + rho growing x1.3 per round up to 1.0", "slr", paper(0, rho_factor=1.3, rho_max=1.0)),
    ("slr, paper + s0 0.1", "slr", paper(0, s0=0.1)),
    ("slr, paper + M 50", "slr", paper(0, M=50.0)),
    ("slr, paper + a round every 100 batches", "slr", paper(100)),
    ("slr, paper + rho 0.03, a round every 50 batches", "slr", paper(50, rho=0.03)),
    ("admm, the paper's setting (rho 0.1 fixed, the penalty on every entry), a round per epoch", "admm", paper(0)),
    ("admm, paper + rho 1.0", "admm", paper(0, rho=1.0)),
    ("admm, paper + a round every 100 batches", "admm", paper(100)),
]
NAME = "slr_tuning"


def summarize(data: dict) -> str:
    rates = list(data["rows"][0]["hard_pruned"])  # "20", "50": the rates run, in their order
    head = " | ".join(f"{r}x hard-pruned | {r}x residual" for r in rates)
    lines = [
        f"## SLR / ADMM settings tried (`benchmarks/{NAME}.py`)",
        "",
        f"Dense {data['dense_accuracy']:.2f}%. {dense_sentence(data, FROM_METADATA)} "
        f"Seed {data['seed']}, {data['epochs']} pruning epochs, global unstructured, no retraining; "
        "residual = ||W - Z|| at the last round (how far the weights still are from the constraint set).",
        "",
        f"| setting | {head} |",
        "|---|" + "---|" * (2 * len(rates)),
    ]
    for row in data["rows"]:
        cells = " | ".join(f"{row['hard_pruned'][r]:.2f} | {row['final_residual'][r]:.3f}" for r in rates)
        lines.append(f"| {row['setting']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[20, 50])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    add_results_flags(ap)
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return
    init = dense_checkpoint()
    model, _ = load_model(init)
    data = continued_or_new(args, NAME, init, model, lambda: load_dataset("fashion-mnist", "test"), rows="rows",
                            epochs=args.epochs, seed=args.seed)
    check_same_settings(data, NAME, epochs=args.epochs, seed=args.seed)
    rates = [f"{rate:g}" for rate in args.rates]
    # kept: the settings still in SETTINGS, run as they are now, at exactly the rates asked for (others run again)
    configs = {label: config for label, _, config in SETTINGS}
    data["rows"] = [r for r in data["rows"] if r["setting"] in configs and configs[r["setting"]] == r.get("config")
                    and list(r["hard_pruned"]) == rates]
    done = {r["setting"] for r in data["rows"]}
    for label, method, fields in SETTINGS:
        if label in done:
            continue
        row = {"setting": label, "method": method, "config": fields, "hard_pruned": {}}
        for rate in args.rates:
            plan = Plan.uniform(model, ratio_for_compression(rate), global_unstructured=True)
            config = PruneConfig(method=method, epochs=args.epochs, retrain_epochs=0, seed=args.seed, **fields)
            with tempfile.TemporaryDirectory() as tmp:
                res = run_pruning(init, plan, config, Path(tmp) / "run", console=Console(file=io.StringIO()))
            row["hard_pruned"][f"{rate:g}"] = res["hard_pruned_accuracy"]
            row.setdefault("final_residual", {})[f"{rate:g}"] = res["method_history"][-1]["residual"]
        data["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_result(NAME, data, summarize(data))
    write_result(NAME, data, summarize(data))  # also when nothing ran: rows of settings no longer listed go
    print(summarize(data))


if __name__ == "__main__":
    main()
