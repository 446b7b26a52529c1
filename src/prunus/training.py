"""The reference training loop: epochs, evaluation, run directory, checkpoint/resume, DDP.

prunus methods never need this loop (they plug into any loop through
``penalty()``/``step()``), but most users want one that already does the boring
parts right:

* a run directory with ``config.json``, ``metrics.jsonl`` and a checkpoint per epoch
  (see :mod:`prunus.checkpoint`), so ``resume=True`` continues *exactly*: batches and
  learning rates are pure functions of ``(seed, epoch)`` and the RNG state is saved;
* data parallelism under ``torchrun`` (gloo on CPU, nccl on GPU) where a W-process run
  follows the single-process trajectory (see :mod:`prunus.data.loader`);
* a rich progress bar (epoch, loss, accuracy, ETA) on rank 0 only;
* :class:`TrainingHook` objects that add a loss penalty, act after each optimizer step
  (e.g. re-apply pruning masks) or at the end of an epoch, and are checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunus.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, write_json_atomic
from prunus.data.loader import Batches, global_mean_scale
from prunus.errors import CheckpointError, ConfigError
from prunus.hooks import TrainingHook

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as ``config.json`` in the run directory."""

    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    image_size: int | None = None
    augment: bool | None = None  # None: the dataset's default (crop + flip for 32x32 sets)
    model_options: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1000
    keep_checkpoints: int = 2
    #: NHWC tensors for 4-D inputs: oneDNN's CPU convolutions run faster on them (ResNet-20 on 2 cores:
    #: 0.26 s against 0.37 s per batch of 128); results differ from NCHW in the last bits only
    channels_last: bool = False

    def validate(self) -> "TrainConfig":
        """Reject impossible values with one clear sentence naming the field."""
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {self.eval_batch_size}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**data)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for ``epoch`` (0-based): a pure function, so resume is exact."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":  # /10 at 50% and again at 75% of the epochs
        return 0.1 ** sum(epoch >= int(epochs * m) for m in (0.5, 0.75))
    return 1.0


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a data-parallel job (world_size 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
        return t.cpu().tolist()


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group that ``torchrun`` set up in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device {requested!r} is not a valid torch device (use cpu or cuda)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} asked for CUDA but no CUDA GPU is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (incomplete ones never get their final name)."""
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    found = sorted(p for p in ckdir.glob("epoch-*") if p.is_dir() and not p.name.startswith("."))
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def environment_info() -> dict[str, Any]:
    """Machine and library versions, recorded with every run."""
    import numpy

    from prunus import __version__

    return {
        "prunus": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    """The CPU's model name with its widest vector extension, e.g. ``AMD EPYC (AVX2)``.

    Virtual machines often report a bare family name, and two machines both called "AMD EPYC"
    (an AVX2 Zen 3 and an AVX-512 Zen 4) time the same model very differently.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    if "avx512f" in flags:
        simd = "AVX-512" + (" VPOPCNTDQ" if "avx512_vpopcntdq" in flags else "")
    else:
        simd = next((s.upper() for s in ("avx2", "avx", "sse4_2") if s in flags), "")
    return f"{name} ({simd})" if simd else name


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
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0

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
        path = save_checkpoint(self.run_dir / CHECKPOINT_DIR / f"epoch-{epoch + 1:04d}", self.model.state_dict(), states, meta)
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
            lines = "".join(json.dumps(m) + "\n" for m in self.history)
            tmp = self.run_dir / ".metrics.jsonl.tmp"
            tmp.write_text(lines)
            os.replace(tmp, self.run_dir / "metrics.jsonl")
        return True

    # -- the loop ------------------------------------------------------------------
    def train_epoch(self, epoch: int, progress: Progress | None, task) -> dict[str, float]:
        self.net.train()
        self.batches.set_epoch(epoch)
        factor = lr_factor(self.config.schedule, epoch, self.config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        loss_sum = correct = count = 0.0
        for x, y, global_size in self.batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.net(x)
            loss = self.loss_fn(out, y)
            scaled = loss * global_mean_scale(len(y), global_size, self.dist.world_size)
            for h in self.hooks:
                p = h.penalty()
                if p is not None:
                    scaled = scaled + p
            self.optimizer.zero_grad(set_to_none=True)
            scaled.backward()
            for h in self.hooks:
                h.before_optimizer_step()
            self.optimizer.step()
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
        return {"loss": loss_sum / count, "accuracy": 100.0 * correct / count, "lr": self.config.lr * factor}

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
            task = progress.add_task(f"epoch {self.start_epoch + 1}/{self.config.epochs}", total=total) if progress else None
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


# -- the whole job from a config -----------------------------------------------------
def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite an existing run unless resuming it: nothing of a previous run is lost."""
    if resume:
        if not (run_dir / "config.json").is_file():
            raise CheckpointError(f"--resume {run_dir}: no run there (config.json is missing)")
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"--out {run_dir} already exists and is not empty; pass --resume {run_dir} to continue that run or choose a new --out")


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {run_dir} cannot be created ({e.strerror})") from None


def model_record(config: TrainConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    """How to rebuild the model of a run: stored in every checkpoint."""
    return {"name": config.model, "in_channels": in_channels, "num_classes": num_classes, "options": config.model_options}


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    data_dir: str | None = None,
    download: bool = False,
    device: str | None = None,
    console: Console | None = None,
) -> Trainer:
    """Train a registry model on a registry dataset; what ``prunus train`` runs."""
    from prunus.data import default_augmentation, load_dataset
    from prunus.models import build_model

    run_dir = Path(run_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        check_run_dir(run_dir, resume)
    if resume:
        saved = json.loads((run_dir / "config.json").read_text())
        config = TrainConfig.from_dict(saved["config"])
    config.validate()
    train_set = load_dataset(config.dataset, "train", data_dir=data_dir, download=download, image_size=config.image_size)
    test_set = load_dataset(config.dataset, "test", data_dir=data_dir, download=download, image_size=config.image_size)
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=train_set.in_channels, num_classes=train_set.num_classes, **config.model_options)
    use_aug = config.augment if config.augment is not None else default_augmentation(config.dataset) is not None
    augment = default_augmentation(config.dataset) if use_aug else None
    if use_aug and augment is None:
        from prunus.data import RandomCropFlip

        augment = RandomCropFlip(padding=4)
    meta = {
        "model": model_record(config, train_set.in_channels, train_set.num_classes),
        "dataset": {"name": config.dataset, "image_size": train_set.image_size},
    }
    trainer = Trainer(
        model, train_set, test_set, config, run_dir, device=pick_device(device), augment=augment, meta=meta, console=console
    )
    if trainer.dist.is_main and not resume:
        create_run_dir(run_dir)
        write_json_atomic(
            run_dir / "config.json",
            {"config": dataclasses.asdict(config), "world_size": trainer.dist.world_size, "environment": environment_info()},
        )
    if trainer.dist.enabled:
        dist.barrier()
    trainer.fit(resume=resume)
    return trainer


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory means its newest checkpoint; a checkpoint directory means itself."""
    path = Path(path)
    if (path / CHECKPOINT_DIR).is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"run directory {path} has no complete checkpoint yet")
        return found
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_model(path: str | os.PathLike) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a checkpoint's model from its recorded architecture and load its weights.

    A physically pruned model (see :mod:`prunus.surgery`) also records its layers' channel
    counts (``meta["model"]["layers"]``, :mod:`prunus.architecture`); they are applied first.
    A DP-SGD model records ``norm: groupnorm``: its BatchNorms are replaced as opacus did.
    """
    from prunus.models import build_model

    ckpt = load_checkpoint(resolve_checkpoint(path))
    record = ckpt.meta.get("model")
    if not isinstance(record, dict) or "name" not in record:
        raise CheckpointError(f"checkpoint {ckpt.path} does not record its model architecture")
    model = build_model(
        record["name"], in_channels=record["in_channels"], num_classes=record["num_classes"], **record.get("options", {})
    )
    if record.get("norm") == "groupnorm":  # trained with DP-SGD: opacus replaced BatchNorm with GroupNorm
        from prunus._optional import require

        require("opacus", f"checkpoint {ckpt.path} (trained with DP-SGD, GroupNorm in place of BatchNorm)")
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)
    if "layers" in record:  # a physically pruned model: narrow the layers to the recorded channel counts
        from prunus.architecture import apply_layer_shapes

        apply_layer_shapes(model, record["layers"], f"checkpoint {ckpt.path}")
    load_weights(model, ckpt, f"model {record['name']}")
    return model, ckpt


def load_weights(model: nn.Module, checkpoint: Checkpoint, what: str) -> None:
    """Load a checkpoint's weights; a shape or name mismatch is one CheckpointError line."""
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit {what} ({first})") from None
