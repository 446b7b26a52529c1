"""Where the engine's bit kernels run: numba on the CPU, or PyTorch integer ops on any device (CUDA).

Both take and return the same things: packed sign bits (``uint64`` words, NHWC; a numpy array for
numba, an ``int64`` torch tensor holding the same 64 bits for PyTorch) and int32 accumulators as a
torch tensor ``(B, P, H, W)``.  The PyTorch backend needs no numba: it XORs the words and counts
bits with a branch-free SWAR popcount on ``int64``, so it is bit-exact on CPU and GPU alike.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from prunus._optional import require
from prunus.bcnn.engine.program import float_epilogue, fp_stem_forward
from prunus.errors import ConfigError

__all__ = ["Fp32Backend", "NumbaBackend", "TorchBackend", "make_backend"]


def _words(channels: int) -> int:
    return max(1, -(-channels // 64))


class NumbaBackend:
    """XNOR-popcount kernels compiled by numba (:mod:`prunus.bcnn.engine.kernels`).

    ``engine(x)`` runs the fused, chunked, multi-threaded path (:mod:`prunus.bcnn.engine.runner`);
    the per-op methods below serve :func:`~prunus.bcnn.engine.program.run_program` (``engine.trace``,
    the tests, and batches the fast path must not chunk).  They take and return the engine's common
    layouts: sign bits ``uint64[B, H, W, nw]`` (the kernels' planar ``[B, nw, H, W]`` transposed) and
    int32 accumulators ``(B, P, H, W)`` as a torch tensor.
    """

    name = "numba"
    device = torch.device("cpu")

    def __init__(self) -> None:
        require("numba", "the BCNN inference engine (prunus bcnn, prunus.bcnn.engine)")
        from prunus.bcnn.engine import kernels, runner  # numba modules: imported only when numba is there

        self.k, self.runner = kernels, runner

    def prepare(self, op) -> None:
        op.backend_data["numba"] = {}  # input size -> ConvLayer, made on first use

    def _layer(self, op, x: np.ndarray):
        layers = op.backend_data.setdefault("numba", {})
        size = (x.shape[2], x.shape[3])
        if size not in layers:
            layers[size] = self.runner.ConvLayer(op, size)
        return layers[size]

    @staticmethod
    def _planar(bits: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(bits.transpose(0, 3, 1, 2))

    @staticmethod
    def _interleaved(bits: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(bits.transpose(0, 2, 3, 1))

    def pack(self, data: torch.Tensor) -> np.ndarray:
        x = data.detach().to(torch.float32).contiguous().numpy()
        out = np.empty((x.shape[0], _words(x.shape[1]), x.shape[2], x.shape[3]), np.uint64)
        self.k.pack_nchw(x, out)
        return self._interleaved(out)

    def bconv_bits(self, op, x: np.ndarray) -> np.ndarray:
        xp = self._planar(x)
        layer = self._layer(op, xp)
        out = np.empty((x.shape[0], _words(op.out_channels)) + tuple(op.out_size), np.uint64)
        layer.bits(xp, out, layer.scratch())
        return self._interleaved(out)

    def bconv_acc(self, op, x: np.ndarray) -> torch.Tensor:
        xp = self._planar(x)
        layer = self._layer(op, xp)
        acc = np.empty((x.shape[0], op.out_channels) + tuple(op.out_size), np.int32)
        layer.ints(xp, acc, layer.scratch())
        return torch.from_numpy(acc)

    def bit_maxpool(self, op, x: np.ndarray) -> np.ndarray:
        xp = self._planar(x)
        ho, wo = op.out_size
        out = np.empty((x.shape[0], xp.shape[1], ho, wo), np.uint64)
        self.k.bit_maxpool(xp, op.kernel, op.stride, op.padding, ho, wo, out)
        return self._interleaved(out)

    @staticmethod
    def to_numpy(bits) -> np.ndarray:
        return bits


_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def popcount_int64(x: torch.Tensor) -> torch.Tensor:
    """Bits set in each int64 (all 64 bits, two's complement), branch-free SWAR.

    ``>>`` on int64 is arithmetic, but every shifted value is masked so that the copies of the
    sign bit it brings in are cleared; from the nibble step on, values are non-negative.
    """
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F


def _pack_bool(bits: torch.Tensor) -> torch.Tensor:
    """``bool (..., C)`` -> int64 words ``(..., nw)``, channel c at word c//64 bit c%64 (bit 63 = sign bit)."""
    c = bits.shape[-1]
    nw = _words(c)
    padded = F.pad(bits.to(torch.int64), (0, nw * 64 - c)).view(*bits.shape[:-1], nw, 64)
    shifts = torch.arange(64, device=bits.device, dtype=torch.int64)
    return (padded << shifts).sum(-1)  # disjoint bits: the sum is the OR (wrapping at bit 63)


class TorchBackend:
    """The same kernels as PyTorch integer tensor ops, on ``device`` (the engine's CUDA path)."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu", budget: int = 1 << 24) -> None:
        self.device = torch.device(device)
        self.budget = budget  # int64 elements per chunk of the XOR/popcount tensor

    def prepare(self, op) -> None:
        w = torch.from_numpy(op.weights.view(np.int64)).to(self.device)  # (kh, kw, nw, P)
        kh, kw, nw, P = w.shape
        op.backend_data["torch"] = (
            w.permute(3, 0, 1, 2).reshape(P, kh * kw * nw).contiguous(),
            torch.from_numpy(op.corr_int.astype(np.int64)).to(self.device),
            torch.from_numpy(op.corr_border.astype(np.int64)).to(self.device),
            torch.from_numpy(op.flip).to(self.device), torch.from_numpy(op.thr).to(self.device),
        )

    def pack(self, data: torch.Tensor) -> torch.Tensor:
        return _pack_bool(data.to(self.device).permute(0, 2, 3, 1) >= 0)

    def _acc(self, op, x: torch.Tensor) -> torch.Tensor:
        """Exact integer dot products ``(B, Ho, Wo, P)`` (int64)."""
        w, corr_int, corr_border, _, _ = op.backend_data["torch"]
        B, H, W, nw = x.shape
        (kh, kw), s, p = op.kernel, op.stride, op.padding
        ho, wo = op.out_size
        xp = F.pad(x, (0, 0, p, p, p, p))  # zero words in the padding ...
        valid = F.pad(torch.ones(H, W, dtype=torch.int64, device=x.device), (p, p, p, p))  # ... masked out here
        patches = xp.unfold(1, kh, s).unfold(2, kw, s)[:, :ho, :wo]  # (B, Ho, Wo, nw, kh, kw)
        patches = patches.permute(0, 1, 2, 4, 5, 3).reshape(B, ho * wo, kh * kw, nw)
        mask = valid.unfold(0, kh, s).unfold(1, kw, s)[:ho, :wo].reshape(ho * wo, kh * kw)
        nvalid = mask.sum(1)
        P = w.shape[0]
        wv = w.view(P, kh * kw, nw)
        pop = torch.empty(B, ho * wo, P, dtype=torch.int64, device=x.device)
        step = max(1, self.budget // max(1, P * kh * kw * nw))
        for start in range(0, ho * wo, step):
            sl = slice(start, start + step)
            xor = patches[:, sl, None] ^ wv[None, None]  # (B, n, P, taps, nw)
            counts = popcount_int64(xor).sum(-1) * mask[None, sl, None]
            pop[:, sl] = counts.sum(-1)
        dot = nvalid.view(1, -1, 1) * op.nbits - 2 * pop + corr_int.view(1, 1, -1)
        if corr_border.numel():
            border = (nvalid < kh * kw).view(1, -1, 1)
            dot = dot + border * corr_border.reshape(1, ho * wo, P)
        return dot.view(B, ho, wo, P)

    def bconv_bits(self, op, x: torch.Tensor) -> torch.Tensor:
        _, _, _, flip, thr = op.backend_data["torch"]
        return _pack_bool(flip * self._acc(op, x) >= thr)

    def bconv_acc(self, op, x: torch.Tensor) -> torch.Tensor:
        return self._acc(op, x).to(torch.int32).permute(0, 3, 1, 2).contiguous().cpu()

    def bit_maxpool(self, op, x: torch.Tensor) -> torch.Tensor:
        B, H, W, nw = x.shape
        ho, wo = op.out_size
        k, s, p = op.kernel, op.stride, op.padding
        extra_h = max(0, (ho - 1) * s + k - (H + 2 * p))
        extra_w = max(0, (wo - 1) * s + k - (W + 2 * p))
        xp = F.pad(x, (0, 0, p, p + extra_w, p, p + extra_h))  # zero words: the OR's identity
        out = torch.zeros(B, ho, wo, nw, dtype=torch.int64, device=x.device)
        for ky in range(k):
            for kx in range(k):
                out |= xp[:, ky: ky + (ho - 1) * s + 1: s, kx: kx + (wo - 1) * s + 1: s]
        return out

    @staticmethod
    def to_numpy(bits: torch.Tensor) -> np.ndarray:
        return bits.cpu().numpy().view(np.uint64)


class Fp32Backend:
    """Not an engine: PyTorch float32 inference of the *physically pruned* model, the fair baseline for timings.

    Binary layers are ``F.conv2d`` on +-1 float tensors (NCHW) with the live weights only, plus the
    exact contribution of removed input channels as a fixed map; the first layer runs only its live
    filters (:func:`~prunus.bcnn.engine.program.fp_stem_forward`); epilogues are the reference's own
    float32 ops.  Sums of +-1 products are exact in float32, so the logits equal the model's.  This is
    what PyTorch gets from the same pruning, as opposed to the masked model, which still computes
    every zeroed filter.
    """

    name = "fp32"
    device = torch.device("cpu")

    def prepare(self, op) -> None:
        kh, kw, nw, P = op.weights.shape
        bits = np.unpackbits(np.ascontiguousarray(op.weights.transpose(3, 0, 1, 2)).view(np.uint8), axis=-1,
                             bitorder="little").reshape(P, kh, kw, nw * 64)[..., : op.nbits]
        w = torch.from_numpy(bits.transpose(0, 3, 1, 2).astype(np.float32) * 2 - 1)  # (P, C, kh, kw) of +-1
        corr = torch.from_numpy(op.corr_int.astype(np.float32)).view(1, P, 1, 1)
        if op.corr_border.shape[0]:
            corr = corr + torch.from_numpy(op.corr_border.astype(np.float32)).permute(2, 0, 1)[None]
        op.backend_data["fp32"] = (w.contiguous(), corr.contiguous())

    def run_stem(self, op, x: torch.Tensor) -> torch.Tensor:
        return fp_stem_forward(op.stem, x)

    def pack(self, data: torch.Tensor) -> torch.Tensor:
        one = torch.ones((), dtype=torch.float32)
        return torch.where(data >= 0, one, -one)

    def bconv_acc(self, op, x: torch.Tensor) -> torch.Tensor:
        w, corr = op.backend_data["fp32"]
        return F.conv2d(x, w, None, op.stride, op.padding) + corr

    def bconv_bits(self, op, x: torch.Tensor) -> torch.Tensor:
        return self.pack(float_epilogue(op, self.bconv_acc(op, x)))

    def bit_maxpool(self, op, x: torch.Tensor) -> torch.Tensor:
        args = (op.kernel, op.stride, op.padding, 1)
        out = F.max_pool2d(x, *args, False)
        return out if tuple(out.shape[2:]) == tuple(op.out_size) else F.max_pool2d(x, *args, True)


def make_backend(name: str = "numba", device: str | torch.device | None = None):
    if name == "numba":
        return NumbaBackend()
    if name == "torch":
        return TorchBackend(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if name == "fp32":
        return Fp32Backend()
    raise ConfigError(f"unknown engine backend {name!r}; use numba (CPU) or torch (CPU or CUDA), or fp32 (the "
                      "PyTorch float32 baseline)")
