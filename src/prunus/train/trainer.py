"""The reference training loop: epochs, evaluation, checkpoint/resume, DDP.

prunus methods never need this loop (they plug into any loop through
``penalty()``/``step()``), but most users want one that already does the boring
parts right:

* a run directory with ``config.json``, ``metrics.jsonl`` and a checkpoint per epoch
  (see :mod:`prunus.io`), so ``resume=True`` continues *exactly*: batches and
  learning rates are pure functions of ``(seed, epoch)`` and the RNG state is saved;
* data parallelism under ``torchrun`` (gloo on CPU, nccl on GPU) where a W-process run
  follows the single-process trajectory (see :mod:`prunus.data.loader`);
* a rich progress bar (epoch, loss, accuracy, ETA) on rank 0 only;
* :class:`~prunus.hooks.TrainingHook` objects that add a loss penalty, act after each optimizer step
  (e.g. re-apply pruning masks) or at the end of an epoch, and are checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from prunus.data.loader import Batches, global_mean_scale
from prunus.environment import cpu_has_native_bf16, environment_info
from prunus.errors import TrainingDiverged
from prunus.hooks import TrainingHook
from prunus.io import CHECKPOINT_DIR, Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint, write_text_atomic
from prunus.models.loading import load_weights
from prunus.train.config import TrainConfig, lr_factor, make_optimizer
from prunus.train.distributed import Distributed, init_distributed, pick_device
from prunus.train.rundir import create_run_dir


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    distributed: Distributed = Distributed(),
    loss_fn: Callable = F.cross_entropy,
) -> dict[str, float]:
    """Mean loss and accuracy (in %) over ``dataset``; each rank scores a shard, then they sum."""
    was_training = model.training
    model.eval()
    idx = torch.arange(distributed.rank, len(dataset.labels), distributed.world_size)
    loss_sum, correct = 0.0, 0.0
    for batch in idx.split(batch_size):
        x, y = dataset.images[batch].to(device), dataset.labels[batch].to(device)
        out = model(x)
        loss_sum += float(loss_fn(out, y, reduction="sum"))
        correct += float((out.argmax(1) == y).sum())
    loss_sum, correct, count = distributed.all_sum([loss_sum, correct, float(len(idx))])
    model.train(was_training)
    return {"loss": loss_sum / count, "accuracy": 100.0 * correct / count}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: torch.compile's compilations of one forward code it keeps before falling back to eager (torch's default: 8).
#: A model takes two static batch shapes in training (the batch, the last one), one in a loss closure, each in
#: both modes; one process that trains several models of a class (a benchmark's rows) needs more than 8.
RECOMPILE_LIMIT = 64


def compile_model(module: nn.Module) -> nn.Module:
    """``module`` through torch.compile with static shapes (``--compile``): each batch shape compiles once."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(module, dynamic=False)


