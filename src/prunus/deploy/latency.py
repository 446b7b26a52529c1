"""Inference latency of a model: the median of repeated timed forward passes.

What a user of a pruned model feels is wall-clock time per batch, so that is what
is measured: ``torch.inference_mode``, eval mode, a few untimed warm-up runs first
(allocator, oneDNN kernel selection, caches), then ``repeats`` timed runs of one
forward each; the median is robust to the occasional preemption on a shared
machine.  The numbers are only comparable on the same machine with the same
thread count, which is recorded with them; compare models measured in the same
process (see BENCHMARKS.md on noisy machines).

Process state matters as much as noise.  glibc serves every allocation above its
mmap threshold (128 KiB at start, raised as large buffers are freed) with fresh
pages and hands them back on free, so a forward pass can page-fault on each of its
activation buffers, or not, depending on what the process allocated before.  On the
2-core test machine the same dense VGG-16 (width 0.25, batch 64) timed from 13.5 to
35 ms as eager modules and from 7.7 to 11.7 ms deployed, and its ratio to a pruned copy
from 1.36x to 1.95x, with the process history.
:func:`compare_latency` therefore first puts the allocator in the steady state a
serving process reaches (:func:`steady_allocator`), where the ratio was stable.

Values matter too.  An x86 core takes a slow microcode path for every denormal float, and the
narrow layers of a randomly initialised pruned ResNet-20 produce them: on one thread, the same
pruned shape timed several times slower or not depending on its random initial weights alone,
while the dense model held steady.  Latency is a property of the shape, so on CPU the timed runs
flush denormals to zero (a setting CPU inference runtimes commonly enable) and restore the
setting after.  ``torch.set_flush_denormal`` sets only the calling thread; PyTorch's intra-op
worker threads copy the setting when they are created, at the process's first parallel operation,
and keep their own after.  So a process that only times calls :func:`flush_denormals_for_timing`
first thing, and every thread flushes; elsewhere the workers' share still pays for denormals
beyond one thread.  ``Latency.denormals_flushed`` records what a check on every thread found.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.fx.experimental.optimization import fuse

__all__ = ["Latency", "compare_latency", "denormals_flushed", "denormals_flushed_on_every_thread",
           "flush_denormals_for_timing", "for_inference", "measure_latency", "steady_allocator"]

# glibc mallopt() parameters (malloc.h) and the values steady_allocator() sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit: buffers up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap in the process instead of returning it


@dataclass(frozen=True)
class Latency:
    """Timings of one batch size, in milliseconds per forward pass of the whole batch."""

    batch_size: int
    median_ms: float
    min_ms: float
    p90_ms: float
    max_ms: float
    repeats: int
    warmup: int
    threads: int
    device: str
    denormals_flushed: bool = False  # on every intra-op thread (CPU; see denormals_flushed_on_every_thread)

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steady_allocator() -> bool:
    """Make the C allocator keep freed buffers (up to 32 MiB each) in the process, for timing.

    Timed forwards then reuse memory the way a long-running server's do, instead of page-faulting
    on fresh pages whenever glibc's adaptive mmap threshold happens to be low (see the module
    docstring).  Process-wide and irreversible: the process keeps up to 1 GiB of freed heap.
    Returns False, changing nothing, where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, TypeError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    repeats: int = 30,
    warmup: int = 5,
    seed: int = 0,
) -> dict[int, Latency]:
    """Median latency of ``model`` at each batch size, on ``example_input``'s device and dtype.

    Inputs are seeded random normals shaped like ``example_input[0]``.  The model is put in eval
    mode for the measurement and its train flag restored afterwards.  On CUDA, each run is
    synchronised so the time covers the kernels, not just their launch.
    """
    return compare_latency({"model": model}, example_input, batch_sizes, repeats=repeats, warmup=warmup,
                           seed=seed)["model"]


