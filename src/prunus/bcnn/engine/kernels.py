"""Numba kernels of the BCNN engine (imported only when numba is installed).

Bit layout: an activation is ``uint64[B, H, W, nw]``; stacked channel ``c`` (in the layer's own
order of live channels) is bit ``c % 64`` of word ``c // 64``, bit 1 meaning +1 and bit 0 meaning
-1.  Unused high bits of the last word are 0 in activations and weights alike, so they XOR to 0
and never count.  Weights are ``uint64[kh, kw, nw, P]`` (P = output channels, contiguous), so the
innermost loop runs over output channels with one activation word held in a register:

    acc[p] += popcount(a ^ w[ky, kx, q, p])        for p in 0..P-1

For +-1 vectors of n entries, ``dot = n - 2 * popcount(a XOR b)`` (each differing position
contributes -1 instead of +1).  Out-of-image taps are skipped, which is exactly zero padding of
the reference convolution: ``dot = (valid taps) * nbits - 2 * sum popcounts``.

``popcount64`` lowers to LLVM's ``ctpop``; numba compiles for the host CPU, so on a CPU with
AVX-512 VPOPCNTDQ the vectorised loop above becomes ``vpopcntq`` on zmm registers, elsewhere
``popcnt`` (x86-64-v2) or a bit-trick sequence.  :func:`popcount_instructions` reports what the
compiled kernels contain (checked on this project's AMD EPYC, Zen 5: ``vpopcntq`` on zmm registers).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

__all__ = ["bconv", "bit_maxpool", "pack_signs", "popcount64", "popcount_ceiling_kernel", "popcount_instructions"]


@intrinsic
def popcount64(typingctx, x):
    """Population count of a 64-bit integer (LLVM ``ctpop``), returned as int64."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(x), codegen


#: modes of :func:`bconv`
THRESHOLD, ACCUMULATE = 0, 1


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def bconv(x, w, nbits, stride, pad, out_h, out_w, corr_int, corr_border, flip, thr, mode, out_bits, out_acc):
    """Binary convolution by XNOR-popcount, parallel over (batch, output row).

    ``mode == THRESHOLD``: output bit ``p`` is ``flip[p] * dot >= thr[p]`` (BN + sign folded),
    written to ``out_bits[B, out_h, out_w, nwo]``.  ``mode == ACCUMULATE``: the integer ``dot`` goes
    to ``out_acc[B, out_h, out_w, P]`` (int32).  ``dot`` includes ``corr_int[p]`` and, at border
    pixels (some taps outside the image) when ``corr_border`` is not empty, ``corr_border[oy, ox, p]``:
    the exact contribution of removed input channels that hold a constant +-1 (see the engine).
    """
    B, H, W, nw = x.shape
    kh, kw = w.shape[0], w.shape[1]
    P = w.shape[3]
    full = kh * kw
    has_border = corr_border.shape[0] > 0
    nwo = out_bits.shape[3]
    for job in prange(B * out_h):
        b = job // out_h
        oy = job - b * out_h
        acc = np.empty(P, np.int64)
        dd = np.empty(P, np.int64)
        for ox in range(out_w):
            for p in range(P):
                acc[p] = 0
            nvalid = 0
            for ky in range(kh):
                iy = oy * stride - pad + ky
                if iy < 0 or iy >= H:
                    continue
                for kx in range(kw):
                    ix = ox * stride - pad + kx
                    if ix < 0 or ix >= W:
                        continue
                    nvalid += 1
                    for q in range(nw):
                        a = x[b, iy, ix, q]
                        row = w[ky, kx, q]
                        for p in range(P):
                            acc[p] += popcount64(a ^ row[p])
            base = nvalid * nbits
            border = has_border and nvalid < full
            if mode == 0:
                for p in range(P):  # vectorised: dd >= 0 <=> output bit 1
                    dd[p] = flip[p] * (base - 2 * acc[p] + corr_int[p]) - thr[p]
                if border:
                    for p in range(P):
                        dd[p] += flip[p] * corr_border[oy, ox, p]
                for qo in range(nwo):
                    word = np.uint64(0)
                    for j in range(min(64, P - qo * 64)):
                        if dd[qo * 64 + j] >= 0:
                            word |= np.uint64(1) << np.uint64(j)
                    out_bits[b, oy, ox, qo] = word
            else:
                for p in range(P):
                    d = base - 2 * acc[p] + corr_int[p]
                    if border:
                        d += corr_border[oy, ox, p]
                    out_acc[b, oy, ox, p] = d


@njit(parallel=True, cache=True, nogil=True)
def bit_maxpool(x, k, stride, pad, out_h, out_w, out):
    """Max-pool on sign bits: the OR of the window's words (max of +-1 is +1 iff any is +1); padding ignored."""
    B, H, W, nw = x.shape
    for job in prange(B * out_h):
        b = job // out_h
        oy = job - b * out_h
        for ox in range(out_w):
            for q in range(nw):
                word = np.uint64(0)
                for ky in range(k):
                    iy = oy * stride - pad + ky
                    if iy < 0 or iy >= H:
                        continue
                    for kx in range(k):
                        ix = ox * stride - pad + kx
                        if ix < 0 or ix >= W:
                            continue
                        word |= x[b, iy, ix, q]
                out[b, oy, ox, q] = word


