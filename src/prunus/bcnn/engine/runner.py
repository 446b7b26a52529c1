"""The numba backend's fast path: the batch in chunks, each chunk through the whole network on one thread.

Why chunks: a layer-at-a-time pass over a batch of 1024 images allocates and page-faults hundreds of
MB per call (the full-precision first layer alone: 1024 x 192 x 32 x 32 floats, several times over
in PyTorch's temporaries) and streams every activation through DRAM.  A chunk of ``chunk`` images
keeps each activation within a few MB, and its buffers are allocated once per thread and reused on
every call.  Each chunk also pays fixed costs per step (a numba call; for the PyTorch steps, the first
layer and the head, their dispatch and setup), which a larger chunk spreads over more images.  The
default, ``DEFAULT_CHUNK`` images, is chosen by the chunk sweep of ``benchmarks/bcnn_throughput.py``
on the trained 20x models.

Why our own threads: every kernel is serial and releases the GIL; ``threads`` Python threads take
chunks from a shared counter.  There is no numba thread pool, whose OpenMP workers spin between
kernels and fight PyTorch's own OpenMP threads on a small machine; PyTorch runs single-threaded
inside the engine's call (its setting is restored afterwards).

What is fused (each a single pass over the chunk, see :mod:`prunus.bcnn.engine.kernels`):

* the pruned full-precision first layer: PyTorch's convolution on the live filters only, then BN,
  sign and packing (and the float map when a residual add reads it) in one numba kernel;
* a binary conv with BN + sign folded into integer thresholds, writing packed bits;
* a binary conv feeding a float consumer: scale, BN, the residual add and the sign bits of the sum
  (ResNet's blocks), in float32 in the reference's order.

Exactness: the binary part is exact by construction (integers, and the same float32 operations as
the reference).  Two things are checked on random inputs when the runner is built, because they
depend on PyTorch rather than on this code: that PyTorch's first-layer convolution gives each
output the same value without the pruned filters, per chunk and (if it is faster) in channels-last
layout, and that the full-precision head's pooling gives each image the same features per chunk
(its linear layer runs once per call on the whole batch, as in the reference).  PyTorch picks a
different algorithm for a single image than for a batch (e.g. a 3x3 conv on one 32x32 image is not
run by oneDNN), so batch size 1 is checked against the reference at batch size 1, and chunks never
have 1 image unless the batch has.  Where a check fails the engine runs that case the exact
reference way (:func:`prunus.bcnn.engine.program.run_program`, whole batch).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from prunus.bcnn.engine import kernels as K
from prunus.bcnn.engine.program import (
    Add,
    BConv,
    BitPool,
    FloatPool,
    Pack,
    PooledBits,
    Program,
    TorchHead,
    TorchIn,
    _expand,
    _full,
    float_epilogue,
    fp_stem_conv,
)
from prunus.bcnn.layers import unstack
from prunus.bcnn.models import ComplexHead

__all__ = ["DEFAULT_CHUNK", "ChunkedRunner", "ConvLayer"]

#: output pixels per kernel tile, at least (rows of several images are tiled together when maps are small)
TILE_PIXELS = 64
#: images per chunk unless the caller sets it (the module docstring says why this many)
DEFAULT_CHUNK = 32


def _words(channels: int) -> int:
    return max(1, -(-channels // 64))


class ConvLayer:
    """A binary conv op in the form the kernels take, for one input size (see :mod:`prunus.bcnn.engine.kernels`)."""

    def __init__(self, op: BConv, size: tuple[int, int]) -> None:
        H, W = size
        k, stride, pad = op.kernel[0], op.stride, op.padding
        ho, wo = op.out_size
        C = op.nbits
        self.op, self.size = op, size
        self.k, self.stride, self.pad, self.ho, self.wo, self.C = k, stride, pad, ho, wo, C
        self.wt = K.patch_weights(op.weights, C)
        KW, P = self.wt.shape
        full = k * k * C  # bits of a patch, outside taps included
        corr_int = op.corr_int.astype(np.int64)
        self.ck = np.ascontiguousarray(full + corr_int)
        self.border_rows = np.array([oy * stride - pad < 0 or oy * stride - pad + k > H for oy in range(ho)], np.bool_)
        cols = [ox for ox in range(wo) if ox * stride - pad >= 0 and ox * stride - pad + k <= W]
        self.lo_col, self.hi_col = (cols[0], cols[-1] + 1) if cols else (wo, wo)
        if self.border_rows.any() or self.lo_col > 0 or self.hi_col < wo:
            corr = full + corr_int[None, None, :] + K.padding_correction(op.weights, C, size, stride, pad, (ho, wo))
            if op.corr_border.shape[0]:
                corr = corr + op.corr_border.astype(np.int64)
            self.ckb = np.ascontiguousarray(corr.transpose(0, 2, 1))  # (Ho, P, Wo)
        else:
            self.ckb = np.zeros((1, P, 1), np.int64)
        self.flip = np.ascontiguousarray(op.flip, np.int64)
        self.thr = np.ascontiguousarray(op.thr, np.int64)
        self.R = max(1, TILE_PIXELS // wo)
        self.scratch_shapes = ((KW, self.R, wo), (P, self.R, wo))

    def scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread scratch: the tile's packed receptive fields and popcount sums."""
        a, b = self.scratch_shapes
        return np.zeros(a, np.uint64), np.zeros(b, np.int64)

    def args(self) -> tuple:
        return (self.wt, self.C, self.k, self.stride, self.pad, self.ho, self.wo, self.R, self.ck, self.ckb,
                self.border_rows, self.lo_col, self.hi_col)

    def bits(self, x: np.ndarray, out: np.ndarray, scratch) -> None:
        K.bconv_bits(x, *self.args(), self.flip, self.thr, *scratch, out)

    def ints(self, x: np.ndarray, out: np.ndarray, scratch) -> None:
        K.bconv_int(x, *self.args(), *scratch, out)


