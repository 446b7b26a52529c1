"""BatchNorm recalibration: fresh running statistics for a model whose weights just changed.

A hard-prune changes what every later layer sees, but the BatchNorms still hold the
running mean and variance of the dense (or not yet pruned) model. Forward passes over
a few hundred training batches in train mode, with no gradient step, re-estimate them
as an exact average (momentum ``None``). No weight changes, so it is not retraining;
``prunus prune --bn-recalibrate N`` reports it as its own figure.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunus.data.loader import epoch_generator


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset, *, batches: int = 200, batch_size: int = 128, seed: int = 0,
                          device: torch.device | str = "cpu", sequential: bool = False) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` random training batches.

    ``sequential``: one BatchNorm at a time, in module order, every earlier one already in eval
    mode with its new statistics, so each layer's statistics are those of the inputs it gets at
    inference. Estimated all at once, a layer sees inputs normalised by each batch's own
    statistics; in a binary network ``sign`` turns those batch-to-batch differences into
    flipped bits, and the estimate misses what inference feeds it (tests/test_methods.py; on the
    trained BCNNs of benchmarks/bcnn_bn_statistics.py, -0.4 to +1.0 pt). It costs one pass over the batches per
    BatchNorm, the rest of the model in eval mode; the BatchNorms of a module that declares
    ``independent_norms`` (none sees another's output: a complex BatchNorm's real and imaginary
    parts) share one pass.

    Returns the number of BatchNorm layers recalibrated (0: the model has none, nothing ran).
    The batches are a pure function of ``seed``; the model is left in the mode it was in.
    """
    if batches < 1 or batch_size < 1:
        raise ValueError(f"recalibration needs batches >= 1 and batch_size >= 1, got {batches} and {batch_size}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    order = torch.randperm(len(dataset.labels), generator=epoch_generator(seed, -2))[: batches * batch_size]
    was_training = model.training
    try:
        for group in (_independent_groups(model, norms) if sequential else [norms]):
            model.train(not sequential)  # all at once: the whole model in train mode, as it always was
            for m in group:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches, not an exponential one
                m.train()
            for idx in order.split(batch_size):
                model(dataset.images[idx].to(device))
            for m in group:
                m.eval()
    finally:
        model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return len(norms)


def reestimate_batchnorm(model: nn.Module, dataset, *, frames: int = 4096, seed: int = 0,
                         device: torch.device | str = "cpu") -> int:
    """BatchNorm statistics for inference: :func:`recalibrate_batchnorm`, ``sequential``, on ``frames`` training
    frames (the whole set if it is smaller) in batches of at most 512. Returns the frames it used.

    The deployment step of a pruned binary network (:mod:`prunus.jobs.bcnn`, the 'BN re-est.' column of
    benchmarks/bcnn_accuracy.py): its running statistics trail weights that were still flipping when training
    stopped. Most of what this recovers, a train-mode estimate recovers too; the sequential order changes
    the trained BCNNs' accuracy by -0.4 to +1.0 pt more (benchmarks/bcnn_bn_statistics.py).
    """
    if frames < 1:
        raise ValueError(f"re-estimating BatchNorm statistics needs frames >= 1, got {frames}")
    available = len(dataset.labels)
    n = min(frames, available)
    batches = -(-n // 512)
    batch = -(-n // batches)
    recalibrate_batchnorm(model, dataset, batches=batches, batch_size=batch, seed=seed, device=device, sequential=True)
    return min(batches * batch, available)


def _independent_groups(model: nn.Module, norms: list[nn.Module]) -> list[list[nn.Module]]:
    """``norms`` in module order, one per group, except that the BatchNorms inside one module with
    ``independent_norms = True`` form one group (estimated in the same pass)."""
    group_of = {}
    for parent in model.modules():
        if getattr(parent, "independent_norms", False):
            for m in parent.modules():
                group_of.setdefault(id(m), id(parent))
    groups: dict[int, list[nn.Module]] = {}
    for m in norms:
        groups.setdefault(group_of.get(id(m), id(m)), []).append(m)
    return list(groups.values())
