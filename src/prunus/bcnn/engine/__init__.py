"""The BCNN inference engine: binary complex convolutions as XNOR + popcount on 64-bit words.

    from prunus.bcnn.engine import compile_engine
    engine = compile_engine(model, image_size=32)          # numba on the CPU (the 'bcnn' extra)
    logits = engine(images)                                # == model.eval()(images), exactly

``backend="torch"`` runs the same program with PyTorch integer ops on any device (the CUDA
path; no numba needed).  How the model becomes a program, and why the result is bit-exact, is
in :mod:`prunus.bcnn.engine.program`; the kernels are in :mod:`prunus.bcnn.engine.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunus.bcnn.engine.backends import make_backend
from prunus.bcnn.engine.program import BConv, Program, TorchHead, TorchIn, compile_program, run_program

__all__ = ["BinaryEngine", "LayerInfo", "compile_engine"]


@dataclass(frozen=True)
class LayerInfo:
    """One binary layer as the engine runs it (channels are stacked real/imag counts)."""

    name: str
    mode: str
    kernel: int
    stride: int
    in_channels: int  # live input bits per pixel
    in_channels_dense: int
    out_channels: int  # live output channels (rows of the packed weights)
    out_channels_dense: int
    out_size: tuple[int, int]
    packed_weight_bytes: int
    bit_macs: int  # per image

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class BinaryEngine:
    """A compiled binary complex network; call it on a batch of model inputs to get logits.

    With the numba backend a call runs the fused, chunked path (:mod:`prunus.bcnn.engine.runner`) on
    ``threads`` threads (default: numba's thread count, ``NUMBA_NUM_THREADS``), in chunks of
    ``chunk`` images (default: the runner's ``DEFAULT_CHUNK``); the few cases it must not chunk (see
    :meth:`ChunkedRunner.supports`) and other backends run :func:`~prunus.bcnn.engine.program.run_program`
    on the whole batch.
    """

    def __init__(self, program: Program, backend, *, threads: int | None = None, chunk: int | None = None) -> None:
        self.program, self.backend = program, backend
        self.threads = threads
        for op in program.bconvs():
            backend.prepare(op)
        self.runner = backend.runner.ChunkedRunner(program, chunk) if backend.name == "numba" else None

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        size = self.program.image_size
        if x.dim() != 4 or tuple(x.shape[2:]) != (size, size):
            raise ValueError(f"the engine was compiled for inputs of size {size}x{size}, got shape {tuple(x.shape)}")
        return x.cpu()

    def _fast(self, x: torch.Tensor) -> bool:
        return self.runner is not None and not x.is_complex() and self.runner.supports(x.shape[0])

    def num_threads(self) -> int:
        """Threads a call uses: ``threads`` if set, else numba's thread count."""
        if self.threads:
            return int(self.threads)
        import numba

        return numba.get_num_threads()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x)
        if self._fast(x):
            return self.runner(x.to(torch.float32), self.num_threads())
        return run_program(self.program, self.backend, x)

    def profile(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Logits and seconds spent per step (layer), on one thread; the fast path only (numba backend)."""
        x = self._check(x)
        if not self._fast(x):
            raise ValueError("profile() needs the numba backend's chunked path for this batch")
        times: dict[str, float] = {}
        out = self.runner(x.to(torch.float32), 1, times)
        return out, times

    def trace(self, x: torch.Tensor) -> dict[int, Any]:
        """Every intermediate value of one run, by edge id (for tests and debugging)."""
        return run_program(self.program, self.backend, x.cpu(), keep=True)

    def layers(self) -> list[LayerInfo]:
        out = []
        for op in self.program.bconvs():
            src = self.program.edges[op.src[0]]
            dst = self.program.edges[op.dst]
            out.append(LayerInfo(op.name, op.mode, op.kernel[0], op.stride, op.nbits, src.channels, op.out_channels,
                                 dst.channels if dst.channels else op.out_channels, tuple(op.out_size),
                                 int(op.weights.nbytes), op.bit_macs))
        return out

    def live_weights(self) -> dict[str, int]:
        """Real weights each layer still applies (live filters x live input channels), first and last layers included.

        Weights that read a removed (constant) channel are not counted: the compiler folds them into
        exact constant corrections.  A binary complex layer counts ``[Wr | Wi]`` once, although its
        packed block weight holds every value twice.
        """

        counts: dict[str, int] = {}
        for op in self.program.ops:
            if isinstance(op, TorchIn) and op.stem is not None:
                counts[op.name] = int(op.stem.weight.numel())
            elif isinstance(op, TorchHead):
                fc = op.fn.fc if hasattr(op.fn, "fc") else None
                live = len(self.program.edges[op.src[0]].live)
                counts[op.name] = (fc.out_channels if fc is not None else 0) * live
            elif isinstance(op, BConv):
                taps = op.kernel[0] * op.kernel[1]
                per_row = op.nbits * taps
                counts[op.name] = op.out_channels * per_row if op.mode == "logits" else op.out_channels * per_row // 2
        return counts

    @property
    def first_layer(self) -> str:
        """How the first layer runs: "binary", "float32" (PyTorch) or "int8 (onednn-int8)" / "int8 (float32)" (its
        kernel, :mod:`prunus.bcnn.engine.int8_conv`; a whitening-BN stem runs as the model's own modules)."""
        for op in self.program.ops:
            if isinstance(op, TorchIn) and op.stem is not None:
                conv = op.stem.integer_conv
                if conv is None:
                    return "float32"
                runner = self.runner  # the numba path runs it when its probe accepted the stem
                uses_kernel = (op.stem.norm == "naive" and runner is not None and all(runner.ok.values())
                               and None not in runner.stem_variant.values())
                return f"int8 ({conv.kernel if uses_kernel else 'float32'})"
        return "binary"

    @property
    def bit_macs(self) -> int:
        """+-1 multiply-accumulates per image over all binary layers (as executed: live channels only)."""
        return self.program.bit_macs

    @property
    def packed_weights(self) -> dict[str, Any]:
        """Layer name -> uint64 weights ``(kh, kw, words, out_channels)`` as the kernels read them."""
        return {op.name: op.weights for op in self.program.bconvs()}


def compile_engine(model: nn.Module, image_size: int, *, backend: str = "numba",
                   device: str | torch.device | None = None, threads: int | None = None,
                   chunk: int | None = None) -> BinaryEngine:
    """Compile a binary complex network (``cnin``, ``cresnet18``, ...) for ``image_size`` x ``image_size`` inputs.

    ``backend="numba"`` (default) needs the optional numba package (``pip install 'prunus[bcnn]'``);
    ``threads`` and ``chunk`` set its parallelism (see :class:`BinaryEngine`).  ``backend="torch"``
    uses PyTorch only and runs on ``device`` (default: CUDA when available).
    """
    chosen = make_backend(backend, device)  # first, so a missing numba is reported before any work
    return BinaryEngine(compile_program(model, image_size), chosen, threads=threads, chunk=chunk)