@njit(parallel=True, cache=True, nogil=True)
def pack_signs(x, out):
    """``float32[B, C, H, W]`` (NCHW, as PyTorch holds it) -> sign bits ``uint64[B, H, W, nw]`` (1 where ``x >= 0``).

    Parallel over (batch, row); the inner loop runs along a contiguous image row.
    """
    B, C, H, W = x.shape
    nw = out.shape[3]
    for job in prange(B * H):
        b = job // H
        h = job - b * H
        words = np.zeros((nw, W), np.uint64)
        for c in range(C):
            q = c >> 6
            bit = np.uint64(1) << np.uint64(c & 63)
            for j in range(W):
                if x[b, c, h, j] >= 0:
                    words[q, j] |= bit
        for j in range(W):
            for q in range(nw):
                out[b, h, j, q] = words[q, j]


@njit(parallel=True, cache=True, nogil=True)
def popcount_ceiling_kernel(a, w, repeats, out):
    """The convolution's inner loop on L1-resident data, one independent copy per thread.

    ``a``: ``uint64[T, n]`` activation words, ``w``: ``uint64[n, P]``; every thread ``t`` does
    ``repeats`` passes of ``acc[p] += popcount(a[t, q] ^ w[q, p])``; ``out[t]`` keeps a checksum so
    that nothing is optimised away.  Bit-MACs done: ``T * repeats * n * P * 64``.
    """
    T, n = a.shape
    P = w.shape[1]
    for t in prange(T):
        acc = np.zeros(P, np.int64)
        for _ in range(repeats):
            for q in range(n):
                v = a[t, q]
                for p in range(P):
                    acc[p] += popcount64(v ^ w[q, p])
        s = 0
        for p in range(P):
            s += acc[p]
        out[t] = s


def popcount_instructions(kernel: str = "ceiling") -> dict[str, int]:
    """Count popcount instructions in freshly compiled x86 assembly of a kernel's inner loop.

    ``kernel="ceiling"`` (quick) compiles :func:`popcount_ceiling_kernel`, whose loop is the
    convolution's ``acc[p] += popcount(a ^ w[q, p])``; ``kernel="bconv"`` compiles :func:`bconv` itself
    (a few seconds).  A private, uncached copy is compiled because numba cannot show the assembly of
    code it loaded from its disk cache.  ``vpopcntq`` (with ``zmm_vpopcnt`` counting those on 512-bit
    registers) means the loop is vectorised with AVX-512 VPOPCNTDQ; ``popcnt`` is the scalar instruction.
    """
    if kernel == "ceiling":
        fn = njit(parallel=True, cache=False)(popcount_ceiling_kernel.py_func)
        fn(np.zeros((1, 2), np.uint64), np.zeros((2, 8), np.uint64), 1, np.zeros(1, np.int64))
    elif kernel == "bconv":
        fn = njit(parallel=True, cache=False, fastmath=False, nogil=True)(bconv.py_func)
        _call_bconv(fn)
    else:
        raise ValueError(f"kernel must be 'ceiling' or 'bconv', got {kernel!r}")
    counts = {"vpopcntq": 0, "vpopcntd": 0, "popcnt": 0, "zmm_vpopcnt": 0}
    for asm in fn.inspect_asm().values():
        for line in asm.splitlines():
            op = line.strip().split("\t", 1)[0].strip()
            if op in counts:
                counts[op] += 1
                if op.startswith("vpopcnt") and "zmm" in line:
                    counts["zmm_vpopcnt"] += 1
    return counts


def _call_bconv(fn) -> None:
    x = np.zeros((1, 2, 2, 1), np.uint64)
    w = np.zeros((1, 1, 1, 3), np.uint64)
    i64 = np.zeros(3, np.int64)
    fn(x, w, 3, 1, 0, 2, 2, np.zeros(3, np.int32), np.zeros((0, 0, 0), np.int32), i64, i64, 0,
       np.zeros((1, 2, 2, 1), np.uint64), np.zeros((1, 2, 2, 3), np.int32))


def _warm_up() -> None:
    """Compile every kernel once for the engine's argument types (cached on disk by numba)."""
    _call_bconv(bconv)
    x = np.zeros((1, 2, 2, 1), np.uint64)
    bit_maxpool(x, 2, 2, 0, 1, 1, np.zeros((1, 1, 1, 1), np.uint64))
    pack_signs(np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 2, 2, 1), np.uint64))
    popcount_ceiling_kernel(np.zeros((1, 2), np.uint64), np.zeros((2, 8), np.uint64), 1, np.zeros(1, np.int64))
