"""Numba kernels of the BCNN engine (imported only when numba is installed).

Layouts (the engine's own; PyTorch's NCHW order, so no transposes at the boundaries):

* sign bits ``uint64[B, nw, H, W]`` ("planar"): stacked channel ``c`` (in the layer's order of live
  channels) is bit ``c % 64`` of word plane ``c // 64``; bit 1 = +1, bit 0 = -1.  Unused high bits are 0.
* floats ``float32[B, C, H, W]`` (NCHW), live channels only.
* weights of a binary layer ``uint64[KW, P]`` in *patch* order (:func:`patch_weights`): the bits of
  all ``k*k`` taps of one output channel, tap after tap.  With at most 64 input bits the taps are
  packed densely (tap ``t`` channel ``c`` at bit ``t*C + c`` of the patch), so a 3x3 conv on 14
  input bits needs 2 words per output pixel instead of 9; wider inputs take ``nw`` whole words per tap.

Why this shape: after structured pruning the layers are narrow (14..112 live bits, 14..112 output
channels), so vectorising over output channels (the classic inner loop) runs 1-2 SIMD iterations plus
a scalar remainder per tap and pixel, and loop overhead dominates.  These kernels instead vectorise
over a *tile of output pixels* (``R`` output rows, at least 64 pixels; rows of several images when
the maps are small)::

    acc[p, i] += popcount(patch[q, i] ^ w[q, p])      for i in tile   (q over patch words)

For +-1 vectors of n entries, ``dot = n - 2 * popcount(a XOR b)``.  Taps outside the image are 0
bits in the patch; their exact contribution (zero padding) is restored by a per-pixel correction
that is nonzero only at border pixels (:func:`padding_correction`), together with the contribution
of pruned input channels (see :mod:`prunus.bcnn.engine.program`).

Each kernel is serial (``nogil``): the engine runs chunks of the batch on its own threads, so there
is no numba thread pool (whose OpenMP workers spin and compete with PyTorch's).  Hot loops start at
0 or use unsigned indices: numba then omits negative-index wraparound checks, which otherwise stop
LLVM from vectorising them.  ``popcount64`` lowers to LLVM ``ctpop``: ``vpopcntq`` on zmm registers
on CPUs with AVX-512 VPOPCNTDQ (see :func:`popcount_instructions`), ``popcnt`` and AVX2 nibble
look-ups (``vpshufb``) elsewhere.

Float epilogues repeat the reference's float32 operations one by one (numba does not contract them
into FMAs without ``fastmath``), so they are bit-exact with PyTorch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["bconv_bits", "bconv_bn", "bconv_int", "bit_maxpool", "pack_nchw", "popcount64",
           "popcount_ceiling_kernel", "popcount_instructions", "stem_epilogue"]

U = np.uint64


@intrinsic
def popcount64(typingctx, x):
    """Population count of a 64-bit integer (LLVM ``ctpop``), returned as int64."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(x), codegen


# -- binary convolution ----------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _image_row(row, ho):
    """``(image, output row)`` of row ``row`` of the batch's output rows, flattened as the tiles walk them."""
    b = row // ho
    return b, row - b * ho


@njit(cache=True, nogil=True, inline="always")
def _col_range(kx, stride, pad, wo, W):
    """Output columns ``[lo, hi)`` whose tap ``kx`` lies inside the image."""
    lo = 0
    while lo < wo and lo * stride - pad + kx < 0:
        lo += 1
    hi = wo
    while hi > lo and (hi - 1) * stride - pad + kx >= W:
        hi -= 1
    return lo, hi


@njit(cache=True, nogil=True, inline="always")
def _or_tap_bits(pw, r, x, b, iy, first, st, ulo, n, off, C):
    """Dense packing: OR one tap's ``C`` input bits into bits ``[off, off + C)`` of the patch (it may straddle two
    words)."""
    q = off >> 6
    sh = off & 63
    s = U(sh)
    if sh + C > 64:
        rs = U(64 - sh)
        for j in range(n):
            v = x[b, 0, iy, first + j * st]
            pw[q, r, ulo + j] |= v << s
            pw[q + 1, r, ulo + j] |= v >> rs
    else:
        for j in range(n):
            pw[q, r, ulo + j] |= x[b, 0, iy, first + j * st] << s


