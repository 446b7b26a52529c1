"""Throughput of the BCNN engine: frames/s, latency, bit-MAC/s against the machine's popcount ceiling.

* **Bit-MACs** of a binary layer: output pixels x live output channels x kernel taps x live input
  bits -- the +-1 multiply-accumulates the XNOR-popcount kernel executes for one image (real and
  imaginary parts stacked, so a complex MAC counts 4).  Full-precision layers are not counted.
* **Popcount ceiling** (:func:`popcount_ceiling`): the convolution kernel's own inner loop
  (``acc[p] += popcount(a ^ w[q, p])``, vectorised with ``vpopcntq`` where the CPU has it) on data
  that stays in L1, on every thread at once: what the hardware sustains when memory, loop
  overhead, packing and the epilogue cost nothing.  Achieved / ceiling says how far the whole
  engine (full-precision first/last layers included) is from that bound.
* Timings are medians of ``repeats`` runs after ``warmup`` runs, in one process, with the thread
  count recorded (numba and PyTorch use the same count).  Absolute figures depend on the machine
  and on what else runs on it; compare rows measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from prunus.bcnn.engine import compile_engine
from prunus.environment import environment_info

__all__ = ["BenchResult", "Timing", "benchmark", "popcount_ceiling", "time_call"]


@dataclass(frozen=True)
class Timing:
    batch_size: int
    median_ms: float
    min_ms: float
    p90_ms: float
    repeats: int

    @property
    def fps(self) -> float:
        return 1000.0 * self.batch_size / self.median_ms if self.median_ms > 0 else float("inf")


def time_call(fn: Callable[[], Any], repeats: int, warmup: int, batch_size: int,
              max_seconds: float | None = None) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    With ``max_seconds``, timing stops early once that much time has passed and at least 3 runs
    were timed (a slow configuration does not hold a benchmark up); ``repeats`` then says how many ran.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (max_seconds is None or len(times) < 3
                                    or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return Timing(batch_size, statistics.median(times), times[0], p90, len(times))


def popcount_ceiling(threads: int | None = None, seconds: float = 0.2) -> dict[str, float]:
    """Sustained bit-MAC/s of the engine's XOR + popcount + add loop on L1-resident data, all threads.

    The loop is the conv kernel's own (``acc[i] += popcount(patch[q, i] ^ w[q])`` over a tile of
    pixels), one serial copy per thread on the engine's kind of threads.  About ``seconds`` of work
    after a short calibration.  Returns ``bit_macs_per_s``, ``threads`` and ``seconds``.
    """
    import numba

    from prunus.bcnn.engine import kernels  # numba's: imported only when the ceiling is measured


    t = threads or numba.get_num_threads()
    rng = np.random.default_rng(0)
    n, tile = 16, 64  # 16 x 64 words = 8 KiB per thread: stays in L1
    a = [rng.integers(0, 2**63, (n, tile), dtype=np.int64).view(np.uint64) for _ in range(t)]
    w = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64)
    outs = [np.zeros(1, np.int64) for _ in range(t)]
    kernels.popcount_ceiling_kernel(a[0], w, 1, outs[0])  # compile
    repeats = 100
    while True:
        t0 = time.perf_counter()
        kernels.popcount_ceiling_kernel(a[0], w, repeats, outs[0])
        elapsed = time.perf_counter() - t0
        if elapsed > seconds / 4 or repeats > 1 << 26:
            break
        repeats *= 4
    repeats = max(1, int(repeats * seconds / max(elapsed, 1e-9)))
    with ThreadPoolExecutor(t) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda i: kernels.popcount_ceiling_kernel(a[i], w, repeats, outs[i]), range(t)))
        elapsed = time.perf_counter() - t0
    return {"bit_macs_per_s": t * repeats * n * tile * 64 / elapsed, "threads": t, "seconds": elapsed}


@dataclass
class BenchResult:
    """Everything ``prunus bcnn bench`` prints, JSON-able."""

    model: str
    image_size: int
    in_channels: int
    backend: str
    threads: int
    bit_macs_per_image: int
    exact: bool
    exact_inputs: int
    ceiling_bit_macs_per_s: float | None
    engine: list[dict[str, Any]] = field(default_factory=list)
    torch_fp32: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark(engine, model: torch.nn.Module, *, name: str, batch_sizes: Sequence[int] = (1, 64, 1024),
              repeats: int = 10, warmup: int = 2, threads: int | None = None, compare_torch: bool = True,
              ceiling: bool = True, exact_inputs: int = 8, seed: int = 0) -> BenchResult:
    """Check the engine against the PyTorch forward, then time both at each batch size.

    The PyTorch baseline is the *physically pruned* model in float32 (the ``fp32`` backend: live
    filters only, same logits): timing the masked model would credit the engine with skipping
    zero filters that any deployment would remove anyway.
    """

    size, cin = engine.program.image_size, engine.program.in_channels_raw
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    torch_threads, engine_threads = torch.get_num_threads(), engine.threads
    if threads:
        torch.set_num_threads(threads)
        engine.threads = threads
    used = engine.num_threads() if engine.backend.name == "numba" else torch.get_num_threads()
    try:
        x = torch.randn(exact_inputs, cin, size, size, generator=gen)
        baseline = None
        if compare_torch:
            baseline = compile_engine(model, size, backend="fp32")
        with torch.no_grad():
            ref = model(x)
            exact = bool(torch.equal(engine(x), ref)) and (baseline is None or bool(torch.equal(baseline(x), ref)))
        result = BenchResult(name, size, cin, engine.backend.name, used, engine.bit_macs, exact, exact_inputs, None,
                             layers=[layer.to_dict() for layer in engine.layers()], machine=environment_info())
        if ceiling and engine.backend.name == "numba":
            result.ceiling_bit_macs_per_s = popcount_ceiling(used)["bit_macs_per_s"]
        for b in batch_sizes:
            xb = torch.randn(b, cin, size, size, generator=gen)
            t = time_call(lambda: engine(xb), repeats, warmup, b)
            row = {**asdict(t), "fps": t.fps, "bit_macs_per_s": t.fps * engine.bit_macs}
            if result.ceiling_bit_macs_per_s:
                row["ceiling_fraction"] = row["bit_macs_per_s"] / result.ceiling_bit_macs_per_s
            result.engine.append(row)
            if baseline is not None:
                with torch.inference_mode():
                    tt = time_call(lambda: baseline(xb), repeats, warmup, b)
                result.torch_fp32.append({**asdict(tt), "fps": tt.fps})
        return result
    finally:
        torch.set_num_threads(torch_threads)
        engine.threads = engine_threads