# -- per-thread state ---------------------------------------------------------------------------------------------


class Workspace:
    """One thread's buffers: every activation of a chunk and every layer's scratch, allocated once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffers: dict[Any, np.ndarray] = {}
        self.scratch: dict[str, tuple] = {}
        self.values: dict[int, Any] = {}

    def buffer(self, key: Any, n: int, tail: tuple[int, ...], dtype) -> np.ndarray:
        arr = self.buffers.get(key)
        if arr is None or arr.shape[0] < n or arr.shape[1:] != tuple(tail) or arr.dtype != dtype:
            arr = self.buffers[key] = np.empty((max(n, self.capacity), *tail), dtype)
        return arr[:n]

    def layer_scratch(self, layer: ConvLayer):
        s = self.scratch.get(layer.op.name)
        if s is None:
            s = self.scratch[layer.op.name] = layer.scratch()
        return s


_EMPTY_F4 = np.zeros((0, 0, 0, 0), np.float32)
_EMPTY_U4 = np.zeros((0, 0, 0, 0), np.uint64)
_EMPTY_F1 = np.zeros(0, np.float32)


def _float_value(v) -> torch.Tensor:
    return torch.from_numpy(v) if isinstance(v, np.ndarray) else v


def _numpy_float(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def _positions(held: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each channel of ``wanted``, its index in ``held`` (both ascending), or -1 where ``held`` lacks it."""
    where = {int(c): i for i, c in enumerate(held)}
    return np.array([where.get(int(c), -1) for c in wanted], np.int64)


# -- steps ---------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    run: Callable[[Workspace, torch.Tensor, int], None]