@njit(cache=True, nogil=True, inline="always")
def _copy_tap_words(pw, r, x, b, iy, first, st, ulo, n, jw, nw):
    """Word-aligned packing: one tap's ``nw`` input words go to patch words ``[jw, jw + nw)``."""
    for q in range(nw):
        for j in range(n):
            pw[jw + q, r, ulo + j] = x[b, q, iy, first + j * st]


@njit(cache=True, nogil=True, inline="always")
def _patch_row(x, b, oy, r, C, k, stride, pad, wo, pw):
    """``pw[q, r, ox]``: the packed receptive field of output pixel ``(oy, ox)`` of image ``b``; outside taps stay 0.

    Tap ``t`` sits at bits ``[t*C, t*C + C)`` when the input has one word (``nw == 1``), else at
    words ``[t*nw, t*nw + nw)``.
    """
    nw, H, W = x.shape[1], x.shape[2], x.shape[3]
    KW = pw.shape[0]
    for q in range(KW):
        for ox in range(wo):
            pw[q, r, ox] = 0
    y0 = oy * stride - pad
    st = U(stride)
    for ky in range(k):
        iy = y0 + ky
        if iy < 0 or iy >= H:
            continue
        for kx in range(k):
            lo, hi = _col_range(kx, stride, pad, wo, W)
            if hi <= lo:
                continue
            first = U(lo * stride - pad + kx)
            tap = ky * k + kx
            if nw == 1:
                _or_tap_bits(pw, r, x, b, iy, first, st, U(lo), U(hi - lo), tap * C, C)
            else:
                _copy_tap_words(pw, r, x, b, iy, first, st, U(lo), U(hi - lo), tap * nw, nw)


@njit(cache=True, nogil=True, inline="always")
def _tile(x, xf, wt, C, k, stride, pad, ho, wo, r0, nr, pw, pwf, accf):
    """``acc[p, r, ox]`` (``accf`` flat) = summed popcounts of output row ``r0 + r`` ((image, row) flattened).

    Four output channels per pass over the tile's patch words, so each word is loaded once for four
    XOR-popcounts and the (short) vector loops are entered a quarter as often.
    """
    KW, P = wt.shape
    L = nr * wo
    b0 = r0 // ho
    oy0 = r0 - b0 * ho
    if k == 1 and stride == 1 and pad == 0 and oy0 + nr <= ho:  # 1x1 conv, rows of one image: copy them
        start = U(oy0 * wo)
        for q in range(KW):
            for i in range(L):
                pwf[q, i] = xf[b0, q, start + U(i)]
    else:
        for r in range(nr):
            b, oy = _image_row(r0 + r, ho)
            _patch_row(x, b, oy, r, C, k, stride, pad, wo, pw)
    p = 0
    while p + 4 <= P:
        w0, w1, w2, w3 = wt[0, p], wt[0, p + 1], wt[0, p + 2], wt[0, p + 3]
        for i in range(L):
            v = pwf[0, i]
            accf[p, i] = popcount64(v ^ w0)
            accf[p + 1, i] = popcount64(v ^ w1)
            accf[p + 2, i] = popcount64(v ^ w2)
            accf[p + 3, i] = popcount64(v ^ w3)
        for q in range(1, KW):
            w0, w1, w2, w3 = wt[q, p], wt[q, p + 1], wt[q, p + 2], wt[q, p + 3]
            for i in range(L):
                v = pwf[q, i]
                accf[p, i] += popcount64(v ^ w0)
                accf[p + 1, i] += popcount64(v ^ w1)
                accf[p + 2, i] += popcount64(v ^ w2)
                accf[p + 3, i] += popcount64(v ^ w3)
        p += 4
    while p < P:
        wv = wt[0, p]
        for i in range(L):
            accf[p, i] = popcount64(pwf[0, i] ^ wv)
        for q in range(1, KW):
            wv = wt[q, p]
            for i in range(L):
                accf[p, i] += popcount64(pwf[q, i] ^ wv)
        p += 1


