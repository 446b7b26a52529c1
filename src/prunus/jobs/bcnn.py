"""A BCNN pruned to a compression of its *live* weights (the seed paper's "20x") by SLR/ADMM filter pruning.

The live-weight count is what the engine runs: filter pruning zeroes whole complex output
channels and the engine drops the input channels that read only those zeros too, so 20x live
is reached at a smaller filter ratio than 20x by nonzero count. The ratio is found once on the
trained model by one-shot projection (:func:`prunus.bcnn.pruning.prune_to_live_compression`);
the live count depends only on how many filters each layer keeps, so SLR's hard-prune at that
ratio reaches the same compression. Then a normal pruning run (:func:`prunus.jobs.prune.run_pruning`).

The run ends with the step that deploys a pruned BCNN: its BatchNorm statistics re-estimated one
BatchNorm at a time (``RUN_DIR/deployed``, :func:`save_deployed`).  :func:`quantize_first_layer` makes a trained
BCNN's first layer int8 afterwards, the engine's faster stem (:mod:`prunus.bcnn.int8`).

SLR and ADMM apply their penalty as a proximal step here (``penalty_step="proximal"`` unless the
config says otherwise): a BCNN is trained with Adam, which moves a penalised weight by about lr
per step whatever rho is, and BatchNorm's gamma (near 1) must reach 0 with its filter in a few
hundred steps (see :class:`prunus.methods.schedule.GrowingRho`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from prunus.bcnn.engine import compile_engine
from prunus.bcnn.models import is_bcnn
from prunus.bcnn.pruning import filter_plan, prune_to_live_compression, weight_counts
from prunus.data import load_dataset
from prunus.errors import ConfigError
from prunus.harden.batchnorm import reestimate_batchnorm
from prunus.io import save_checkpoint, write_json_atomic
from prunus.jobs.common import Resources
from prunus.jobs.prune import PruneConfig, run_pruning
from prunus.models.loading import load_model
from prunus.train.distributed import is_main_process, pick_device
from prunus.train.rundir import check_run_dir
from prunus.train.trainer import evaluate

#: a BCNN's retraining ends on a decaying learning rate: at a constant lr its binary weights keep flipping, the
#: BatchNorm running statistics trail the network, and eval-mode accuracy swings from epoch to epoch. The decay is
#: per optimizer step (cosine-step): decayed per epoch, a 5-epoch retraining still stepped at 9.5% of its lr for its
#: whole last epoch and left stale statistics (benchmarks/bcnn_bn_statistics.py); per step it ends at lr 0
#: (bcnn_accuracy.py's rows record which of the two each pruning ran)
BCNN_RETRAIN_SCHEDULE = "cosine-step"

#: training frames the deployed model's BatchNorm statistics are re-estimated on (``--bn-reestimate``)
REESTIMATE_FRAMES = 4096
#: training frames an int8 first layer's input scale is calibrated on (``prunus bcnn int8-stem --frames``)
CALIBRATION_FRAMES = 4096


def prune_bcnn(init: str | Path, compression: float, config: PruneConfig, run_dir: str | Path, *,
               resources: Resources | None = None, console: Console | None = None,
               reestimate_frames: int = REESTIMATE_FRAMES) -> dict[str, Any]:
    """Prune the BCNN of ``init`` to ``compression`` x fewer live weights; ``results.json`` gains ``bcnn``.

    ``reestimate_frames`` > 0: the final model is also saved as ``RUN_DIR/deployed`` with its BatchNorm
    statistics re-estimated on that many training frames (0: no ``deployed`` model).
    """
    console = console or Console()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=False)
    if not compression > 1:
        raise ConfigError(f"--compression must be above 1 (20 means 20x fewer live weights), got {compression}")
    if isinstance(reestimate_frames, bool) or not isinstance(reestimate_frames, int) or reestimate_frames < 0:
        raise ConfigError(f"--bn-reestimate must be a whole number of training frames >= 0, got {reestimate_frames!r}")
    model, ckpt = load_model(init)
    if not is_bcnn(model):
        raise ConfigError(f"--init {init}: {ckpt.meta['model']['name']} is not a complex (BCNN) model")
    size = (ckpt.meta.get("dataset") or {}).get("image_size") or 32
    example = torch.zeros(2, ckpt.meta["model"]["in_channels"], size, size)
    if config.method in ("slr", "admm") and "penalty_step" not in config.options:
        config = dataclasses.replace(config, options={**config.options, "penalty_step": "proximal"})
    if config.retrain_lr is None:  # a BCNN retrains at the full lr: its binary weights must still flip
        config = dataclasses.replace(config, retrain_lr=config.lr)
    model.eval()
    _, target = prune_to_live_compression(model, lambda r: filter_plan(model, r), compression, example)
    console.print(f"filter ratio {target['ratio']:.3f} gives {target['compression']:.1f}x fewer live weights "
                  f"({target['live_weights']:,} of {target['dense_weights']:,}; nonzero {target['nonzero_weights']:,})")
    results = run_pruning(ckpt.path, filter_plan(model, target["ratio"]), config, run_dir, resources=resources,
                          console=console)
    source = "retrain" if config.retrain_epochs > 0 else "hard-pruned"
    final, final_ckpt = load_model(run_dir / source)
    counts = weight_counts(final, compile_engine(final.eval(), size, backend="fp32"))
    results["bcnn"] = {"target_compression": compression, "ratio": target["ratio"],
                       "live_compression": counts["compression"],
                       "nonzero_compression": counts["dense_weights"] / counts["nonzero_weights"],
                       **{k: counts[k] for k in ("dense_weights", "nonzero_weights", "live_weights")}}
    _write_results(run_dir, results)  # complete before the deployment step, should that be interrupted
    if reestimate_frames:
        b = results["bcnn"]
        as_trained = results["retrain_accuracy"][-1] if config.retrain_epochs > 0 else results["hard_pruned_accuracy"]
        b.update(save_deployed(run_dir, final, final_ckpt.meta, source, as_trained, reestimate_frames, config.seed,
                               resources))
        console.print(f"BatchNorm re-estimated for inference on {b['bn_reestimate_frames']:,} training frames: "
                      f"test accuracy {b['as_trained_accuracy']:.2f}% -> {b['bn_reestimated_accuracy']:.2f}% "
                      f"({run_dir / 'deployed'})")
        _write_results(run_dir, results)
    return results


def _write_results(run_dir: Path, results: dict[str, Any]) -> None:
    if is_main_process():  # under torchrun rank 0 writes
        write_json_atomic(run_dir / "results.json", results)


def save_deployed(run_dir: Path, model: torch.nn.Module, meta: dict[str, Any], source: str, as_trained: float,
                  frames: int, seed: int, resources: Resources | None = None) -> dict[str, Any]:
    """``model`` (``RUN_DIR/source``'s, test accuracy ``as_trained``) with its BatchNorm statistics re-estimated for
    inference on ``frames`` training frames, saved as ``RUN_DIR/deployed``; its test accuracy before and after.

    The 20x NIN of ``benchmarks/bcnn_accuracy.py`` (seed 0, 15 retraining epochs) reads 31.9% as trained and 48.0%
    re-estimated (:func:`prunus.harden.batchnorm.reestimate_batchnorm`). No weight changes.
    """
    res = resources or Resources()
    dataset = meta["dataset"]
    train_set, test_set = (load_dataset(dataset["name"], split, data_dir=res.data_dir, download=res.download,
                                        image_size=dataset.get("image_size")) for split in ("train", "test"))
    device = pick_device(res.device)
    model.to(device)
    used = reestimate_batchnorm(model, train_set, frames=frames, seed=seed, device=device)
    after = evaluate(model, test_set, device=device)["accuracy"]
    if is_main_process():
        save_checkpoint(run_dir / "deployed", model.state_dict(), None,
                        {**meta, "bn_reestimated": {"from": source, "frames": used, "seed": seed}})
    return {"as_trained_accuracy": as_trained, "bn_reestimated_accuracy": after, "bn_reestimate_frames": used,
            "deployed": "deployed"}


def quantize_first_layer(init: str | Path, out: str | Path, *, frames: int = CALIBRATION_FRAMES, seed: int = 0,
                         resources: Resources | None = None) -> dict[str, Any]:
    """The trained BCNN of ``init`` with an int8 first layer (post-training, :meth:`ComplexNet.quantize_first_layer`),
    its input scale calibrated on ``frames`` training frames (drawn with ``seed``), saved as checkpoint ``out``.

    Returns the test accuracy before and after and whether the engine's logits equal PyTorch's on the whole test
    set (the int8 stem runs on the engine's integer kernel; None for a full-precision model, which has no engine).
    No weight is trained.  Nothing is written where the engine would differ (that is a bug) or when the
    checkpoint cannot be written (one ConfigError line).
    """
    if frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {frames}")
    model, ckpt = load_model(init)
    if not is_bcnn(model):
        raise ConfigError(f"--init {init}: {ckpt.meta['model']['name']} is not a complex (BCNN) model")
    res = resources or Resources()
    dataset = ckpt.meta["dataset"]
    train_set, test_set = (load_dataset(dataset["name"], split, data_dir=res.data_dir, download=res.download,
                                        image_size=dataset.get("image_size")) for split in ("train", "test"))
    model.eval()
    before = evaluate(model, test_set)["accuracy"]
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:frames]
    frames_x = train_set.images[order]
    try:
        model.quantize_first_layer(frames_x[i:i + 256] for i in range(0, len(frames_x), 256))
    except ConfigError as e:
        raise ConfigError(f"--init {init}: {e}") from None
    after = evaluate(model, test_set)["accuracy"]
    equal = None  # a full-precision complex model has no engine
    if model.binary:
        engine = compile_engine(model, test_set.image_size)
        equal = all(torch.equal(engine(test_set.images[i:i + 500]), model(test_set.images[i:i + 500]))
                    for i in range(0, len(test_set), 500))
    if equal is False:
        raise RuntimeError(f"the engine's logits differ from PyTorch's for {init} with an int8 first layer; this is "
                           "a bug (nothing was written)")
    record = ckpt.meta["model"]
    meta = {**ckpt.meta, "model": {**record, "options": {**record.get("options", {}), "int8_first": True}},
            "int8_first_layer": {"from": str(init), "frames": len(order), "seed": seed}}
    try:
        save_checkpoint(out, model.state_dict(), None, meta)
    except OSError as e:
        raise ConfigError(f"--out {out} cannot be written ({e.strerror or e})") from None
    return {"accuracy_before": before, "accuracy": after, "engine_equal": equal,
            "input_scale": float(model.stem.conv.input_scale), "frames": len(order), "checkpoint": str(out)}
