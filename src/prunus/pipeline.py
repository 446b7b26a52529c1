"""A whole pruning run: dense checkpoint -> method epochs -> hard-prune -> masked retraining.

This is what ``prunus prune`` runs and what the benchmarks call. It reports the
accuracy that matters for SLR's claim: right after hard-pruning, with no
retraining, and after each retraining epoch. The run directory holds::

    RUN_DIR/plan.json                  the resolved plan
    RUN_DIR/prune/                     a training run with the method as a hook
    RUN_DIR/retrain/                   masked retraining (checkpoint 0 = hard-pruned model)
    RUN_DIR/results.json               accuracies, compression report, wall times
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from prunus.checkpoint import save_checkpoint, write_json_atomic
from prunus.data import load_dataset
from prunus.data.loader import epoch_generator
from prunus.errors import ConfigError
from prunus.masks import CompressionReport, MaskKeeper
from prunus.methods import ADMM, SLR, Magnitude, PruningMethod, Reweighted, batch_closure
from prunus.plan import Plan
from prunus.training import TrainConfig, Trainer, check_run_dir, create_run_dir, evaluate, load_model, pick_device

METHOD_NAMES = ("slr", "admm", "reweighted", "magnitude", "gradual")


@dataclass
class PruneConfig:
    """Everything that decides a pruning run besides the plan; saved in results.json."""

    method: str = "slr"
    epochs: int = 10  # epochs with the method active (the pruning budget)
    retrain_epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    retrain_lr: float | None = None  # default: lr
    schedule: str = "cosine"  # of the pruning epochs
    retrain_schedule: str = "constant"  # so accuracy after epoch e does not depend on the total
    weight_decay: float = 0.0
    seed: int = 0
    update_every: int | None = None  # batches between method rounds; None = once per epoch
    closure_samples: int = 2048  # training samples SLR evaluates f(W) on for its conditions
    options: dict[str, Any] = field(default_factory=dict)  # rho, s0, M, r, rho_factor, rho_max (SLR/ADMM); lam, eps (reweighted)

    def validate(self) -> "PruneConfig":
        if self.method not in METHOD_NAMES:
            raise ConfigError(f"--method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")
        if self.epochs < 0 or self.retrain_epochs < 0:
            raise ConfigError(f"--epochs and --retrain-epochs must be >= 0, got {self.epochs} and {self.retrain_epochs}")
        if self.method in ("slr", "admm", "reweighted", "gradual") and self.epochs < 1:
            raise ConfigError(f"--method {self.method} needs --epochs >= 1 (its pruning budget)")
        return self

    def train_config(self, epochs: int, lr: float, schedule: str) -> TrainConfig:
        return TrainConfig(
            epochs=max(epochs, 1), batch_size=self.batch_size, optimizer=self.optimizer, lr=lr,
            weight_decay=self.weight_decay, schedule=schedule, seed=self.seed,
        ).validate()


def make_method(name: str, model, plan: Plan, config: PruneConfig, closure) -> PruningMethod:
    opts = dict(config.options)
    try:
        if name == "slr":
            return SLR(model, plan, update_every=config.update_every, closure=closure, **opts)
        if name == "admm":
            return ADMM(model, plan, update_every=config.update_every, closure=closure, **opts)
        if name == "reweighted":
            return Reweighted(model, plan, update_every=config.update_every, **opts)
        if name == "magnitude":
            return Magnitude(model, plan, **opts)
        return Magnitude(model, plan, gradual=True, rounds=max(config.epochs - 1, 1), **opts)
    except TypeError as e:
        raise ConfigError(f"--method {name}: invalid option ({e})") from None
    except ValueError as e:
        raise ConfigError(f"--method {name}: {e}") from None


def fixed_batch(dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(dataset.labels), generator=epoch_generator(seed, -1))[:n]
    return dataset.images[idx], dataset.labels[idx]


def run_pruning(
    init: str | Path,
    plan: Plan,
    config: PruneConfig,
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Prune the model of checkpoint ``init`` by ``plan``; returns (and writes) the results."""
    config.validate()
    console = console or Console()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=False)
    model, ckpt = load_model(init)
    dataset = ckpt.meta.get("dataset", {})
    if "name" not in dataset:
        raise ConfigError(f"--init {init}: the checkpoint does not record its dataset")
    train_set = load_dataset(dataset["name"], "train", data_dir=data_dir, download=download, image_size=dataset.get("image_size"))
    test_set = load_dataset(dataset["name"], "test", data_dir=data_dir, download=download, image_size=dataset.get("image_size"))
    plan.resolve(model)  # validate before anything is written
    dev = pick_device(device)
    model.to(dev)
    meta = {"model": ckpt.meta["model"], "dataset": dataset, "init": str(ckpt.path)}

    def test_accuracy() -> float:
        return evaluate(model, test_set, device=dev)["accuracy"]

    results: dict[str, Any] = {"config": dataclasses.asdict(config), "init": str(ckpt.path)}
    results["dense_accuracy"] = test_accuracy()
    torch.manual_seed(config.seed)
    x, y = fixed_batch(train_set, config.closure_samples, config.seed)
    # built before the run directory, so a bad option leaves nothing behind (one-shot magnitude prunes here)
    method = make_method(config.method, model, plan, config, batch_closure(model, x.to(dev), y.to(dev), F.cross_entropy))
    create_run_dir(run_dir)
    write_json_atomic(run_dir / "plan.json", plan.to_dict())
    console.print(f"dense: test accuracy {results['dense_accuracy']:.2f}%")
    t0 = time.perf_counter()
    if config.epochs > 0:
        Trainer(model, train_set, test_set, config.train_config(config.epochs, config.lr, config.schedule), run_dir / "prune",
                device=dev, hooks=[method], meta=meta, console=console).fit()
    results["prune_seconds"] = time.perf_counter() - t0
    results["method_history"] = method.history

    masks = method.hard_prune()
    results["hard_pruned_accuracy"] = test_accuracy()
    console.print(f"hard-pruned ({config.method}, no retraining): test accuracy {results['hard_pruned_accuracy']:.2f}%")
    save_checkpoint(run_dir / "hard-pruned", model.state_dict(), {"masks": {"masks": masks}}, {**meta, "epoch": -1})

    keeper = MaskKeeper(model, masks)
    results["retrain_accuracy"] = []
    t0 = time.perf_counter()
    if config.retrain_epochs > 0:
        retrain = Trainer(model, train_set, test_set,
                          config.train_config(config.retrain_epochs, config.retrain_lr or config.lr, config.retrain_schedule),
                          run_dir / "retrain", device=dev, hooks=[keeper], meta=meta, console=console)
        history = retrain.fit()
        results["retrain_accuracy"] = [h["test_accuracy"] for h in history]
    results["retrain_seconds"] = time.perf_counter() - t0
    keeper.remove()

    report = CompressionReport.of(model, plan, test_set.images[:256].to(dev))
    results["report"] = report.to_dict()
    console.print(report.table())
    write_json_atomic(run_dir / "results.json", results)
    return results