@njit(cache=True, nogil=True, inline="always")
def _flat(x, pw, acc):
    """Flat views the tile loops index (made once per call: each view costs reference counting)."""
    xf = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    pwf = pw.reshape(pw.shape[0], pw.shape[1] * pw.shape[2])
    return xf, pwf, acc.reshape(acc.shape[0], acc.shape[1] * acc.shape[2])


@njit(cache=True, nogil=True, inline="always")
def _threshold_contiguous(of, b0, start, L, accf, ck, thr, flip, P):
    """Interior test of a tile whose rows are one image's: bits ``of[b0, :, start:start + L]``, one loop per channel."""
    for qo in range(of.shape[1]):
        for i in range(L):
            of[b0, qo, start + U(i)] = 0
    for p in range(P):
        qo = p >> 6
        sh = U(p & 63)
        if flip[p] > 0:
            lim = ck[p] - thr[p]
            for i in range(L):
                of[b0, qo, start + U(i)] |= U(2 * accf[p, i] <= lim) << sh
        else:
            lim = ck[p] + thr[p]
            for i in range(L):
                of[b0, qo, start + U(i)] |= U(2 * accf[p, i] >= lim) << sh


@njit(cache=True, nogil=True, inline="always")
def _threshold_rows(out, acc, r0, nr, ho, wo, ck, thr, flip, P):
    """Interior test of a tile holding rows of several images (small maps), row by row."""
    for r in range(nr):
        b, oy = _image_row(r0 + r, ho)
        for qo in range(out.shape[1]):
            for ox in range(wo):
                out[b, qo, oy, ox] = 0
        for p in range(P):
            qo = p >> 6
            sh = U(p & 63)
            if flip[p] > 0:
                lim = ck[p] - thr[p]
                for ox in range(wo):
                    out[b, qo, oy, ox] |= U(2 * acc[p, r, ox] <= lim) << sh
            else:
                lim = ck[p] + thr[p]
                for ox in range(wo):
                    out[b, qo, oy, ox] |= U(2 * acc[p, r, ox] >= lim) << sh


@njit(cache=True, nogil=True, inline="always")
def _redo_border_bits(out, b, oy, r, acc, p, ckb, f, t, lo, hi):
    """Output bit ``p`` of pixels ``ox in [lo, hi)`` of row ``oy`` again, with the border's own ``ckb`` correction."""
    qo = p >> 6
    sh = U(p & 63)
    keep = ~(U(1) << sh)
    for ox in range(lo, hi):
        v = U(f * (ckb[oy, p, ox] - 2 * acc[p, r, ox]) >= t) << sh
        out[b, qo, oy, ox] = (out[b, qo, oy, ox] & keep) | v


@njit(cache=True, nogil=True)
def bconv_bits(x, wt, C, k, stride, pad, ho, wo, R, ck, ckb, border_rows, lo_col, hi_col, flip, thr, pw, acc, out):
    """Binary conv with BN + sign folded in: output bit ``p`` is ``flip[p] * dot >= thr[p]`` (``out``: planar bits).

    ``dot = ck[p] - 2 * popcount`` inside the image, ``ckb[oy, p, ox] - 2 * popcount`` at border pixels
    (rows ``border_rows``, columns outside ``[lo_col, hi_col)``): ``K`` plus the exact integer corrections.
    ``pw``, ``acc``: scratch.  Every pixel of the tile first gets the interior test, one compare
    ``2 * popcount <= ck - thr`` (``>= ck + thr`` for ``flip = -1``; ``|thr| <= 2**62``, nothing overflows)
    in a single loop over the tile when its rows are one image's; border pixels are then redone.
    """
    n = x.shape[0]
    P = wt.shape[1]
    rows = n * ho
    xf, pwf, accf = _flat(x, pw, acc)
    of = out.reshape(n, out.shape[1], ho * wo)
    for r0 in range(0, rows, R):
        nr = min(R, rows - r0)
        _tile(x, xf, wt, C, k, stride, pad, ho, wo, r0, nr, pw, pwf, accf)
        b0 = r0 // ho
        oy0 = r0 - b0 * ho
        if oy0 + nr <= ho:  # the tile is rows oy0.. of image b0: contiguous in the output
            _threshold_contiguous(of, b0, U(oy0 * wo), nr * wo, accf, ck, thr, flip, P)
        else:
            _threshold_rows(out, acc, r0, nr, ho, wo, ck, thr, flip, P)
        for r in range(nr):
            b, oy = _image_row(r0 + r, ho)
            if border_rows[oy]:
                for p in range(P):
                    _redo_border_bits(out, b, oy, r, acc, p, ckb, flip[p], thr[p], 0, wo)
            elif lo_col > 0 or hi_col < wo:
                for p in range(P):
                    _redo_border_bits(out, b, oy, r, acc, p, ckb, flip[p], thr[p], 0, lo_col)
                    _redo_border_bits(out, b, oy, r, acc, p, ckb, flip[p], thr[p], hi_col, wo)


