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

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from prunus.checkpoint import save_checkpoint, write_json_atomic
from prunus.data import load_dataset
from prunus.data.loader import epoch_generator
from prunus.errors import ConfigError, MissingDependencyError
from prunus.batchnorm import recalibrate_batchnorm
from prunus.masks import CompressionReport, MaskKeeper
from prunus.methods import ADMM, SLR, Magnitude, PruningMethod, Reweighted, batch_closure
from prunus.plan import Plan
from prunus.compressed import REST, export_compressed, load_compressed, round_rest
from prunus.quantize import QuantKeeper, QuantPlan, QuantScheme
from prunus.training import TrainConfig, Trainer, check_run_dir, create_run_dir, evaluate, load_model, pick_device

METHOD_NAMES = ("slr", "admm", "reweighted", "magnitude", "gradual")
RHO_SCHEDULES = ("budget", "fixed")
#: SLR and ADMM round every 100 batches unless told otherwise: with a round per epoch a short budget gives rho
#: only a few steps to grow (slr_tuning.py found 100 batches best)
METHOD_UPDATE_EVERY = {"slr": 100, "admm": 100}


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
    #: batches between method rounds; None = the method's default (METHOD_UPDATE_EVERY, else once per epoch);
    #: 0 = once per epoch
    update_every: int | None = None
    closure_samples: int = 2048  # training samples SLR evaluates f(W) on for its conditions
    #: SLR/ADMM: "budget" grows rho so the weights reach the set by the last round (prunus.methods.schedule);
    #: "fixed" keeps rho (or grows it by the rho_factor option)
    rho_schedule: str = "budget"
    #: batches of BatchNorm recalibration after the hard-prune (0: none); reported on its own, on a copy
    bn_recalibrate: int = 0
    channels_last: bool = False  # NHWC training (faster CPU convolutions, see TrainConfig)
    options: dict[str, Any] = field(default_factory=dict)  # rho, s0, M, r, rho_factor, rho_max, tol (SLR/ADMM); lam, eps (reweighted)

    def validate(self) -> "PruneConfig":
        if self.method not in METHOD_NAMES:
            raise ConfigError(f"--method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")
        if self.epochs < 0 or self.retrain_epochs < 0:
            raise ConfigError(f"--epochs and --retrain-epochs must be >= 0, got {self.epochs} and {self.retrain_epochs}")
        if self.method in ("slr", "admm", "reweighted", "gradual") and self.epochs < 1:
            raise ConfigError(f"--method {self.method} needs --epochs >= 1 (its pruning budget)")
        if self.rho_schedule not in RHO_SCHEDULES:
            raise ConfigError(f"--rho-schedule must be one of {', '.join(RHO_SCHEDULES)}, got {self.rho_schedule!r}")
        if self.rho_schedule == "budget" and "rho_factor" in self.options:
            raise ConfigError("--rho-factor grows rho by a fixed factor; use it with --rho-schedule fixed")
        if self.bn_recalibrate < 0:
            raise ConfigError(f"--bn-recalibrate must be a number of batches >= 0, got {self.bn_recalibrate}")
        return self

    def rounds_every(self) -> int | None:
        """Batches between the method's rounds (None: one round per epoch)."""
        if self.update_every == 0:
            return None
        return self.update_every if self.update_every is not None else METHOD_UPDATE_EVERY.get(self.method)

    def planned_rounds(self, batches_per_epoch: int) -> int:
        """How many method rounds the pruning epochs make (a round per epoch or every rounds_every() batches)."""
        every = self.rounds_every()
        if every:
            return max(self.epochs * batches_per_epoch // every, 1)
        return max(self.epochs, 1)

    def train_config(self, epochs: int, lr: float, schedule: str) -> TrainConfig:
        return TrainConfig(
            epochs=max(epochs, 1), batch_size=self.batch_size, optimizer=self.optimizer, lr=lr,
            weight_decay=self.weight_decay, schedule=schedule, seed=self.seed, channels_last=self.channels_last,
        ).validate()


def make_method(name: str, model, plan: Plan, config: PruneConfig, closure, batches_per_epoch: int | None = None
                ) -> PruningMethod:
    """The method of a run; with ``batches_per_epoch`` and the budget schedule, SLR/ADMM know their rounds."""
    opts = dict(config.options)
    if name in ("slr", "admm") and config.rho_schedule == "budget" and batches_per_epoch is not None:
        opts["rounds"] = config.planned_rounds(batches_per_epoch)
        if config.optimizer == "sgd":
            # a plain gradient step on the penalty rho/2 ||W - Z||^2 overshoots once lr * rho > 1 and diverges past
            # 2 (Adam's steps are bounded by lr, so there rho may grow freely): stop where one step lands on Z
            opts.setdefault("rho_max", 1.0 / config.lr)
    try:
        if name == "slr":
            return SLR(model, plan, update_every=config.rounds_every(), closure=closure, **opts)
        if name == "admm":
            return ADMM(model, plan, update_every=config.rounds_every(), closure=closure, **opts)
        if name == "reweighted":
            return Reweighted(model, plan, update_every=config.rounds_every(), **opts)
        if name == "magnitude":
            return Magnitude(model, plan, **opts)
        return Magnitude(model, plan, gradual=True, rounds=max(config.epochs - 1, 1), **opts)
    except TypeError as e:
        raise ConfigError(f"--method {name}: invalid option ({e})") from None
    except ValueError as e:
        raise ConfigError(f"--method {name}: {e}") from None


def load_run_input(init: str | Path, data_dir: str | None, download: bool):
    """The model of checkpoint ``init``, its run metadata, and the train and test sets it was trained on."""
    model, ckpt = load_model(init)
    dataset = ckpt.meta.get("dataset", {})
    if "name" not in dataset:
        raise ConfigError(f"--init {init}: the checkpoint does not record its dataset")
    train_set = load_dataset(dataset["name"], "train", data_dir=data_dir, download=download, image_size=dataset.get("image_size"))
    test_set = load_dataset(dataset["name"], "test", data_dir=data_dir, download=download, image_size=dataset.get("image_size"))
    meta = {"model": ckpt.meta["model"], "dataset": dataset, "init": str(ckpt.path)}
    return model, ckpt, meta, train_set, test_set


def couple_if_possible(model, plan: Plan, example: torch.Tensor, console: Console) -> Plan:
    """A filter plan with its channel sets (:func:`prunus.coupling.couple_plan`) when torch-pruning is there.

    The method then constrains each filter with its bias and BatchNorm and the convs coupled to it,
    and its hard-prune zeroes whole channel sets, so everything pruned is physically removable.
    """
    plan.resolve(model)
    try:
        from prunus.coupling import couple_plan

        return couple_plan(model, plan, example)
    except MissingDependencyError as e:
        console.print(f"note: {e}; filters are projected per tensor (their BatchNorms and residual adds are not "
                      "pruned with them, so such channels may not be removable)")
        return plan


def distance_table(history: list[dict[str, Any]]) -> Table:
    """Per constrained tensor: how far the weights were from the set after the first and the last round."""
    first, last = history[0], history[-1]
    t = Table(title=f"distance to the constraint set ||W - Pi(W)|| / ||W|| after {len(history)} rounds "
                    f"(overall {first['distance']:.3g} -> {last['distance']:.3g})")
    for col in ("tensor", "round 1", f"round {len(history)}"):
        t.add_column(col, justify="left" if col == "tensor" else "right")
    for name, d in last["distances"].items():
        t.add_row(name, f"{first['distances'].get(name, float('nan')):.3g}", f"{d:.3g}")
    return t


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
    model, ckpt, meta, train_set, test_set = load_run_input(init, data_dir, download)
    plan = couple_if_possible(model, plan, train_set.images[:2], console)  # also validates before anything is written
    dev = pick_device(device)
    model.to(dev)

    def test_accuracy() -> float:
        return evaluate(model, test_set, device=dev)["accuracy"]

    results: dict[str, Any] = {"config": dataclasses.asdict(config), "init": str(ckpt.path)}
    results["dense_accuracy"] = test_accuracy()
    torch.manual_seed(config.seed)
    x, y = fixed_batch(train_set, config.closure_samples, config.seed)
    # built before the run directory, so a bad option leaves nothing behind (one-shot magnitude prunes here)
    train_config = config.train_config(config.epochs, config.lr, config.schedule)
    method = make_method(config.method, model, plan, config, batch_closure(model, x.to(dev), y.to(dev), F.cross_entropy),
                         batches_per_epoch=math.ceil(len(train_set.labels) / config.batch_size))
    if config.method == "magnitude":  # one-shot: pruned here, before any training
        results["pruned_at_start_accuracy"] = test_accuracy()
    create_run_dir(run_dir)
    write_json_atomic(run_dir / "plan.json", plan.to_dict())
    console.print(f"dense: test accuracy {results['dense_accuracy']:.2f}%")
    t0 = time.perf_counter()
    if config.epochs > 0:
        Trainer(model, train_set, test_set, train_config, run_dir / "prune",
                device=dev, hooks=[method], meta=meta, console=console).fit()
    results["prune_seconds"] = time.perf_counter() - t0
    results["method_history"] = method.history
    if method.history and "distances" in method.history[-1]:
        console.print(distance_table(method.history))

    masks = method.hard_prune()
    results["hard_pruned_accuracy"] = test_accuracy()
    console.print(f"hard-pruned ({config.method}, no retraining): test accuracy {results['hard_pruned_accuracy']:.2f}%")
    save_checkpoint(run_dir / "hard-pruned", model.state_dict(), {"masks": {"masks": masks}}, {**meta, "epoch": -1})
    if config.bn_recalibrate:
        recalibrated = copy.deepcopy(model)  # a column of its own: retraining goes on from the hard-pruned model
        recalibrate_batchnorm(recalibrated, train_set, batches=config.bn_recalibrate, batch_size=config.batch_size,
                              seed=config.seed, device=dev)
        results["bn_recalibrated_accuracy"] = evaluate(recalibrated, test_set, device=dev)["accuracy"]
        console.print(f"hard-pruned + BatchNorm recalibration ({config.bn_recalibrate} batches, no gradient step): "
                      f"test accuracy {results['bn_recalibrated_accuracy']:.2f}%")
        del recalibrated

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


QUANT_METHODS = ("slr", "admm", "none")


@dataclass
class QuantizeConfig:
    """A quantization run: method epochs (SLR/ADMM project onto the levels), hard-quantize, STE fine-tuning."""

    scheme: str = "4"  # binary, ternary, 4 (= fixed:4), pow2:4 ...
    per_channel: bool = False
    method: str = "slr"  # or admm, or none (hard-quantize the input model directly)
    epochs: int = 3
    finetune_epochs: int = 2
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    finetune_lr: float | None = None  # default: lr / 10
    finetune_schedule: str = "constant"  # cosine: decays to ~0, so the result does not hang on the last batches
    seed: int = 0
    update_every: int | None = None
    closure_samples: int = 2048
    rest: str = "float16"  # how the tensors that are not quantized are rounded and stored: float32, float16, int8
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "QuantizeConfig":
        QuantScheme.parse(self.scheme, self.per_channel)
        if self.method not in QUANT_METHODS:
            raise ConfigError(f"--method must be one of {', '.join(QUANT_METHODS)}, got {self.method!r}")
        if self.epochs < 0 or self.finetune_epochs < 0:
            raise ConfigError(f"--epochs and --finetune-epochs must be >= 0, got {self.epochs} and {self.finetune_epochs}")
        if self.method != "none" and self.epochs < 1:
            raise ConfigError(f"--method {self.method} needs --epochs >= 1")
        if self.rest not in REST:
            raise ConfigError(f"--rest must be one of {', '.join(REST)}, got {self.rest!r}")
        return self


def run_quantization(
    init: str | Path,
    config: QuantizeConfig,
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Quantize every Conv2d/Linear weight of checkpoint ``init``; zeros of a pruned model stay zero.

    Writes ``RUN_DIR/method/`` (SLR/ADMM epochs), ``RUN_DIR/finetune/`` (STE),
    ``RUN_DIR/model.pcz`` (the compressed file), ``RUN_DIR/quantized/`` (a normal
    checkpoint of the same weights) and ``RUN_DIR/results.json``.
    """
    config.validate()
    console = console or Console()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=False)
    model, ckpt, meta, train_set, test_set = load_run_input(init, data_dir, download)
    dev = pick_device(device)
    model.to(dev)
    plan = QuantPlan.for_pruned(model, config.scheme, config.per_channel)
    masks = {n: m for n, m in plan.masks.items() if not bool(m.all())}

    def test_accuracy() -> float:
        return evaluate(model, test_set, device=dev)["accuracy"]

    results: dict[str, Any] = {"config": dataclasses.asdict(config), "init": str(ckpt.path), "scheme": str(plan.scheme)}
    results["input_accuracy"] = test_accuracy()
    console.print(f"input model: test accuracy {results['input_accuracy']:.2f}%")
    # onto quantization levels every entry is constrained (none is free to train as the kept weights of a
    # pruning plan are), and rounds stay once per epoch (0) with a fixed rho unless asked: the measured recipe
    prune_cfg = PruneConfig(method=config.method if config.method != "none" else "slr", epochs=max(config.epochs, 1),
                            batch_size=config.batch_size, optimizer=config.optimizer, lr=config.lr, seed=config.seed,
                            update_every=config.update_every if config.update_every is not None else 0,
                            rho_schedule="fixed", options={"penalize": "all", **config.options})
    method = None
    if config.method != "none":
        torch.manual_seed(config.seed)
        x, y = fixed_batch(train_set, config.closure_samples, config.seed)
        method = make_method(config.method, model, plan, prune_cfg, batch_closure(model, x.to(dev), y.to(dev), F.cross_entropy))
    create_run_dir(run_dir)
    t0 = time.perf_counter()
    if method is not None:
        hooks = [method] + ([MaskKeeper(model, masks)] if masks else [])
        Trainer(model, train_set, test_set, prune_cfg.train_config(config.epochs, config.lr, "cosine"), run_dir / "method",
                device=dev, hooks=hooks, meta=meta, console=console).fit()
        results["method_history"] = method.history
    results["method_seconds"] = time.perf_counter() - t0

    keeper = QuantKeeper(model, plan)  # hard-quantize: project onto the levels with least-squares scales
    results["hard_quantized_accuracy"] = test_accuracy()
    console.print(f"hard-quantized ({plan.scheme}, {config.method}): test accuracy {results['hard_quantized_accuracy']:.2f}%")
    results["finetune_accuracy"] = []
    if config.finetune_epochs > 0:
        lr = config.finetune_lr if config.finetune_lr is not None else config.lr / 10
        history = Trainer(model, train_set, test_set, prune_cfg.train_config(config.finetune_epochs, lr, config.finetune_schedule),
                          run_dir / "finetune", device=dev, hooks=[keeper], meta=meta, console=console).fit()
        results["finetune_accuracy"] = [h["test_accuracy"] for h in history]
    round_rest(model, skip=set(keeper.state), rest=config.rest)
    results["final_accuracy"] = test_accuracy()

    size = export_compressed(model, keeper, meta, run_dir / "model.pcz", rest=config.rest)
    reloaded, _ = load_compressed(run_dir / "model.pcz")
    results["reloaded_accuracy"] = evaluate(reloaded, test_set, device=dev)["accuracy"]
    if results["reloaded_accuracy"] != results["final_accuracy"]:
        raise RuntimeError(f"the exported model evaluates to {results['reloaded_accuracy']}%, not {results['final_accuracy']}%")
    save_checkpoint(run_dir / "quantized", model.state_dict(), {}, {**meta, "epoch": -1, "quantization": str(plan.scheme)})
    results["size"] = size.to_dict()
    nonzero = sum(int(m.sum()) for m in plan.masks.values())
    results["quantized_weights"] = {"total": sum(m.numel() for m in plan.masks.values()), "nonzero": nonzero}
    console.print(
        f"final ({plan.scheme}, {config.rest} others): test accuracy {results['final_accuracy']:.2f}%; "
        f"{size.file_bytes:,} bytes vs {size.dense_fp32_bytes:,} dense fp32 = {size.ratio:.1f}x smaller "
        f"({run_dir / 'model.pcz'}, reloaded: {results['reloaded_accuracy']:.2f}%)"
    )
    write_json_atomic(run_dir / "results.json", results)
    return results
