"""The quantization job (``prunus quantize``): a pruned or dense checkpoint onto k-bit levels, fine-tuned, exported."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from prunus.constraints.levels import QuantScheme
from prunus.deploy.compressed import REST, export_compressed, load_compressed, round_rest
from prunus.errors import CheckpointError, ConfigError
from prunus.harden.keepers import MaskKeeper, QuantKeeper
from prunus.io import save_checkpoint, write_json_atomic
from prunus.jobs.common import JOB_FILE, JobInput, Resources, read_job, write_job
from prunus.jobs.prune import PruneConfig, make_method
from prunus.plan.quant import QuantPlan
from prunus.train.rundir import check_run_dir, create_run_dir

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
    precision: str = "fp32"  # the forward pass of the method epochs and the fine-tuning (see TrainConfig)
    compile: bool = False  # torch.compile their training steps (see TrainConfig)
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> QuantizeConfig:
        QuantScheme.parse(self.scheme, self.per_channel)
        if self.method not in QUANT_METHODS:
            raise ConfigError(f"--method must be one of {', '.join(QUANT_METHODS)}, got {self.method!r}")
        if self.epochs < 0 or self.finetune_epochs < 0:
            raise ConfigError(f"--epochs and --finetune-epochs must be >= 0, got {self.epochs} and "
                              f"{self.finetune_epochs}")
        if self.method != "none" and self.epochs < 1:
            raise ConfigError(f"--method {self.method} needs --epochs >= 1")
        if self.rest not in REST:
            raise ConfigError(f"--rest must be one of {', '.join(REST)}, got {self.rest!r}")
        if self.finetune_lr is not None and not (math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise ConfigError(f"--finetune-lr must be a positive number, got {self.finetune_lr}")
        self.method_config().validate()  # lr, batch size, method options: checked before any writing
        return self

    def method_config(self) -> PruneConfig:
        """The SLR/ADMM run onto the levels: every entry is constrained (none trains freely as a pruning plan's kept
        weights do), rounds once per epoch (0) with a fixed rho unless asked: the recipe the benchmarks measured."""
        return PruneConfig(method=self.method if self.method != "none" else "slr", epochs=max(self.epochs, 1),
                           batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr, seed=self.seed,
                           update_every=self.update_every if self.update_every is not None else 0,
                           rho_schedule="fixed", precision=self.precision, compile=self.compile,
                           options={"penalize": "all", **self.options})


def run_quantization(
    init: str | Path | None,
    config: QuantizeConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    resources: Resources | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Quantize every Conv2d/Linear weight of checkpoint ``init``; zeros of a pruned model stay zero.

    Writes ``RUN_DIR/method/`` (SLR/ADMM epochs), ``RUN_DIR/finetune/`` (STE),
    ``RUN_DIR/model.pcz`` (the compressed file), ``RUN_DIR/quantized/`` (a normal
    checkpoint of the same weights) and ``RUN_DIR/results.json``. ``resume=True`` continues an
    interrupted run from ``RUN_DIR/job.json``: each phase resumes from its newest checkpoint (a
    finished method phase restores its last epoch, so the hard quantization is made from the same
    weights) and the result equals an uninterrupted run's.
    """
    console = console or Console()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    if resume:
        init, config = read_quantize_job(run_dir)
    config.validate()
    job = JobInput.load(init, resources)  # under torchrun, joins the process group: every rank has checked run_dir
    console = job.console(console)
    plan = QuantPlan.for_pruned(job.model, config.scheme, config.per_channel)
    results: dict[str, Any] = {"config": dataclasses.asdict(config), "init": str(job.path), "scheme": str(plan.scheme),
                               "input_accuracy": job.accuracy()}
    console.print(f"input model: test accuracy {results['input_accuracy']:.2f}%")
    method_config = config.method_config()
    method = None
    if config.method != "none":  # built before the run directory: a bad option leaves nothing behind
        torch.manual_seed(config.seed)
        closure = job.closure(config.closure_samples, config.seed, config.compile)
        method = make_method(method_config, job.model, plan, closure)
    if job.dist.is_main:
        create_run_dir(run_dir)
        if not resume:
            write_job(run_dir, "quantize", job.path, config=dataclasses.asdict(config))
    t0 = time.perf_counter()
    if method is not None:
        masks = {n: m for n, m in plan.masks.items() if not bool(m.all())}  # a pruned model's zeros stay zero
        hooks = [method] + ([MaskKeeper(job.model, masks)] if masks else [])
        job.trainer(method_config.train_config(config.epochs, config.lr, "cosine"), run_dir / "method", hooks,
                    console).fit(resume=resume)
        results["method_history"] = method.history
        results["ranks"] = job.rank_digests(method_state=method.state_dict())
    results["method_seconds"] = time.perf_counter() - t0
    keeper = _harden_and_finetune(job, plan, config, method_config, run_dir, results, console, resume)
    results.setdefault("ranks", {}).update(job.rank_digests(model=job.model.state_dict(), quantizer=keeper.state))
    if job.dist.is_main:  # the other ranks hold the same weights (the digests above say so)
        _export(job, keeper, plan, config, run_dir, results, console)
        write_json_atomic(run_dir / "results.json", results)
    return results