@njit(cache=True, nogil=True)
def bconv_int(x, wt, C, k, stride, pad, ho, wo, R, ck, ckb, border_rows, lo_col, hi_col, pw, acc, out):
    """Binary conv returning the exact integer dots ``int32[B, P, ho, wo]`` (a float epilogue follows in PyTorch)."""
    n = x.shape[0]
    P = wt.shape[1]
    rows = n * ho
    xf, pwf, accf = _flat(x, pw, acc)
    for r0 in range(0, rows, R):
        nr = min(R, rows - r0)
        _tile(x, xf, wt, C, k, stride, pad, ho, wo, r0, nr, pw, pwf, accf)
        for r in range(nr):
            b, oy = _image_row(r0 + r, ho)
            brow = border_rows[oy]
            for p in range(P):
                if brow:
                    for ox in range(wo):
                        out[b, p, oy, ox] = ckb[oy, p, ox] - 2 * acc[p, r, ox]
                    continue
                c = ck[p]
                for ox in range(wo):
                    out[b, p, oy, ox] = c - 2 * acc[p, r, ox]
                for ox in range(lo_col):
                    out[b, p, oy, ox] = ckb[oy, p, ox] - 2 * acc[p, r, ox]
                for ox in range(hi_col, wo):
                    out[b, p, oy, ox] = ckb[oy, p, ox] - 2 * acc[p, r, ox]


@njit(cache=True, nogil=True)
def bconv_bn(x, wt, C, k, stride, pad, ho, wo, R, ck, ckb, border_rows, lo_col, hi_col, alpha, s, t, rows_of, const,
             res, res_rows, res_const, pw, acc, out, out_bits):
    """Binary conv + scale + naive BN (+ residual add) (+ sign bits), all in float32 as the reference computes it.

    Output channel ``j`` of ``out`` (``float32[B, J, ho, wo]``) is ``((dot * alpha) * s) + t`` of conv row
    ``rows_of[j]``, or ``const[j]`` when ``rows_of[j] < 0`` (a pruned channel); then, when ``res`` is not
    empty, ``+ res[:, res_rows[j]]`` (or ``+ res_const[j]``), the residual add.  ``out_bits`` (planar,
    may be empty) receives ``sign`` of the result.  Each step is its own branch-free pass over the row
    (a conditional load inside a loop would keep LLVM from vectorising it); the row stays in L1.
    """
    J, rows = out.shape[1], x.shape[0] * ho
    has_res, has_bits = res.shape[0] > 0, out_bits.shape[0] > 0
    xf, pwf, accf = _flat(x, pw, acc)
    for r0 in range(0, rows, R):
        nr = min(R, rows - r0)
        _tile(x, xf, wt, C, k, stride, pad, ho, wo, r0, nr, pw, pwf, accf)
        for r in range(nr):
            b, oy = _image_row(r0 + r, ho)
            brow = border_rows[oy]
            if has_bits:
                for qo in range(out_bits.shape[1]):
                    for ox in range(wo):
                        out_bits[b, qo, oy, ox] = 0
            for j in range(J):
                p = rows_of[j]
                if p < 0:  # a pruned channel: its constant
                    c = const[j]
                    for ox in range(wo):
                        out[b, j, oy, ox] = c
                else:
                    a, sp, tp = alpha[p], s[p], t[p]
                    if brow:
                        for ox in range(wo):
                            out[b, j, oy, ox] = np.float32(ckb[oy, p, ox] - 2 * acc[p, r, ox]) * a * sp + tp
                    else:
                        c = ck[p]
                        for ox in range(wo):
                            out[b, j, oy, ox] = np.float32(c - 2 * acc[p, r, ox]) * a * sp + tp
                        for ox in range(lo_col):
                            out[b, j, oy, ox] = np.float32(ckb[oy, p, ox] - 2 * acc[p, r, ox]) * a * sp + tp
                        for ox in range(hi_col, wo):
                            out[b, j, oy, ox] = np.float32(ckb[oy, p, ox] - 2 * acc[p, r, ox]) * a * sp + tp
                if has_res:
                    q = res_rows[j]
                    if q >= 0:
                        for ox in range(wo):
                            out[b, j, oy, ox] = out[b, j, oy, ox] + res[b, q, oy, ox]
                    else:
                        c = res_const[j]
                        for ox in range(wo):
                            out[b, j, oy, ox] = out[b, j, oy, ox] + c
                if has_bits:
                    qo = j >> 6
                    sh = U(j & 63)
                    for ox in range(wo):
                        out_bits[b, qo, oy, ox] |= U(out[b, j, oy, ox] >= 0) << sh


