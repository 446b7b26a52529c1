"""Pruning as a defense, alone (``prune``) or with the min-max game in the same run (``mcmia``, Wang et al.,
IJCAI 2021)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from prunus.harden.keepers import MaskKeeper
from prunus.harden.stats import CompressionReport
from prunus.jobs.common import fixed_batch
from prunus.jobs.prune import make_method
from prunus.methods import batch_closure
from prunus.privacy.defenses.context import DefenseContext
from prunus.privacy.defenses.game import make_game
from prunus.train.trainer import evaluate


def train_pruned(ctx: DefenseContext) -> None:
    """Pruning (and for MCMIA the game) on the members, hard-prune, masked fine-tuning (with the game for MCMIA).

    Without ``--init`` a dense model is trained on the members first (``RUN_DIR/dense``).
    """
    config, dev = ctx.config, ctx.device
    if "init" not in ctx.meta:
        ctx.console.print(f"training the dense model on {len(ctx.members)} members first ({ctx.run_dir / 'dense'})")
        ctx.fit("dense", config.train_config(), [])
        ctx.results["dense_accuracy"] = evaluate(ctx.model, ctx.test_set, device=dev)["accuracy"]
    ctx.results.update(_prune(ctx))
    ctx.extra_meta["pruning"] = {"plan": ctx.plan.to_dict(), "method": config.method}


def _prune(ctx: DefenseContext) -> dict[str, Any]:
    config, model, members, test_set, plan, dev = ctx.config, ctx.model, ctx.members, ctx.eval_set, ctx.plan, ctx.device
    console = ctx.console

    pcfg = config.prune_config()
    out: dict[str, Any] = {}
    torch.manual_seed(config.seed)
    x, y = fixed_batch(members, pcfg.closure_samples, config.seed)
    method = make_method(pcfg, model, plan, batch_closure(model, x.to(dev), y.to(dev), F.cross_entropy),
                         batches_per_epoch=math.ceil(len(members.labels) / pcfg.batch_size))
    game = make_game(ctx) if config.defense == "mcmia" else None
    hooks = [method] + ([game] if game else [])
    loss_fn = game.loss_fn if game else F.cross_entropy
    if pcfg.epochs > 0:
        ctx.fit("prune", pcfg.train_config(pcfg.epochs, pcfg.lr, pcfg.schedule), hooks, loss_fn)
    out["method_history"] = method.history
    masks = method.hard_prune()
    out["hard_pruned_accuracy"] = evaluate(model, test_set, device=dev)["accuracy"]
    console.print(f"hard-pruned ({config.method}): test accuracy {out['hard_pruned_accuracy']:.2f}%")
    keeper = MaskKeeper(model, masks)
    if pcfg.retrain_epochs > 0:
        hooks = [keeper] + ([game] if game else [])
        history = ctx.fit("retrain", pcfg.retrain_config(), hooks, loss_fn)
        out["retrain_accuracy"] = [h["test_accuracy"] for h in history]
    keeper.remove()
    if game is not None:
        out["game"] = game.history
    out["report"] = CompressionReport.of(model, plan, members.images[:64].to(dev)).to_dict()
    return out