def compare_latency(
    models: Mapping[str, nn.Module],
    example_input: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    repeats: int = 30,
    warmup: int = 5,
    seed: int = 0,
) -> dict[str, dict[int, Latency]]:
    """:func:`measure_latency` of several models, their timed runs interleaved.

    Each round runs every model once, in turn, so a slow spell of a shared machine (another
    process, a frequency drop) falls on all of them alike and their ratio stays honest.  On CPU
    the allocator is first put in its steady state (:func:`steady_allocator`) and the calling
    thread flushes denormals to zero while timing (see the module docstring).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    device = example_input.device
    restore_denormals = False
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(seed)
    was_training = {name: m.training for name, m in models.items()}
    results: dict[str, dict[int, Latency]] = {name: {} for name in models}
    try:
        if device.type == "cpu":
            steady_allocator()
            restore_denormals = not denormals_flushed() and torch.set_flush_denormal(True)
        flushed = device.type == "cpu" and denormals_flushed_on_every_thread()
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            for b in batch_sizes:
                x = torch.randn((int(b), *example_input.shape[1:]), generator=gen)
                x = x.to(device=device, dtype=example_input.dtype, memory_format=_memory_format(example_input))
                for m in models.values():
                    for _ in range(warmup):
                        m(x)
                sync()
                times: dict[str, list[float]] = {name: [] for name in models}
                for _ in range(repeats):
                    for name, m in models.items():
                        t0 = time.perf_counter_ns()
                        m(x)
                        sync()
                        times[name].append((time.perf_counter_ns() - t0) / 1e6)
                for name, ts in times.items():
                    ts.sort()
                    results[name][int(b)] = Latency(
                        batch_size=int(b), median_ms=statistics.median(ts), min_ms=ts[0], p90_ms=_quantile(ts, 0.9),
                        max_ms=ts[-1], repeats=repeats, warmup=warmup, threads=torch.get_num_threads(),
                        device=str(device), denormals_flushed=flushed)
    finally:
        if restore_denormals:
            torch.set_flush_denormal(False)
        for name, m in models.items():
            m.train(was_training[name])
    return results


#: the bits of a denormal float32 (about 1e-39), written as an integer: a float literal converted on a flushing
#: thread would already be zero
_DENORMAL_BITS = 0x000AE398


#: elements per intra-op thread in denormals_flushed_on_every_thread: above PyTorch's grain size (32,768), so
#: that an elementwise operation gives every thread a share
_PER_THREAD = 1 << 16


def denormals_flushed() -> bool:
    """Whether the calling thread's float32 arithmetic flushes denormals to zero (torch.set_flush_denormal sets it
    for the calling thread only)."""
    x = torch.tensor([_DENORMAL_BITS], dtype=torch.int32).view(torch.float32)
    return int((x * 1.0).view(torch.int32)) == 0


def denormals_flushed_on_every_thread() -> bool:
    """Whether every intra-op thread flushes denormals to zero: a denormal tensor large enough to be split over all
    of them, multiplied by one, must come out all zeros (a thread that keeps denormals leaves its share nonzero).
    Read as integers: a float comparison on a flushing thread would read a denormal as zero."""
    n = torch.get_num_threads() * _PER_THREAD
    x = torch.full((n,), _DENORMAL_BITS, dtype=torch.int32).view(torch.float32)
    return not bool((x * 1.0).view(torch.int32).any())


def flush_denormals_for_timing() -> bool:
    """Flush denormals to zero for the whole process; call it first thing in a process that only times models.

    The intra-op workers copy the setting when the process's first parallel operation creates them; called later,
    it reaches the calling thread only. Returns whether every thread flushes
    (:func:`denormals_flushed_on_every_thread`). Not for processes that train or report accuracy: their arithmetic
    would change too.
    """
    torch.set_flush_denormal(True)
    return denormals_flushed_on_every_thread()


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as one would deploy it on a CPU: BatchNorm folded into the convolution
    before it and channels-last memory layout (feed it channels-last inputs).

    Folding removes a full read and write of every activation per BatchNorm, and oneDNN's
    fastest convolutions are channels-last; both matter more, relatively, for a model whose
    channels were pruned, so latency comparisons should give dense and pruned models the same
    treatment.  Models torch.fx cannot trace are only converted to channels-last.
    """


    model = copy.deepcopy(model).eval()
    try:
        model = fuse(model)
    except Exception:  # untraceable control flow: keep the eager BatchNorms  # noqa: BLE001
        pass
    return model.to(memory_format=torch.channels_last)