# -- first layer epilogue, packing, pooling ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _stem_bits_channels_last(yf, s, t, bf, b):
    """Sign bits of image ``b`` from ``[HW, C]`` data: each pixel's word from its contiguous channels."""
    HW, C = yf.shape[1], yf.shape[2]
    for i in range(HW):
        for q in range(bf.shape[1]):
            c0 = q * 64
            word = U(0)
            for c in range(min(64, C - c0)):
                v = yf[b, i, c0 + c] * s[c0 + c]
                v = v + t[c0 + c]
                word |= U(v >= 0) << U(c)
            bf[b, q, i] = word


@njit(cache=True, nogil=True, inline="always")
def _stem_nchw(yf, s, t, of, bf, b, has_out, has_bits):
    """``z`` (into ``of``) and its sign bits (into ``bf``) of image ``b`` from ``[C, HW]`` data, channel by channel."""
    C, HW = yf.shape[1], yf.shape[2]
    for q in range(bf.shape[1] if has_bits else 0):
        for i in range(HW):
            bf[b, q, i] = 0
    for c in range(C):
        sc, tc = s[c], t[c]
        if has_out:
            for i in range(HW):
                v = yf[b, c, i] * sc
                of[b, c, i] = v + tc
        if has_bits:
            sh = U(c & 63)
            for i in range(HW):
                v = yf[b, c, i] * sc
                v = v + tc
                bf[b, c >> 6, i] |= U(v >= 0) << sh


@njit(cache=True, nogil=True)
def stem_epilogue(y, channels_last, bias, s, t, out, out_bits):
    """Full-precision first layer: ``z = ((y [+ bias]) * s) + t`` per channel (naive BN), then sign bits.

    ``y`` is the convolution output, ``float32[B, C, H, W]`` or, with ``channels_last``, ``[B, H, W, C]``;
    a bias is added to it in place.  ``out`` (NCHW, may be empty) receives ``z`` when a float consumer
    needs it (ResNet's residual stream); ``out_bits`` (planar, may be empty) receives ``sign(z)``.  The
    same float32 operations, in the same order, as the reference (conv, bias add, ``apply_fold``).
    One pass over ``y``: in channels-last order each pixel's word is built from its contiguous channels.
    """
    if channels_last:
        B, H, W, C = y.shape
        yf = y.reshape(B, H * W, C)
    else:
        B, C, H, W = y.shape
        yf = y.reshape(B, C, H * W)
    has_out = out.shape[0] > 0
    has_bits = out_bits.shape[0] > 0
    for b in range(B if bias.shape[0] > 0 else 0):  # in place, before the affine step (the reference's order)
        for i in range(H * W):
            for c in range(C):
                if channels_last:
                    yf[b, i, c] = yf[b, i, c] + bias[c]
                else:
                    yf[b, c, i] = yf[b, c, i] + bias[c]
    of = out.reshape(out.shape[0], out.shape[1], out.shape[2] * out.shape[3])
    bf = out_bits.reshape(out_bits.shape[0], out_bits.shape[1], out_bits.shape[2] * out_bits.shape[3])
    for b in range(B):
        if not channels_last:
            _stem_nchw(yf, s, t, of, bf, b, has_out, has_bits)
            continue
        if has_bits:
            _stem_bits_channels_last(yf, s, t, bf, b)
        if has_out:
            for c in range(C):
                sc, tc = s[c], t[c]
                for i in range(H * W):
                    v = yf[b, i, c] * sc
                    of[b, c, i] = v + tc


