"""The quantization job (``prunus quantize``): a pruned or dense checkpoint onto k-bit levels, fine-tuned, exported."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from prunus.constraints.levels import QuantScheme
from prunus.deploy.compressed import REST, export_compressed, load_compressed, round_rest
from prunus.errors import ConfigError
from prunus.harden.keepers import MaskKeeper, QuantKeeper
from prunus.io import save_checkpoint, write_json_atomic
from prunus.jobs.common import fixed_batch, load_run_input
from prunus.jobs.prune import PruneConfig, make_method
from prunus.methods import batch_closure
from prunus.plan.quant import QuantPlan
from prunus.train.distributed import pick_device
from prunus.train.rundir import check_run_dir, create_run_dir
from prunus.train.trainer import Trainer, evaluate

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
        method = make_method(prune_cfg, model, plan, batch_closure(model, x.to(dev), y.to(dev), F.cross_entropy))
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
