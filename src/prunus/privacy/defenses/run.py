"""Defenses against membership inference: pruning, the min-max game, MCMIA, DP-SGD.

Every defense trains on the *members* of a :class:`~prunus.privacy.splits.MembershipSplit`
only, with the reference :class:`~prunus.train.trainer.Trainer` (DP-SGD too: a hook gives it
per-sample gradients, clipping and noise), and ends in a normal prunus
checkpoint ``RUN_DIR/final`` that ``prunus eval`` and ``prunus audit`` load.  The
checkpoint records the split (state section ``membership_split``) and, under
``meta["privacy"]``, the defense and the plain training recipe that ``prunus audit``
trains its shadow and reference models with (a non-adaptive attacker: the reference
models are trained like the undefended target).

* ``none``: the undefended target (trained on the members; it overfits as it will).
* ``prune``: any prunus method (SLR, ADMM, magnitude, ...) on the members, hard-prune,
  masked fine-tuning (the steps of :func:`prunus.jobs.prune.run_pruning`, restricted to members).
* ``advreg``: adversarial regularization, the min-max game of Nasr, Shokri & Houmansadr
  (CCS 2018), :class:`AdversarialRegularizer`.
* ``mcmia``: MCMIA (Wang et al., IJCAI 2021): SLR/ADMM pruning and the min-max game in one
  training run (both are hooks of one Trainer), then hard-prune and masked fine-tuning
  with the game still on.
* ``dpsgd``: DP-SGD with opacus (:class:`~prunus.privacy.defenses.dpsgd.DPSGD`), reporting the (epsilon, delta)
  reached.
* ``relaxloss``: RelaxLoss (Chen, Yu & Fritz, ICLR 2022), :class:`RelaxLoss`: the training loss is
  held near a level alpha instead of driven to zero, so members' losses look like non-members'.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from prunus.environment import environment_info
from prunus.errors import CheckpointError, ConfigError
from prunus.io import save_checkpoint, write_json_atomic
from prunus.jobs.common import JOB_FILE, read_job, write_job
from prunus.privacy.defenses.config import DefenseConfig
from prunus.privacy.defenses.context import DefenseContext, prepare
from prunus.privacy.defenses.dpsgd import train_dp
from prunus.privacy.defenses.game import train_advreg
from prunus.privacy.defenses.prune import train_pruned
from prunus.privacy.defenses.relaxloss import train_relaxloss
from prunus.privacy.splits import SECTION
from prunus.train.distributed import init_distributed, pick_device
from prunus.train.rundir import check_run_dir, create_run_dir
from prunus.train.trainer import evaluate


def train_undefended(ctx: DefenseContext) -> None:
    """The target as it overfits: the plain recipe on the members."""
    ctx.fit("train", ctx.config.train_config(), [])


#: defense name -> the strategy that trains ``ctx.model`` on the members
STRATEGIES: dict[str, Callable[[DefenseContext], None]] = {
    "none": train_undefended, "prune": train_pruned, "mcmia": train_pruned, "advreg": train_advreg,
    "dpsgd": train_dp, "relaxloss": train_relaxloss,
}


def run_defense(
    config: DefenseConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    init: str | Path | None = None,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train a defended model on the members of a membership split; writes ``RUN_DIR/final`` and ``results.json``.

    With ``init`` (a checkpoint written by a previous ``run_defense``, e.g. the undefended
    target) the architecture, the split and the recipe are taken from there; pruning and MCMIA
    start from its weights, the other defenses train a freshly initialised model (DP-SGD must:
    the init's weights have seen the members without noise). Without it a fresh split is drawn
    (``config.members``, ``config.split_seed``) and, for pruning and MCMIA, a dense model is
    first trained on the members into ``RUN_DIR/dense``. ``resume=True`` continues an interrupted
    run from ``RUN_DIR/job.json``: every training phase resumes from its newest checkpoint (with the
    state of its hooks: the method, the game's attacker, the privacy accountant) and the result
    equals an uninterrupted run's.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume)
    if resume:
        config, init = read_defense_job(run_dir)
    config.validate()
    dev = pick_device(device)
    distributed = init_distributed(dev)  # under torchrun: after every rank has checked run_dir
    if distributed.enabled and config.defense == "dpsgd":
        raise ConfigError("--defense dpsgd runs in one process: opacus' accountant counts one noise draw per step, "
                          "and each rank would add its own; run it without torchrun")
    if distributed.enabled and dev.type == "cuda":
        dev = torch.device("cuda", distributed.local_rank)
    console = (console or Console()) if distributed.is_main else Console(quiet=True)
    ctx = prepare(config, run_dir, init, data_dir, download, dev, console, distributed)
    ctx.model.to(dev)
    ctx.resume = resume
    start = {"defense": dataclasses.asdict(config), "init": str(init) if init else None, "split": ctx.split.summary()}
    if distributed.is_main:
        create_run_dir(run_dir)
        if not resume:
            write_job(run_dir, "defend", init, marker=start, config=start["defense"])
    ctx.results.update(config=start["defense"], split=start["split"], init=start["init"], device=str(dev),
                       environment=environment_info())
    t0 = time.perf_counter()
    STRATEGIES[config.defense](ctx)
    ctx.results["seconds"] = time.perf_counter() - t0
    return _finish(ctx)


def read_defense_job(run_dir: Path) -> tuple[DefenseConfig, str | None]:
    """What an interrupted defense run was started with: its config and ``--init`` checkpoint."""
    job = read_job(run_dir, "defend")
    try:
        return DefenseConfig(**job["config"]), job["init"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"--resume {run_dir}: {run_dir / JOB_FILE} is damaged ({e})") from None


def _finish(ctx: DefenseContext) -> dict[str, Any]:
    """Accuracy on test, members and non-members; the final checkpoint (with the split) and results.json."""
    results, dev = ctx.results, ctx.device
    results["test_accuracy"] = evaluate(ctx.model, ctx.test_set, device=dev)["accuracy"]
    results["member_accuracy"] = evaluate(ctx.model, ctx.members, device=dev)["accuracy"]
    results["nonmember_accuracy"] = evaluate(ctx.model, ctx.split.subset(ctx.train_set, "nonmembers"),
                                             device=dev)["accuracy"]
    privacy = {"defense": ctx.config.defense, "config": dataclasses.asdict(ctx.config), "split": ctx.split.summary(),
               "reference_training": ctx.recipe,
               "results": {k: results[k] for k in ("test_accuracy", "member_accuracy", "nonmember_accuracy")},
               **ctx.extra_meta}
    results["ranks"] = {"world_size": ctx.dist.world_size, "model_sha256": ctx.dist.digests(ctx.model.state_dict())}
    if ctx.dist.is_main:
        save_checkpoint(ctx.run_dir / "final", ctx.model.state_dict(), {SECTION: ctx.split.state_dict()},
                        {**ctx.meta, "epoch": -1, "privacy": privacy})
        write_json_atomic(ctx.run_dir / "results.json", results)
    ctx.console.print(
        f"{ctx.config.defense}: test accuracy {results['test_accuracy']:.2f}%, "
        f"members {results['member_accuracy']:.2f}%, "
        f"non-members {results['nonmember_accuracy']:.2f}%; checkpoint {ctx.run_dir / 'final'}", soft_wrap=True)
    return results