@njit(cache=True, nogil=True)
def pack_nchw(x, out):
    """``float32[B, C, H, W]`` -> planar sign bits ``uint64[B, nw, H, W]`` (1 where ``x >= 0``; NaN gives 0)."""
    B, C, H, W = x.shape
    HW = H * W
    for b in range(B):
        xb = x[b].reshape(C, HW)
        bits = out[b].reshape(out.shape[1], HW)
        for q in range(out.shape[1]):
            for i in range(HW):
                bits[q, i] = 0
        for c in range(C):
            q = c >> 6
            sh = U(c & 63)
            for i in range(HW):
                bits[q, i] |= U(xb[c, i] >= 0) << sh


@njit(cache=True, nogil=True)
def bit_maxpool(x, k, stride, pad, out_h, out_w, out):
    """Max-pool on sign bits: the OR of the window's words (max of +-1 is +1 iff any is +1); padding ignored."""
    B, nw, H, W = x.shape
    for b in range(B):
        for q in range(nw):
            for oy in range(out_h):
                for ox in range(out_w):
                    word = U(0)
                    for ky in range(k):
                        iy = oy * stride - pad + ky
                        if iy < 0 or iy >= H:
                            continue
                        for kx in range(k):
                            ix = ox * stride - pad + kx
                            if ix < 0 or ix >= W:
                                continue
                            word |= x[b, q, iy, ix]
                    out[b, q, oy, ox] = word


# -- packing weights and corrections (numpy, at compile time) ----------------------------------------------------------