class _Builder:
    """Turns the program's ops into fused steps (see the module docstring)."""

    def __init__(self, program: Program, stem_variant: dict[int, bool | None]) -> None:
        self.p = program
        self.stem_variant = stem_variant
        self.consumers: dict[int, list] = {}
        for op in program.ops:
            for i in op.src:
                self.consumers.setdefault(i, []).append(op)
        self.layers: dict[str, ConvLayer] = {}
        for op in program.bconvs():
            self.layers[op.name] = ConvLayer(op, program.edges[op.src[0]].size)
        self.fused: set[int] = set()  # ids of ops done inside another step
        self.deferred: dict[int, BConv] = {}  # id of an add -> the conv whose epilogue it joins
        self.head_fns: dict[int, HeadFns] = {}
        self.finish: Callable | None = None  # run once per call on the concatenated chunk outputs
        self.steps: list[Step] = []

    def edge(self, i: int):
        return self.p.edges[i]

    def packs_of(self, edge_id: int) -> list[Pack]:
        return [op for op in self.consumers.get(edge_id, []) if isinstance(op, Pack)]

    def needs_float(self, edge_id: int) -> bool:
        return any(not isinstance(op, Pack) for op in self.consumers.get(edge_id, []))

    def build(self) -> list[Step]:
        for op in self.p.ops:
            if id(op) in self.fused:
                continue
            if isinstance(op, TorchIn):
                self.torch_in(op)
            elif isinstance(op, Pack):
                self.pack(op)
            elif isinstance(op, BConv):
                self.bconv(op)
            elif isinstance(op, BitPool):
                self.bitpool(op)
            elif isinstance(op, FloatPool):
                self.floatpool(op)
            elif isinstance(op, Add):
                conv = self.deferred.pop(id(op), None)
                if conv is None:
                    self.add(op)
                else:
                    other = op.src[1] if op.src[0] == conv.dst else op.src[0]
                    self.bn_step(conv, self.layers[conv.name], op.dst, other, f"{conv.name}+add")
            elif isinstance(op, TorchHead):
                self.head(op)
            elif isinstance(op, PooledBits):
                self.pooled_bits(op)
            else:  # pragma: no cover
                raise TypeError(type(op).__name__)
        return self.steps

    # -- boundary ----------------------------------------------------------------------------------------------------
    def torch_in(self, op: TorchIn) -> None:
        e = self.edge(op.dst)
        if op.stem is None or op.stem.norm != "naive":  # the model's own input (+ stem) in PyTorch
            live = op.live

            def run_in(ws, x, n, op=op, live=live):
                out = op.fn(x)
                ws.values[op.dst] = _numpy_float(out if live is None else out.index_select(1, live))

            self.steps.append(Step(op.name, run_in))
            return
        stem = op.stem
        packs = self.packs_of(e.id)
        want_float = self.needs_float(e.id) or stem.pool is not None
        for pk in packs:
            self.fused.add(id(pk))
        bits_dsts = [pk.dst for pk in packs]
        L = len(e.live)
        nw = _words(L)
        bias = _EMPTY_F1 if stem.bias is None else stem.bias.numpy().astype(np.float32)
        s, t = (v.numpy().astype(np.float32) for v in stem.bn)
        variant = self.stem_variant

        def run_stem(ws, x, n, op=op):
            channels_last = bool(variant[1 if n == 1 else 2])
            y = fp_stem_conv(stem, x, channels_last, integer_kernel=True)
            _, _, h, w = y.shape
            ya = (y.permute(0, 2, 3, 1) if channels_last else y).contiguous().numpy()
            out = ws.buffer(("stem", "f"), n, (L, h, w), np.float32) if want_float else _EMPTY_F4
            if stem.pool is None and bits_dsts:
                bits = ws.buffer(("stem", "b"), n, (nw, h, w), np.uint64)
            else:
                bits = _EMPTY_U4
            K.stem_epilogue(ya, channels_last, bias, s, t, out, bits)
            if stem.pool is not None:
                k, st, pd, ceil = stem.pool
                out = _numpy_float(F.max_pool2d(torch.from_numpy(out), k, st, pd, 1, ceil))
                if bits_dsts:
                    bits = ws.buffer(("stem", "b"), n, (nw, *out.shape[2:]), np.uint64)
                    K.pack_nchw(out, bits)
            ws.values[op.dst] = out
            for d in bits_dsts:
                ws.values[d] = bits

        self.steps.append(Step(op.name, run_stem))

    def pack(self, op: Pack) -> None:
        e = self.edge(op.dst)

        def run_pack(ws, x, n, op=op, e=e):
            src = ws.values[op.src[0]]
            if not isinstance(src, np.ndarray):
                src = _numpy_float(src)
            out = ws.buffer(op.dst, n, (e.words, src.shape[2], src.shape[3]), np.uint64)
            K.pack_nchw(src, out)
            ws.values[op.dst] = out

        self.steps.append(Step(op.name, run_pack))

    # -- binary layers -----------------------------------------------------------------------------------------------
    def bconv(self, op: BConv) -> None:
        layer = self.layers[op.name]
        ho, wo = op.out_size
        if op.mode == "threshold":
            nw = _words(op.out_channels)

            def run_bits(ws, x, n, op=op, layer=layer):
                out = ws.buffer(op.dst, n, (nw, ho, wo), np.uint64)
                layer.bits(ws.values[op.src[0]], out, ws.layer_scratch(layer))
                ws.values[op.dst] = out

            self.steps.append(Step(op.name, run_bits))
            return
        if op.mode == "float" and op.norm == "naive":
            users = self.consumers.get(op.dst, [])
            if len(users) == 1 and isinstance(users[0], Add) and id(users[0]) not in self.deferred:
                self.deferred[id(users[0])] = op  # fused into the add, so it runs after the shortcut
                return
            self.bn_step(op, layer, op.dst, None, op.name)
            return

        def run_int(ws, x, n, op=op, layer=layer):  # whitening BN or logits: the epilogue in PyTorch
            acc = ws.buffer(("acc", op.name), n, (op.out_channels, ho, wo), np.int32)
            layer.ints(ws.values[op.src[0]], acc, ws.layer_scratch(layer))
            out = float_epilogue(op, torch.from_numpy(acc))
            ws.values[op.dst] = out if op.mode == "logits" else _numpy_float(out)

        self.steps.append(Step(op.name, run_int))

    def bn_step(self, op: BConv, layer: ConvLayer, dst: int, res: int | None, name: str) -> None:
        """Conv + scale + BN into edge ``dst`` (+ the residual edge ``res``), with the sign bits its packs need."""
        out_edge = self.edge(dst)
        rows_of = _positions(op.out_live, out_edge.live)
        const = self.edge(op.dst).const[out_edge.live].astype(np.float32)
        if res is not None:
            r = self.edge(res)
            res_rows = _positions(r.live, out_edge.live)
            res_const = r.const[out_edge.live].astype(np.float32)
        else:
            res_rows, res_const = np.zeros(0, np.int64), _EMPTY_F1
        alpha = op.alpha.numpy().astype(np.float32)
        s, t = (v.numpy().astype(np.float32) for v in op.bn)
        packs = self.packs_of(dst)
        for pk in packs:
            self.fused.add(id(pk))
        bits_dsts = [pk.dst for pk in packs]
        J = len(out_edge.live)
        ho, wo = op.out_size
        nw = _words(J)

        def run_bn(ws, x, n, op=op, layer=layer):
            out = ws.buffer(dst, n, (J, ho, wo), np.float32)
            bits = ws.buffer(("bits", dst), n, (nw, ho, wo), np.uint64) if bits_dsts else _EMPTY_U4
            rv = _EMPTY_F4 if res is None else ws.values[res]
            if not isinstance(rv, np.ndarray):
                rv = _numpy_float(rv)
            K.bconv_bn(ws.values[op.src[0]], *layer.args(), alpha, s, t, rows_of, const, rv, res_rows, res_const,
                       *ws.layer_scratch(layer), out, bits)
            ws.values[dst] = out
            for d in bits_dsts:
                ws.values[d] = bits

        self.steps.append(Step(name, run_bn))

    def bitpool(self, op: BitPool) -> None:
        ho, wo = op.out_size

        def run_pool(ws, x, n, op=op):
            src = ws.values[op.src[0]]
            out = ws.buffer(op.dst, n, (src.shape[1], ho, wo), np.uint64)
            K.bit_maxpool(src, op.kernel, op.stride, op.padding, ho, wo, out)
            ws.values[op.dst] = out

        self.steps.append(Step(op.name, run_pool))

    def floatpool(self, op: FloatPool) -> None:
        def run_fpool(ws, x, n, op=op):
            src = _float_value(ws.values[op.src[0]])
            ws.values[op.dst] = _numpy_float(F.max_pool2d(src, op.kernel, op.stride, op.padding, 1, op.ceil_mode))

        self.steps.append(Step(op.name, run_fpool))

    def add(self, op: Add) -> None:
        edges = self.p.edges

        def run_add(ws, x, n, op=op):
            a, b = (edges[i] for i in op.src)
            live = edges[op.dst].live
            va, vb = _float_value(ws.values[a.id]), _float_value(ws.values[b.id])
            ws.values[op.dst] = _numpy_float(_expand(va, a, live) + _expand(vb, b, live))

        self.steps.append(Step(op.name, run_add))

    # -- head --------------------------------------------------------------------------------------------------------
    def head(self, op: TorchHead) -> None:
        e = self.edge(op.src[0])
        fns = _head_fns(op, e)
        self.head_fns[id(op)] = fns
        if fns.finish is not None:  # per chunk: pooled features; once per call: the linear layer
            self.finish = fns.finish
        fn = fns.features or fns.fast

        def run_head(ws, x, n, op=op, e=e):
            ws.values[op.dst] = fn(_float_value(ws.values[e.id]))

        self.steps.append(Step(op.name, run_head))

    def pooled_bits(self, op: PooledBits) -> None:
        e = self.edge(op.src[0])
        nw = _words(len(e.live))
        fns = self.head_fns[id(op)] = _head_fns(op, e)
        fn = fns.fast

        def run_pooled(ws, x, n, op=op, e=e):
            pooled = _numpy_float(fn(_float_value(ws.values[e.id]))[:, :, None, None])
            out = ws.buffer(op.dst, n, (nw, 1, 1), np.uint64)
            K.pack_nchw(pooled, out)
            ws.values[op.dst] = out

        self.steps.append(Step(op.name, run_pooled))


