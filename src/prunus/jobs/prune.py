"""A whole pruning run: dense checkpoint -> method epochs -> hard-prune -> masked retraining."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from prunus.errors import CheckpointError, ConfigError
from prunus.harden.batchnorm import recalibrate_batchnorm
from prunus.harden.keepers import MaskKeeper
from prunus.harden.stats import CompressionReport
from prunus.io import load_checkpoint, save_checkpoint, write_json_atomic
from prunus.jobs.common import JOB_FILE, JobInput, Resources, couple_if_possible, distance_table, read_job, write_job
from prunus.methods.base import PruningMethod
from prunus.methods.registry import METHODS, build_method, method_options
from prunus.models.loading import load_model, load_weights
from prunus.plan.projection import Masks
from prunus.plan.recipe import Plan
from prunus.train.config import SCHEDULES, TrainConfig
from prunus.train.distill import Distillation
from prunus.train.rundir import check_run_dir, create_run_dir

RHO_SCHEDULES = ("budget", "fixed")
#: masked retraining's lr, as a fraction of the pruning lr, when --retrain-lr is not given: fine-tuning, not
#: training again. A hard-pruned model near dense is knocked off it by the pruning lr (benchmarks/retrain_lr.py,
#: VGG-11 2x filter SLR: 92.16% hard-pruned, 89.69% after one epoch at lr 1e-3, 91.96% at 1e-4). BCNNs keep the
#: full lr (prunus.jobs.bcnn: their binary weights must still flip).
RETRAIN_LR_FACTOR = 0.1
#: the fewest method rounds a pruning run makes when --update-every is not given (see PruneConfig.rounds_every)
MIN_ROUNDS = 12


@dataclass
class PruneConfig:
    """Everything that decides a pruning run besides the plan; saved in results.json."""

    method: str = "slr"
    epochs: int = 10  # epochs with the method active (the pruning budget)
    retrain_epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    retrain_lr: float | None = None  # default: lr * RETRAIN_LR_FACTOR
    schedule: str = "cosine"  # of the pruning epochs
    retrain_schedule: str = "constant"  # so accuracy after epoch e does not depend on the total
    weight_decay: float = 0.0
    seed: int = 0
    #: batches between method rounds; None = the method's default (its MethodSpec.update_every, else once per
    #: epoch); 0 = once per epoch
    update_every: int | None = None
    closure_samples: int = 2048  # training samples SLR evaluates f(W) on for its conditions
    #: SLR/ADMM: "budget" grows rho so the weights reach the set by the last round (prunus.methods.schedule);
    #: "fixed" keeps rho (or grows it by the rho_factor option)
    rho_schedule: str = "budget"
    #: batches of BatchNorm recalibration after the hard-prune (0: none); reported on its own, on a copy
    bn_recalibrate: int = 0
    #: masked retraining also distils from the unpruned model (weight alpha of the KL term; 0: off)
    distill: float = 0.0
    distill_temperature: float = 4.0
    channels_last: bool = False  # NHWC training (faster CPU convolutions, see TrainConfig)
    precision: str = "fp32"  # the forward pass of every phase: fp32 or bf16 autocast (see TrainConfig)
    compile: bool = False  # torch.compile every phase's training steps (see TrainConfig)
    # rho, s0, M, r, rho_factor, rho_max, tol (SLR/ADMM); lam, eps (reweighted)
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> PruneConfig:
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        method_options(self.method, self.options, "--method")  # an option of another method is one clear error
        if self.update_every and not METHODS[self.method].batch_rounds:
            raise ConfigError(f"--update-every does not apply to --method {self.method} (it acts once per epoch)")
        if self.epochs < 0 or self.retrain_epochs < 0:
            raise ConfigError(f"--epochs and --retrain-epochs must be >= 0, got {self.epochs} and "
                              f"{self.retrain_epochs}")
        if self.method in ("slr", "admm", "reweighted", "gradual") and self.epochs < 1:
            raise ConfigError(f"--method {self.method} needs --epochs >= 1 (its pruning budget)")
        if self.rho_schedule not in RHO_SCHEDULES:
            raise ConfigError(f"--rho-schedule must be one of {', '.join(RHO_SCHEDULES)}, got {self.rho_schedule!r}")
        if self.rho_schedule == "budget" and "rho_factor" in self.options:
            raise ConfigError("--rho-factor grows rho by a fixed factor; use it with --rho-schedule fixed")
        if self.bn_recalibrate < 0:
            raise ConfigError(f"--bn-recalibrate must be a number of batches >= 0, got {self.bn_recalibrate}")
        if not (math.isfinite(self.distill) and self.distill >= 0):
            raise ConfigError(f"--distill must be a weight >= 0 (0: no distillation), got {self.distill}")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ConfigError(f"--distill-temperature must be a positive number, got {self.distill_temperature}")
        if self.retrain_schedule not in SCHEDULES:
            raise ConfigError(f"--retrain-schedule must be one of {', '.join(SCHEDULES)}, "
                              f"got {self.retrain_schedule!r}")
        if self.retrain_lr is not None and not (math.isfinite(self.retrain_lr) and self.retrain_lr > 0):
            raise ConfigError(f"--retrain-lr must be a positive number, got {self.retrain_lr}")
        self.train_config(self.epochs, self.lr, self.schedule)  # lr, batch size, schedule: checked before any writing
        self.retrain_config()
        return self

    def retrain_config(self) -> TrainConfig:
        """The masked retraining's recipe (``retrain_lr``, else ``lr * RETRAIN_LR_FACTOR``)."""
        lr = self.retrain_lr if self.retrain_lr is not None else self.lr * RETRAIN_LR_FACTOR
        return self.train_config(self.retrain_epochs, lr, self.retrain_schedule)

    def rounds_every(self, batches_per_epoch: int | None = None) -> int | None:
        """Batches between the method's rounds (None: one round per epoch).

        Without ``--update-every`` the method's spacing (100 batches) is shortened, given ``batches_per_epoch``,
        until the pruning epochs make at least MIN_ROUNDS rounds: the budget schedule grows the penalty once a
        round, and a small dataset (the modulation task: 86 batches an epoch, 3 epochs = 2 rounds of 100) would
        reach the hard-prune still far from the set."""
        if self.update_every == 0:
            return None
        if self.update_every is not None:
            return self.update_every
        every = METHODS[self.method].update_every
        if every and batches_per_epoch:
            every = max(1, min(every, self.epochs * batches_per_epoch // MIN_ROUNDS))
        return every

    def planned_rounds(self, batches_per_epoch: int) -> int:
        """How many method rounds the pruning epochs make (a round per epoch or every rounds_every() batches)."""
        every = self.rounds_every(batches_per_epoch)
        if every:
            return max(self.epochs * batches_per_epoch // every, 1)
        return max(self.epochs, 1)

    def train_config(self, epochs: int, lr: float, schedule: str) -> TrainConfig:
        return TrainConfig(
            epochs=max(epochs, 1), batch_size=self.batch_size, optimizer=self.optimizer, lr=lr,
            weight_decay=self.weight_decay, schedule=schedule, seed=self.seed, channels_last=self.channels_last,
            precision=self.precision, compile=self.compile,
        ).validate()


def make_method(config: PruneConfig, model, plan: Plan, closure, batches_per_epoch: int | None = None
                ) -> PruningMethod:
    """The method of a run; with ``batches_per_epoch`` and the budget schedule, SLR/ADMM/reweighted know their rounds.

    Under SGD a growing penalty needs a bound: a plain gradient step on rho/2 ||W - Z||^2 overshoots once
    lr * rho > 1 and diverges past 2 (Adam's steps are bounded by lr, so there it may grow freely). SLR/ADMM
    stop rho where one step lands on Z (rho_max = 1/lr); reweighted's curvature 2 lambda P_g has no such bound
    (P_g grows as a group shrinks), so under SGD its lambda stays fixed.
    """
    options = dict(config.options)
    rounds = None
    if METHODS[config.method].budget and config.rho_schedule == "budget" and batches_per_epoch is not None:
        if config.optimizer != "sgd":
            rounds = config.planned_rounds(batches_per_epoch)
        elif config.method in ("slr", "admm"):
            rounds = config.planned_rounds(batches_per_epoch)
            options.setdefault("rho_max", 1.0 / config.lr)
    elif config.method == "gradual":
        rounds = max(config.epochs - 1, 1)  # the ramp ends an epoch before the hard-prune
    return build_method(config.method, model, plan, options, update_every=config.rounds_every(batches_per_epoch),
                        rounds=rounds, closure=closure)


def run_pruning(
    init: str | Path | None,
    plan: Plan | None,
    config: PruneConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    resources: Resources | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Prune the model of checkpoint ``init`` by ``plan``; returns (and writes) the results.

    Phases: the method's epochs (``RUN_DIR/prune``), the hard-prune (``RUN_DIR/hard-pruned``, its
    accuracy with no retraining, optionally with BatchNorm recalibrated), masked retraining
    (``RUN_DIR/retrain``), the compression report (``RUN_DIR/results.json``). ``resume=True``
    continues an interrupted run from ``RUN_DIR/job.json`` (``init``, ``plan`` and ``config`` are
    then taken from there): each phase resumes from its newest checkpoint, a finished phase is
    not run again, and the result equals an uninterrupted run's.
    """
    console = console or Console()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    if resume:
        init, plan, config = read_prune_job(run_dir)
    elif config.retrain_lr is None:  # job.json records the lr itself: a resume never depends on today's default
        config = dataclasses.replace(config, retrain_lr=config.lr * RETRAIN_LR_FACTOR)
    config.validate()
    job = JobInput.load(init, resources)  # under torchrun, joins the process group: every rank has checked run_dir
    console = job.console(console)
    uncoupled = plan.to_dict()
    # validated before anything is written
    plan = couple_if_possible(job.model, plan, job.train_set.images[:2].to(job.device), console)
    results: dict[str, Any] = {"config": dataclasses.asdict(config), "init": str(job.path),
                               "dense_accuracy": job.accuracy()}
    torch.manual_seed(config.seed)
    # built before the run directory, so a bad option leaves nothing behind (one-shot magnitude prunes here)
    method = make_method(config, job.model, plan, job.closure(config.closure_samples, config.seed, config.compile),
                         batches_per_epoch=math.ceil(len(job.train_set.labels) / config.batch_size))
    if config.method == "magnitude":  # one-shot: pruned here, before any training
        results["pruned_at_start_accuracy"] = job.accuracy()
    if job.dist.is_main:
        create_run_dir(run_dir)
        if not resume:
            write_job(run_dir, "prune", job.path, plan=uncoupled, config=dataclasses.asdict(config))
        write_json_atomic(run_dir / "plan.json", plan.to_dict())
    console.print(f"dense: test accuracy {results['dense_accuracy']:.2f}%")
    hardened = run_dir / "hard-pruned"
    if resume and (hardened / "meta.json").exists():  # the method's phase is over: start from its hard-prune
        console.print(f"resumed after the hard-prune ({hardened})")
        masks = _load_hardened(job, hardened, config, results, console)
    else:
        _prune(job, method, config, run_dir, results, console, resume)
        masks = _harden(job, method, config, run_dir, results, console)
        results["ranks"] = job.rank_digests(method_state=method.state_dict(), masks=masks)
    _retrain(job, masks, config, run_dir, results, console, resume)
    results.setdefault("ranks", {}).update(job.rank_digests(model=job.model.state_dict()))
    report = CompressionReport.of(job.model, plan, job.test_set.images[:256].to(job.device))
    results["report"] = report.to_dict()
    console.print(report.table())
    if job.dist.is_main:
        write_json_atomic(run_dir / "results.json", results)
    return results


def _prune(job: JobInput, method: PruningMethod, config: PruneConfig, run_dir: Path, results: dict,
           console: Console, resume: bool) -> None:
    """The method's epochs: the user's loss plus its penalty, its rounds as the trainer goes."""
    t0 = time.perf_counter()
    if config.epochs > 0:
        job.trainer(config.train_config(config.epochs, config.lr, config.schedule), run_dir / "prune", [method],
                    console).fit(resume=resume)
    results["prune_seconds"] = time.perf_counter() - t0
    results["method_history"] = method.history
    if method.history and "distances" in method.history[-1]:
        console.print(distance_table(method.history))


def _harden(job: JobInput, method: PruningMethod, config: PruneConfig, run_dir: Path, results: dict,
            console: Console) -> Masks:
    """The hard-prune and its accuracy with no retraining (and, on a copy, with BatchNorm recalibrated)."""
    masks = method.hard_prune()
    phase = {k: results[k] for k in ("prune_seconds", "method_history")}  # kept for a run resumed after this point
    if job.dist.is_main:
        save_checkpoint(run_dir / "hard-pruned", job.model.state_dict(), {"masks": {"masks": masks}},
                        {**job.meta, "epoch": -1, "pruning": phase})
    _measure_hardened(job, config, results, console)
    return masks


def _measure_hardened(job: JobInput, config: PruneConfig, results: dict, console: Console) -> None:
    results["hard_pruned_accuracy"] = job.accuracy()
    console.print(f"hard-pruned ({config.method}, no retraining): test accuracy {results['hard_pruned_accuracy']:.2f}%")
    if config.bn_recalibrate:
        recalibrated = copy.deepcopy(job.model)  # a column of its own: retraining goes on from the hard-pruned model
        recalibrate_batchnorm(recalibrated, job.train_set, batches=config.bn_recalibrate, batch_size=config.batch_size,
                              seed=config.seed, device=job.device)
        results["bn_recalibrated_accuracy"] = job.accuracy(recalibrated)
        console.print(f"hard-pruned + BatchNorm recalibration ({config.bn_recalibrate} batches, no gradient step): "
                      f"test accuracy {results['bn_recalibrated_accuracy']:.2f}%")



def _retrain(job: JobInput, masks: Masks, config: PruneConfig, run_dir: Path, results: dict, console: Console,
             resume: bool) -> None:
    """Masked retraining: pruned weights stay exactly zero; with ``config.distill`` the unpruned model teaches."""
    keeper = MaskKeeper(job.model, masks)
    hooks = [keeper]
    if config.distill > 0:
        teacher, _ = load_model(job.path)
        hooks.append(Distillation(teacher, config.distill, config.distill_temperature))
    torch.manual_seed(config.seed)  # the same random state whether or not the run was resumed after the hard-prune
    results["retrain_accuracy"] = []
    t0 = time.perf_counter()
    if config.retrain_epochs > 0:
        history = job.trainer(config.retrain_config(), run_dir / "retrain", hooks, console).fit(resume=resume)
        results["retrain_accuracy"] = [h["test_accuracy"] for h in history]
    results["retrain_seconds"] = time.perf_counter() - t0
    keeper.remove()


def read_prune_job(run_dir: Path) -> tuple[str, Plan, PruneConfig]:
    """What an interrupted pruning run was started with: its input checkpoint, plan and config."""
    job = read_job(run_dir, "prune")
    try:
        config = PruneConfig(**job["config"])
        if config.retrain_lr is None:  # written before retraining defaulted to a tenth of the lr: it ran at the lr
            config.retrain_lr = config.lr
        return job["init"], Plan.from_dict(job["plan"], source=str(run_dir / JOB_FILE)), config
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"--resume {run_dir}: {run_dir / JOB_FILE} is damaged ({e})") from None


def _load_hardened(job: JobInput, hardened: Path, config: PruneConfig, results: dict, console: Console) -> Masks:
    """The hard-pruned weights and masks a resumed run had saved; their accuracies are measured again."""
    ckpt = load_checkpoint(hardened)
    load_weights(job.model, ckpt, "the model being pruned")
    results.update(ckpt.meta["pruning"])
    _measure_hardened(job, config, results, console)
    return {n: m.to(job.device) for n, m in ckpt.state("masks")["masks"].items()}
