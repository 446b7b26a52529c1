"""A BCNN pruned to a compression of its *live* weights (the seed paper's "20x") by SLR/ADMM filter pruning.

The live-weight count is what the engine runs: filter pruning zeroes whole complex output
channels and the engine drops the input channels that read only those zeros too, so 20x live
is reached at a smaller filter ratio than 20x by nonzero count. The ratio is found once on the
trained model by one-shot projection (:func:`prunus.bcnn.pruning.prune_to_live_compression`);
the live count depends only on how many filters each layer keeps, so SLR's hard-prune at that
ratio reaches the same compression. Then a normal pruning run (:func:`prunus.jobs.prune.run_pruning`).

SLR and ADMM apply their penalty as a proximal step here (``penalty_step="proximal"`` unless the
config says otherwise): a BCNN is trained with Adam, which moves a penalised weight by about lr
per step whatever rho is, and BatchNorm's gamma (near 1) must reach 0 with its filter in a few
hundred steps (see :class:`prunus.methods.schedule.GrowingRho`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from prunus.bcnn.engine import compile_engine
from prunus.bcnn.models import is_bcnn
from prunus.bcnn.pruning import filter_plan, prune_to_live_compression, weight_counts
from prunus.errors import ConfigError
from prunus.io import write_json_atomic
from prunus.jobs.common import Resources
from prunus.jobs.prune import PruneConfig, run_pruning
from prunus.models.loading import load_model
from prunus.train.rundir import check_run_dir


#: a BCNN's retraining ends on a decaying learning rate: at a constant lr its binary weights keep flipping, the
#: BatchNorm running statistics trail the network, and eval-mode accuracy swings from epoch to epoch
BCNN_RETRAIN_SCHEDULE = "cosine"


def prune_bcnn(init: str | Path, compression: float, config: PruneConfig, run_dir: str | Path, *,
               resources: Resources | None = None, console: Console | None = None) -> dict[str, Any]:
    """Prune the BCNN of ``init`` to ``compression`` x fewer live weights; ``results.json`` gains ``bcnn``."""
    console = console or Console()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=False)
    if not compression > 1:
        raise ConfigError(f"--compression must be above 1 (20 means 20x fewer live weights), got {compression}")
    model, ckpt = load_model(init)
    if not is_bcnn(model):
        raise ConfigError(f"--init {init}: {ckpt.meta['model']['name']} is not a complex (BCNN) model")
    size = (ckpt.meta.get("dataset") or {}).get("image_size") or 32
    example = torch.zeros(2, ckpt.meta["model"]["in_channels"], size, size)
    if config.method in ("slr", "admm") and "penalty_step" not in config.options:
        config = dataclasses.replace(config, options={**config.options, "penalty_step": "proximal"})
    model.eval()
    _, target = prune_to_live_compression(model, lambda r: filter_plan(model, r), compression, example)
    console.print(f"filter ratio {target['ratio']:.3f} gives {target['compression']:.1f}x fewer live weights "
                  f"({target['live_weights']:,} of {target['dense_weights']:,}; nonzero {target['nonzero_weights']:,})")
    results = run_pruning(ckpt.path, filter_plan(model, target["ratio"]), config, run_dir, resources=resources,
                          console=console)
    final, _ = load_model(run_dir / ("retrain" if config.retrain_epochs > 0 else "hard-pruned"))
    counts = weight_counts(final, compile_engine(final.eval(), size, backend="fp32"))
    results["bcnn"] = {"target_compression": compression, "ratio": target["ratio"],
                       "live_compression": counts["compression"],
                       "nonzero_compression": counts["dense_weights"] / counts["nonzero_weights"],
                       **{k: counts[k] for k in ("dense_weights", "nonzero_weights", "live_weights")}}
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 writes
        write_json_atomic(run_dir / "results.json", results)
    return results