@dataclass
class HeadFns:
    """How the head runs: ``reference`` and ``fast`` map a live float map ``(n, L, h, w)`` to the logits
    (``TorchHead``) or to the pooled live features (``PooledBits``, before the sign).  For a ``TorchHead``
    with a fast form, ``features`` (per chunk: every channel's pooled value) followed by ``finish``
    (once per call, on the whole batch: the head's linear layer) is ``fast``."""

    reference: Callable
    fast: Callable
    features: Callable | None = None
    finish: Callable | None = None


def _head_fns(op: TorchHead | PooledBits, e) -> HeadFns:
    """The head's functions (:class:`HeadFns`).

    The reference rebuilds the full-width map (dead channels at their constant) and calls the model's
    head.  The fast form pools only the live channels and takes each dead channel's pooled value from
    a constant map pooled once -- the same per-channel operation on a map a few times smaller -- and
    runs the head's own linear layer once on the whole batch, so that it sees the same batch shape as
    in the reference forward (checked against the reference by the runner's probe).
    """
    head = op.fn if isinstance(op, TorchHead) else getattr(op.fn, "__self__", None)
    live = torch.from_numpy(e.live)

    def reference(v: torch.Tensor) -> torch.Tensor:
        r, i = unstack(_full(v, e))
        out = op.fn((r.contiguous(), i.contiguous()))
        return out if isinstance(op, TorchHead) else torch.cat(out, 1)[:, live]

    if not isinstance(head, ComplexHead) or head.pool.kernel_size is not None:
        return HeadFns(reference, reference)
    h, w = e.size
    const_map = torch.from_numpy(e.const).view(1, -1, 1, 1).expand(1, e.channels, h, w).contiguous()
    pooled_const = F.adaptive_avg_pool2d(const_map, 1).view(1, e.channels)
    half = e.channels // 2

    def pooled_live(v: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(v.contiguous(), 1).view(v.shape[0], -1)

    if isinstance(op, PooledBits):
        return HeadFns(reference, pooled_live)

    def features(v: torch.Tensor) -> torch.Tensor:
        feats = pooled_const.expand(v.shape[0], e.channels).clone()
        feats[:, live] = pooled_live(v)
        return feats

    def finish(feats: torch.Tensor) -> torch.Tensor:
        return head.fc((feats[:, :half], feats[:, half:]))

    return HeadFns(reference, lambda v: finish(features(v)), features, finish)


# -- the runner ----------------------------------------------------------------------------------------------------


def chunk_sizes(batch: int, chunk: int) -> list[int]:
    """Near-equal chunks of about ``chunk`` images; a chunk has 1 image only when the batch has (see the probe)."""
    if batch <= chunk:
        return [batch]
    m = min(-(-batch // chunk), batch // 2)
    base, extra = divmod(batch, m)
    return [base + (1 if i < extra else 0) for i in range(m)]


class ChunkedRunner:
    """Runs a program on the numba kernels, chunk by chunk, on ``threads`` threads (module docstring)."""

    def __init__(self, program: Program, chunk: int | None = None, probe: bool = True) -> None:
        self.program = program
        self.chunk = max(2, int(chunk or DEFAULT_CHUNK))
        self.stem_variant: dict[int, bool | None] = {1: False, 2: False}  # channels-last first layer, per class
        self.ok = {1: True, 2: True}  # batch of 1 / batches of 2 or more may run chunked
        builder = _Builder(program, self.stem_variant)
        self.steps = builder.build()
        self.finish = builder.finish
        if probe:
            self._probe()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0
        self._workspaces: list[Workspace] = []

    # -- which cases may run chunked -------------------------------------------------------------------------------
    def supports(self, batch: int) -> bool:
        """Whether a batch of this size runs chunked (exact); otherwise the caller runs the reference way."""
        return self.ok[1 if batch == 1 else 2]

    def _probe(self) -> None:
        """Check the PyTorch-side pieces per chunk against the whole-batch reference (see the module docstring).

        A batch of 1 runs as one chunk of 1, so it is compared with the reference at batch size 1;
        larger batches run in chunks of 2 to ``chunk`` images, compared with one reference batch holding
        chunks of 2, 3, 5 and ``chunk`` images (PyTorch may pick its algorithm by the batch size).
        The engine's side runs single-threaded, as inside a call; the reference with PyTorch's setting.
        """
        torch_threads = torch.get_num_threads()
        try:
            self._probe_pieces(torch_threads)
        finally:
            torch.set_num_threads(torch_threads)

    def _probe_pieces(self, torch_threads: int) -> None:
        p = self.program
        gen = torch.Generator().manual_seed(12345)
        full = max(self.chunk, 3)  # the largest chunk chunk_sizes makes
        x = torch.randn(11 + full, p.in_channels_raw, p.image_size, p.image_size, generator=gen)
        pieces = [(1, 3), (3, 6), (6, 11), (11, 11 + full)]  # chunks of 2, 3, 5 and the largest images
        for op in p.ops:
            if isinstance(op, TorchIn):
                torch.set_num_threads(torch_threads)
                with torch.no_grad():
                    ref, ref_one = op.fn(x), op.fn(x[:1])
                    if op.live is not None:
                        ref, ref_one = ref.index_select(1, op.live), ref_one.index_select(1, op.live)
                torch.set_num_threads(1)
                if op.stem is None or op.stem.norm != "naive":  # the model's own modules, per chunk
                    with torch.no_grad():
                        same = all(torch.equal(self._fn(op, x[a:b]), ref[a:b]) for a, b in pieces)
                    self.ok[2] = self.ok[2] and same
                    continue
                # channels-last makes PyTorch's conv faster, but a float output (the residual stream) must then be
                # transposed back: prefer NCHW when the first layer feeds a float consumer
                wants_float = any(not isinstance(c, Pack) for c in p.ops if op.dst in c.src)
                for cls in (1, 2):
                    self.stem_variant[cls] = None
                    for channels_last in ((False, True) if wants_float else (True, False)):
                        if cls == 1:
                            same = torch.equal(self._stem_float(op.stem, x[:1], channels_last), ref_one)
                        else:
                            same = all(torch.equal(self._stem_float(op.stem, x[a:b], channels_last), ref[a:b])
                                       for a, b in pieces)
                        if same:
                            self.stem_variant[cls] = channels_last
                            break
                    self.ok[cls] = self.ok[cls] and self.stem_variant[cls] is not None
            elif isinstance(op, (TorchHead, PooledBits)):
                e = p.edges[op.src[0]]
                feat = torch.randn(11 + full, len(e.live), *e.size, generator=gen)
                fns = _head_fns(op, e)
                torch.set_num_threads(torch_threads)
                with torch.no_grad():
                    ref, ref_one = fns.reference(feat), fns.reference(feat[:1].clone())
                torch.set_num_threads(1)
                with torch.no_grad():
                    self.ok[1] = self.ok[1] and torch.equal(fns.fast(feat[:1].clone()), ref_one)
                    if fns.finish is None:
                        same = all(torch.equal(fns.fast(feat[a:b].clone()), ref[a:b]) for a, b in pieces)
                    else:  # features per chunk, the linear layer on the whole batch
                        parts = [fns.features(feat[a:b].clone()) for a, b in [(0, 1)] + pieces]
                        same = torch.equal(fns.finish(torch.cat(parts, 0)), ref)
                    self.ok[2] = self.ok[2] and same

    @staticmethod
    def _fn(op: TorchIn, x: torch.Tensor) -> torch.Tensor:
        out = op.fn(x)
        return out if op.live is None else out.index_select(1, op.live)

    @staticmethod
    def _stem_float(stem, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """The fast first layer's float output (conv on live filters + the numba epilogue), for the probe."""
        with torch.no_grad():
            y = fp_stem_conv(stem, x, channels_last, integer_kernel=True)
        n, L, h, w = y.shape
        ya = (y.permute(0, 2, 3, 1) if channels_last else y).contiguous().numpy()
        out = np.empty((n, L, h, w), np.float32)
        bias = _EMPTY_F1 if stem.bias is None else stem.bias.numpy().astype(np.float32)
        s, t = (v.numpy().astype(np.float32) for v in stem.bn)
        K.stem_epilogue(ya, channels_last, bias, s, t, out, _EMPTY_U4)
        res = torch.from_numpy(out)
        if stem.pool is not None:
            k, st, pd, ceil = stem.pool
            res = F.max_pool2d(res, k, st, pd, 1, ceil)
        return res

    # -- running ---------------------------------------------------------------------------------------------------
    def _run_chunk(self, ws: Workspace, x: torch.Tensor, times: dict[str, float] | None = None) -> torch.Tensor:
        n = x.shape[0]
        ws.values.clear()
        for step in self.steps:
            if times is None:
                step.run(ws, x, n)
            else:
                t0 = time.perf_counter()
                step.run(ws, x, n)
                times[step.name] = times.get(step.name, 0.0) + time.perf_counter() - t0
        out = ws.values[self.program.output]
        ws.values.clear()
        return out

    def __call__(self, x: torch.Tensor, threads: int = 1, times: dict[str, float] | None = None) -> torch.Tensor:
        """Logits of ``x`` (``supports(len(x))`` must hold); ``times`` collects seconds per step (use 1 thread)."""
        sizes = chunk_sizes(x.shape[0], self.chunk)
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        threads = max(1, min(int(threads), len(sizes)))
        while len(self._workspaces) < threads:
            self._workspaces.append(Workspace(self.chunk))
        results: list[torch.Tensor | None] = [None] * len(sizes)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the engine's threads are the parallelism; see the module docstring
        try:
            with torch.no_grad():
                if threads == 1:
                    for k in range(len(sizes)):
                        results[k] = self._run_chunk(self._workspaces[0], x[starts[k]: starts[k + 1]], times)
                else:
                    counter = iter(range(len(sizes)))
                    lock = threading.Lock()

                    def work(ws: Workspace) -> None:
                        with torch.no_grad():
                            while True:
                                with lock:
                                    k = next(counter, None)
                                if k is None:
                                    return
                                results[k] = self._run_chunk(ws, x[starts[k]: starts[k + 1]])

                    pool = self._executor(threads)
                    for f in [pool.submit(work, self._workspaces[i]) for i in range(threads)]:
                        f.result()
                out = torch.cat(results, 0)  # type: ignore[arg-type]
                if self.finish is not None:
                    t0 = time.perf_counter()
                    out = self.finish(out)
                    if times is not None:
                        times["head.fc"] = times.get("head.fc", 0.0) + time.perf_counter() - t0
        finally:
            torch.set_num_threads(torch_threads)
        return out

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_threads != threads:
            if self._pool is not None:
                self._pool.shutdown()
            # torch.set_num_threads holds per thread: the workers' PyTorch ops (the first layer, the head) would
            # otherwise each use all cores beside the other workers
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="prunus-bcnn",
                                            initializer=torch.set_num_threads, initargs=(1,))
            self._pool_threads = threads
        return self._pool

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