class Trainer:
    """Train ``model`` on in-memory datasets, one checkpoint per epoch in ``run_dir``.

    ``meta`` is stored in every checkpoint (e.g. how to rebuild the model) so that
    ``prunus eval`` can load it without guessing.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set,
        test_set,
        config: TrainConfig,
        run_dir: str | os.PathLike,
        *,
        device: torch.device | None = None,
        hooks: Sequence[TrainingHook] = (),
        loss_fn: Callable = F.cross_entropy,
        augment: Callable | None = None,
        meta: dict[str, Any] | None = None,
        console: Console | None = None,
    ):
        self.config = config.validate()
        self.device = device or pick_device()
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.train_set, self.test_set = train_set, test_set
        self.batches = Batches(
            train_set,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            augment=augment,
        )
        self.hooks = list(hooks)
        self.loss_fn = loss_fn
        self.run_dir = Path(run_dir)
        self.meta = meta or {}
        self.console = console or Console()
        if config.precision == "bf16" and self.device.type == "cpu" and cpu_has_native_bf16() is False \
                and self.dist.is_main:
            cpu = environment_info()["cpu"]
            self.console.print(f"warning: --precision bf16 on a CPU without bfloat16 hardware ({cpu}; no AVX-512 "
                               "BF16 or AMX): autocast emulates it, several times slower than float32 (13x on an AMD "
                               "EPYC with AVX2); --precision fp32 trains faster here", markup=False)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        for h in self.hooks:
            h.setup(self)
        if config.compile:  # after the hooks, which may wrap the model (a hook that cannot be compiled refuses)
            self.net = compile_model(self.net)

    # -- checkpointing -------------------------------------------------------------
    def save(self, epoch: int) -> Path:
        states = {"optimizer": self.optimizer.state_dict(), "rng": rng_state()}
        states.update({h.name: h.state_dict() for h in self.hooks})
        meta = {
            **self.meta,
            "epoch": epoch,
            "config": dataclasses.asdict(self.config),
            "metrics": self.history[-1] if self.history else {},
            "history": self.history,
        }
        path = save_checkpoint(self.run_dir / CHECKPOINT_DIR / f"epoch-{epoch + 1:04d}", self.model.state_dict(),
                               states, meta)
        old = sorted(p for p in path.parent.glob("epoch-*") if p.is_dir())[: -self.config.keep_checkpoints]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return path

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: weights, optimizer, hooks, RNG, history."""
        load_weights(self.model, checkpoint, "this model")
        self.optimizer.load_state_dict(checkpoint.state("optimizer"))
        for h in self.hooks:
            h.load_state_dict(checkpoint.state(h.name))
        set_rng_state(checkpoint.state("rng"))
        self.history = list(checkpoint.meta.get("history", []))
        self.start_epoch = int(checkpoint.meta["epoch"]) + 1

    def resume(self) -> bool:
        """Load the newest checkpoint in ``run_dir`` if there is one; True if it did."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        self.restore(load_checkpoint(path))
        if self.dist.is_main:  # drop metric lines of epochs that were not checkpointed
            write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.history))
        return True

    # -- the loop ------------------------------------------------------------------
    def train_epoch(self, epoch: int, progress: Progress | None, task) -> dict[str, float]:
        self.net.train()
        self.batches.set_epoch(epoch)
        steps = len(self.batches)
        loss_sum = correct = count = 0.0
        for step, (x, y, global_size) in enumerate(self.batches, 1):
            factor = lr_factor(self.config.schedule, epoch, self.config.epochs, step - 1, steps)
            for group in self.optimizer.param_groups:  # per step: cosine-step changes it every step
                group["lr"] = group["initial_lr"] * factor
            if global_size == 0:  # a Poisson-sampled step drew no example: nothing to learn, nothing released
                continue
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
                out = self.net(x)
                loss = self.loss_fn(out, y)
                total = loss
                for h in self.hooks:
                    extra = h.output_loss(x, out)
                    if extra is not None:
                        total = total + extra
            scaled = total * global_mean_scale(len(y), global_size, self.dist.world_size)
            for h in self.hooks:
                p = h.penalty()
                if p is not None:
                    scaled = scaled + p
            self._check_finite(scaled, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            scaled.backward()
            for h in self.hooks:
                h.before_optimizer_step()
            self.optimizer.step()
            self.dist.broadcast_buffers(self.model)  # what DDP's next forward would do: hooks see rank 0's model
            for h in self.hooks:
                h.after_optimizer_step()
            loss_sum += float(loss.detach()) * len(y)
            correct += float((out.argmax(1) == y).sum())
            count += len(y)
            if progress is not None:
                progress.update(task, advance=1, description=self._describe(epoch, loss_sum / count, correct / count))
        for h in self.hooks:
            h.end_of_epoch(epoch)
        loss_sum, correct, count = self.dist.all_sum([loss_sum, correct, count])
        first = lr_factor(self.config.schedule, epoch, self.config.epochs)  # the epoch's first step
        return {"loss": loss_sum / count, "accuracy": 100.0 * correct / count, "lr": self.config.lr * first}

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Stop at the first step whose loss (penalties included) is NaN or infinite, on every rank at once.

        Nothing of the current epoch is saved, so the newest checkpoint is the last good one.
        """
        bad = not bool(torch.isfinite(loss.detach()))
        if self.dist.enabled:
            bad = self.dist.all_sum([float(bad)])[0] > 0
        if bad:
            last = latest_checkpoint(self.run_dir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingDiverged(f"epoch {epoch + 1}, step {step}: the training loss is {float(loss.detach())} "
                                   f"(diverged); {kept}; "
                                   "lower the learning rate (or the method's penalty) and run again")

    def _describe(self, epoch: int, loss: float, acc: float) -> str:
        return f"epoch {epoch + 1}/{self.config.epochs} loss {loss:.4f} acc {100 * acc:.2f}%"

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train until ``config.epochs``; returns the per-epoch metrics history."""
        if self.dist.is_main:
            create_run_dir(self.run_dir)
        if resume and self.resume() and self.dist.is_main:
            self.console.print(f"resumed {self.run_dir} after epoch {self.start_epoch}")
        steps = len(self.batches)
        progress = None
        if self.dist.is_main:
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
        total = steps * (self.config.epochs - self.start_epoch)
        started = time.perf_counter()
        with progress if progress is not None else _Null():
            task = progress.add_task(f"epoch {self.start_epoch + 1}/{self.config.epochs}",
                                     total=total) if progress else None
            for epoch in range(self.start_epoch, self.config.epochs):
                t0 = time.perf_counter()
                train = self.train_epoch(epoch, progress, task)
                test = evaluate(
                    self.model,
                    self.test_set,
                    batch_size=self.config.eval_batch_size,
                    device=self.device,
                    distributed=self.dist,
                    loss_fn=self.loss_fn,
                )
                record = {
                    "epoch": epoch + 1,
                    "train_loss": train["loss"],
                    "train_accuracy": train["accuracy"],
                    "test_loss": test["loss"],
                    "test_accuracy": test["accuracy"],
                    "lr": train["lr"],
                    "epoch_seconds": time.perf_counter() - t0,
                }
                for h in self.hooks:
                    record.update(h.epoch_metrics())
                self.history.append(record)
                if self.dist.is_main:
                    with open(self.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    self.save(epoch)
                    self.console.print(
                        f"epoch {epoch + 1:>3}/{self.config.epochs}  train loss {train['loss']:.4f} "
                        f"acc {train['accuracy']:.2f}%  test loss {test['loss']:.4f} acc {test['accuracy']:.2f}%  "
                        f"lr {train['lr']:.4g}  {record['epoch_seconds']:.1f}s",
                        soft_wrap=True,
                    )
        if self.dist.enabled:
            dist.barrier()
        self.wall_seconds = time.perf_counter() - started
        return self.history


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