def patch_weights(weights: np.ndarray, nbits: int) -> np.ndarray:
    """``uint64 (kh, kw, nw, P)`` (the program's weights) -> ``uint64 (KW, P)`` in patch order (module docstring)."""
    kh, kw, nw, P = weights.shape
    bits = np.unpackbits(np.ascontiguousarray(weights.transpose(0, 1, 3, 2)).view(np.uint8), axis=-1,
                         bitorder="little").reshape(kh * kw, P, nw * 64)[..., :nbits]  # (taps, P, C)
    field = nbits if nw == 1 else nw * 64
    KW = max(1, -(-(kh * kw * field) // 64))
    full = np.zeros((P, KW * 64), np.uint8)
    for tap in range(kh * kw):
        full[:, tap * field: tap * field + nbits] = bits[tap]
    words = np.packbits(full, axis=-1, bitorder="little").view("<u8").reshape(P, KW)
    return np.ascontiguousarray(words.T).astype(np.uint64)


def padding_correction(weights: np.ndarray, nbits: int, size: tuple[int, int], stride: int, pad: int,
                       out_size: tuple[int, int]) -> np.ndarray:
    """``int64 (Ho, Wo, P)``: what taps outside the image add to ``K - 2 * popcount`` and zero padding does not.

    An outside tap has 0 bits in the patch, i.e. reads as all -1, so the kernel counts
    ``sum_c (-1) * w[p, c, tap] = C - 2 * popcount(w[p, tap])`` for it where the reference adds 0.
    """
    kh, kw, nw, P = weights.shape
    bits = np.unpackbits(np.ascontiguousarray(weights.transpose(0, 1, 3, 2)).view(np.uint8), axis=-1,
                         bitorder="little").reshape(kh * kw, P, nw * 64)[..., :nbits]
    per_tap = nbits - 2 * bits.sum(-1, dtype=np.int64)  # (taps, P): value counted for an outside tap
    (H, W), (ho, wo) = size, out_size
    iy = np.arange(ho)[:, None] * stride - pad + np.arange(kh)[None, :]  # (Ho, kh)
    ix = np.arange(wo)[:, None] * stride - pad + np.arange(kw)[None, :]  # (Wo, kw)
    inside = ((iy >= 0) & (iy < H))[:, None, :, None] & ((ix >= 0) & (ix < W))[None, :, None, :]  # (Ho, Wo, kh, kw)
    outside = (~inside).reshape(ho, wo, kh * kw).astype(np.int64)
    return -(outside @ per_tap)


# -- the popcount ceiling ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def popcount_ceiling_kernel(a, w, repeats, out):
    """The convolution's inner loop on L1-resident data: ``repeats`` passes of ``acc[i] += popcount(a[q, i] ^ w[q])``.

    ``a``: ``uint64[n, T]`` activation words (a tile of T pixels), ``w``: ``uint64[n]`` (one output
    channel); ``out[0]`` keeps a checksum so that nothing is optimised away.  Bit-MACs done:
    ``repeats * n * T * 64``.  Serial; the benchmark runs one copy per thread.
    """
    n, T = a.shape
    acc = np.zeros(T, np.int64)
    for _ in range(repeats):
        for q in range(n):
            wv = w[q]
            for i in range(T):
                acc[i] += popcount64(a[q, i] ^ wv)
    s = 0
    for i in range(T):
        s += acc[i]
    out[0] = s


def popcount_instructions(kernel: str = "ceiling") -> dict[str, int]:
    """Count popcount instructions in freshly compiled x86 assembly of a kernel's inner loop.

    ``kernel="ceiling"`` (quick) compiles :func:`popcount_ceiling_kernel`, whose loop is the
    convolution's ``acc[i] += popcount(a[q, i] ^ w[q])``; ``kernel="bconv"`` compiles :func:`bconv_bits`
    itself (a few seconds).  A private, uncached copy is compiled because numba cannot show the assembly of
    code it loaded from its disk cache.  ``vpopcntq`` (with ``zmm_vpopcnt`` counting those on 512-bit
    registers) means the loop is vectorised with AVX-512 VPOPCNTDQ; ``popcnt`` is the scalar instruction
    (``popcntq`` in numba's AT&T syntax); ``vpshufb`` counts the nibble look-ups of the vector popcount
    LLVM builds from SSSE3/AVX2 shuffles on CPUs without VPOPCNTDQ (AVX2-only Zen 3, say).
    """
    if kernel == "ceiling":
        fn = njit(cache=False, nogil=True)(popcount_ceiling_kernel.py_func)
        fn(np.zeros((2, 8), np.uint64), np.zeros(2, np.uint64), 1, np.zeros(1, np.int64))
    elif kernel == "bconv":
        fn = njit(cache=False, nogil=True)(bconv_bits.py_func)
        _call_bconv_bits(fn)
    else:
        raise ValueError(f"kernel must be 'ceiling' or 'bconv', got {kernel!r}")
    counts = {"vpopcntq": 0, "vpopcntd": 0, "popcnt": 0, "zmm_vpopcnt": 0, "vpshufb": 0}
    for asm in fn.inspect_asm().values():
        for line in asm.splitlines():
            op = line.strip().split("\t", 1)[0].strip()
            op = "popcnt" if op in ("popcntq", "popcntl", "popcntw") else op  # AT&T operand-size suffixes
            if op in counts:
                counts[op] += 1
                if op.startswith("vpopcnt") and "zmm" in line:
                    counts["zmm_vpopcnt"] += 1
    return counts


def _call_bconv_bits(fn) -> None:
    x = np.zeros((1, 1, 2, 2), np.uint64)
    P, R = 3, 16
    i64 = np.zeros(P, np.int64)
    fn(x, np.zeros((1, P), np.uint64), 3, 1, 1, 0, 2, 2, R, i64, np.zeros((1, P, 1), np.int64), np.zeros(2, np.bool_),
       0, 2, i64, i64, np.zeros((1, R, 2), np.uint64), np.zeros((P, R, 2), np.int64), np.zeros((1, 1, 2, 2), np.uint64))
