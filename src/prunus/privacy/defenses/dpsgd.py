"""DP-SGD (Abadi et al. 2016) with opacus, reporting the (epsilon, delta) reached."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, TensorDataset

from prunus._optional import require
from prunus.data.datasets import ArrayDataset
from prunus.errors import ConfigError
from prunus.io import save_checkpoint
from prunus.privacy.defenses.context import DefenseContext
from prunus.privacy.splits import SECTION, MembershipSplit
from prunus.train.config import lr_factor, make_optimizer
from prunus.train.trainer import evaluate


def train_dpsgd(model: nn.Module, members: ArrayDataset, test_set: ArrayDataset, tcfg, run_dir: str | Path, *,
                epsilon: float, delta: float, max_grad_norm: float = 1.0, accountant: str = "prv",
                device: torch.device | str = "cpu", meta: dict[str, Any] | None = None,
                split: MembershipSplit | None = None, console: Console | None = None) -> dict[str, Any]:
    """DP-SGD (Abadi et al. 2016) with opacus: per-sample clipping to ``max_grad_norm``, Gaussian noise
    calibrated so that ``tcfg.epochs`` epochs of Poisson-sampled batches (expected size ``tcfg.batch_size``)
    reach ``(epsilon, delta)``.

    BatchNorm mixes examples of a batch, so it is replaced with GroupNorm (opacus'
    ``ModuleValidator.fix``: ``GroupNorm(gcd(32, C), C)``) when the model has any; the result
    says so (``groupnorm``) and the checkpoint records ``model.norm = "groupnorm"``.
    Writes ``run_dir/metrics.jsonl`` and ``run_dir/checkpoints/epoch-NNNN`` (the last one kept).
    Returns the trained (unwrapped) ``model`` and the privacy spent: ``epsilon`` as computed by
    the accountant after training, ``delta``, the noise multiplier, the sample rate and steps.
    """



    require("opacus", "DP-SGD (--defense dpsgd)")
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    console = console or Console()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    groupnorm = bool(ModuleValidator.validate(model, strict=False))
    if groupnorm:
        model = ModuleValidator.fix(model)
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(f"model {type(model).__name__} cannot be trained with DP-SGD: {errors[0]}")
    model.to(device)
    torch.manual_seed(tcfg.seed)
    optimizer = make_optimizer(model.parameters(), tcfg)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    loader = DataLoader(TensorDataset(members.images, members.labels), batch_size=tcfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(tcfg.seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about secure RNG and full backward hooks
        engine = PrivacyEngine(accountant=accountant)
        try:
            dp_model, optimizer, loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
                epochs=tcfg.epochs, max_grad_norm=max_grad_norm)
        except MemoryError:  # the PRV accountant's grid grows with epsilon (epsilon 1000: a 30 GiB array)
            raise ConfigError(f"the {accountant.upper()} accountant ran out of memory calibrating the noise for "
                              f"--epsilon {epsilon:g}; use --accountant rdp for very large epsilons") from None
    history: list[dict[str, Any]] = []
    steps = 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True)
    with progress, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = progress.add_task("DP-SGD", total=tcfg.epochs * len(loader))
        for epoch in range(tcfg.epochs):
            t0 = time.perf_counter()
            factor = lr_factor(tcfg.schedule, epoch, tcfg.epochs)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            dp_model.train()
            loss_sum = correct = count = 0.0
            for x, y in loader:
                progress.update(task, advance=1)
                if len(y) == 0:  # Poisson sampling can draw an empty batch
                    continue
                x, y = x.to(device), y.to(device)
                out = dp_model(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += float((out.argmax(1) == y).sum())
                count += len(y)
                progress.update(task, description=f"DP-SGD epoch {epoch + 1}/{tcfg.epochs} loss {loss_sum / count:.4f}")
            test = evaluate(model, test_set, device=device)
            spent, spent_by = epsilon_so_far(engine, delta, last=epoch + 1 == tcfg.epochs)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1),
                      "train_accuracy": 100 * correct / max(count, 1), "test_loss": test["loss"],
                      "test_accuracy": test["accuracy"], "lr": tcfg.lr * factor, "epsilon": spent,
                      "epsilon_accountant": spent_by, "epoch_seconds": time.perf_counter() - t0}
            history.append(record)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            states = {SECTION: split.state_dict()} if split is not None else {}
            ck_meta = {**(meta or {}), "epoch": epoch, "config": dataclasses.asdict(tcfg), "metrics": record,
                       "history": history}
            if groupnorm:
                ck_meta["model"] = {**ck_meta.get("model", {}), "norm": "groupnorm"}
            path = save_checkpoint(run_dir / "checkpoints" / f"epoch-{epoch + 1:04d}", model.state_dict(), states, ck_meta)
            for old in sorted(p for p in path.parent.glob("epoch-*") if p.is_dir())[:-1]:

                shutil.rmtree(old, ignore_errors=True)
            console.print(f"epoch {epoch + 1:>3}/{tcfg.epochs}  train loss {record['train_loss']:.4f}  test acc "
                          f"{test['accuracy']:.2f}%  epsilon {spent:.3f} (delta {delta:g}, {spent_by.upper()})",
                          soft_wrap=True)
    dp_model._close()  # remove opacus' hooks; ``model`` is a plain module again
    eps = history[-1]["epsilon"] if history else float(engine.get_epsilon(delta))  # the last epoch's, by the run's accountant
    return {"model": model, "epsilon": eps, "delta": delta, "target_epsilon": epsilon, "accountant": accountant,
            "noise_multiplier": float(optimizer.noise_multiplier), "max_grad_norm": max_grad_norm,
            "sample_rate": float(getattr(loader, "sample_rate", 1 / len(loader))), "steps": steps, "epochs": tcfg.epochs, "groupnorm": groupnorm,
            "history": history}


def epsilon_so_far(engine, delta: float, last: bool) -> tuple[float, str]:
    """The privacy spent so far, and by which accountant.

    The run's own accountant after the last epoch; before it, an RDP bound from the same history.
    PRV's epsilon costs 1-2 s of CPU per call at epsilon 64 (longer than a GPU epoch), RDP's a few ms;
    RDP's conversion is an upper bound, so the progress never shows less privacy loss than was spent."""
    from opacus.accountants import RDPAccountant

    if last or engine.accountant.mechanism() == "rdp":
        return float(engine.get_epsilon(delta)), engine.accountant.mechanism()
    bound = RDPAccountant()
    bound.history = list(engine.accountant.history)
    return float(bound.get_epsilon(delta)), "rdp"


def train_dp(ctx: DefenseContext) -> None:
    """DP-SGD on the members with the plain recipe; the model may come back with GroupNorm for BatchNorm."""
    config = ctx.config
    dp = train_dpsgd(ctx.model, ctx.members, ctx.eval_set, config.train_config(), ctx.run_dir / "train",
                     epsilon=config.epsilon, delta=config.delta, max_grad_norm=config.max_grad_norm,
                     accountant=config.accountant, device=ctx.device, meta=ctx.meta, split=ctx.split, console=ctx.console)
    ctx.model = dp.pop("model")
    ctx.results["dp"] = ctx.extra_meta["dp"] = dp
    if dp["groupnorm"]:
        ctx.meta = {**ctx.meta, "model": {**ctx.meta["model"], "norm": "groupnorm"}}