def _harden_and_finetune(job: JobInput, plan: QuantPlan, config: QuantizeConfig, method_config: PruneConfig,
                         run_dir: Path, results: dict, console: Console, resume: bool) -> QuantKeeper:
    """Hard-quantize (least-squares scales) and fine-tune straight-through; the other tensors rounded as ``rest``."""
    keeper = QuantKeeper(job.model, plan)
    results["hard_quantized_accuracy"] = job.accuracy()
    console.print(f"hard-quantized ({plan.scheme}, {config.method}): "
                  f"test accuracy {results['hard_quantized_accuracy']:.2f}%")
    results["finetune_accuracy"] = []
    if config.finetune_epochs > 0:
        lr = config.finetune_lr if config.finetune_lr is not None else config.lr / 10
        tcfg = method_config.train_config(config.finetune_epochs, lr, config.finetune_schedule)
        history = job.trainer(tcfg, run_dir / "finetune", [keeper], console).fit(resume=resume)
        results["finetune_accuracy"] = [h["test_accuracy"] for h in history]
    round_rest(job.model, skip=set(keeper.state), rest=config.rest)
    results["final_accuracy"] = job.accuracy()
    return keeper


def read_quantize_job(run_dir: Path) -> tuple[str, QuantizeConfig]:
    """What an interrupted quantization run was started with: its input checkpoint and config."""
    job = read_job(run_dir, "quantize")
    try:
        return job["init"], QuantizeConfig(**job["config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"--resume {run_dir}: {run_dir / JOB_FILE} is damaged ({e})") from None


def _export(job: JobInput, keeper: QuantKeeper, plan: QuantPlan, config: QuantizeConfig, run_dir: Path, results: dict,
            console: Console) -> None:
    """``model.pcz`` (checked: the reloaded file gives the same accuracy) and a normal checkpoint of the same
    weights."""
    size = export_compressed(job.model, keeper, job.meta, run_dir / "model.pcz", rest=config.rest)
    reloaded, _ = load_compressed(run_dir / "model.pcz")
    results["reloaded_accuracy"] = job.accuracy(reloaded)
    if results["reloaded_accuracy"] != results["final_accuracy"]:
        raise RuntimeError(f"the exported model evaluates to {results['reloaded_accuracy']}%, "
                           f"not {results['final_accuracy']}%")
    save_checkpoint(run_dir / "quantized", job.model.state_dict(), {},
                    {**job.meta, "epoch": -1, "quantization": str(plan.scheme)})
    results["size"] = size.to_dict()
    nonzero = sum(int(m.sum()) for m in plan.masks.values())
    results["quantized_weights"] = {"total": sum(m.numel() for m in plan.masks.values()), "nonzero": nonzero}
    console.print(
        f"final ({plan.scheme}, {config.rest} others): test accuracy {results['final_accuracy']:.2f}%; "
        f"{size.file_bytes:,} bytes vs {size.dense_fp32_bytes:,} dense fp32 = {size.ratio:.1f}x smaller "
        f"({run_dir / 'model.pcz'}, reloaded: {results['reloaded_accuracy']:.2f}%)"
    )
