"""Compile a binarized complex network into a bit-packed program, and run it.

What the compiler does with a :class:`~prunus.bcnn.models.ComplexNet` (binary, eval mode):

* **Complex -> real.** A binary complex conv with weights ``(bWr, bWi)`` (signs) acting on stacked
  ``[xr; xi]`` bits is the real +-1 convolution with the block weight
  ``[[bWr, -bWi], [bWi, bWr]]`` (2Cout x 2Cin): its output rows are ``[real; imag]``.
* **Pruned channels are removed.** A complex output channel whose real and imaginary weights
  are all zero is dead: it outputs ``alpha * acc = 0`` (alpha = 0), so after BN (and max-pool) it is
  a per-channel constant ``c`` and after ``sign`` a constant +-1.  Dead channels are dropped from
  the packed weights (rows) and activations; every consumer drops the matching weight columns and
  adds their exact contribution instead: ``corr[p, y, x] = sum_dead sign(c_j) * sum_{in-image taps}
  W[p, j, ky, kx]``, an integer map computed once (a constant inside the image, other values only at
  border pixels).  Float consumers (a residual add, the full-precision head) get the constant.
* **BN + sign -> integer thresholds.** Naive complex BN in eval mode is ``z = (acc * alpha) * s + t``
  per stacked channel (float32, in this order: :func:`~prunus.bcnn.norms.apply_fold`), and the next
  layer sees ``sign(z) = [z >= 0]``.  That is monotone in the integer ``acc`` (non-decreasing for
  ``s > 0``, non-increasing for ``s < 0``, constant for ``s = 0`` or ``alpha = 0``), so the bit is
  ``flip * acc >= thr`` with ``flip = +-1`` and an integer ``thr`` found by evaluating the *same*
  float32 expression on every possible accumulator value -- exact by construction, whatever the
  rounding.  A negative gamma gives ``flip = -1``.
* **Max-pool on bits.** ``sign`` is monotone, so ``sign(maxpool(z)) = OR`` of the window's sign bits.
* Layers whose output feeds a float consumer (the residual stream of ResNet, the head) or uses
  whitening BN return integer accumulators and the epilogue runs the reference's own float32 ops.
* The input boundary, a full-precision first layer and the full-precision head run in PyTorch
  (the model's own modules), on tensors equal to the reference's.

So the engine's logits equal the PyTorch eval-mode forward of the same model exactly
(``torch.equal``), which the tests check on random models and inputs for every layer type.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from prunus.bcnn.engine.int8_conv import Int8Conv
from prunus.bcnn.int8 import int8_input, int8_weight
from prunus.bcnn.layers import ComplexConv2d, ComplexLinear, unstack
from prunus.bcnn.models import ComplexBasicBlock, ComplexNet, ComplexUnit
from prunus.bcnn.norms import apply_fold, apply_whitening
from prunus.errors import ConfigError

__all__ = ["BConv", "Edge", "FpStem", "Program", "compile_program", "fp_stem_conv", "fp_stem_forward"]

ALWAYS, NEVER = -(1 << 62), 1 << 62


# -- static description of activations ---------------------------------------------------------------------------


@dataclass
class Edge:
    """An activation between two ops: which stacked channels it holds, and the value of the others."""

    id: int
    kind: str  # "bits" (uint64 words, NHWC) or "float" (torch float32, B x live x H x W)
    channels: int  # stacked channel count 2C of the full tensor
    live: np.ndarray  # stacked indices held, ascending
    const: np.ndarray  # float32 (channels,): the value of every dead channel (before sign)
    size: tuple[int, int]

    @property
    def dead(self) -> np.ndarray:
        mask = np.ones(self.channels, bool)
        mask[self.live] = False
        return np.flatnonzero(mask)

    @property
    def words(self) -> int:
        return max(1, -(-len(self.live) // 64))


def _pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Output size of PyTorch's max_pool2d (ceil_mode as in ATen's pooling_output_shape)."""
    n = size + 2 * p - k
    out = (-(-n // s) if ceil else n // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


# -- ops -------------------------------------------------------------------------------------------------------------


@dataclass
class Op:
    name: str
    src: list[int]
    dst: int


@dataclass
class FpStem:
    """A full-precision first layer with its pruned filters removed, for backends that run it themselves.

    ``weight``: the live filters as one real conv weight -- for a real input (``real_input``, the
    "zero" complex input) ``[Wr[rows]; Wi[rows]]`` (2L, Cin, k, k), whose outputs are the stacked
    ``[real; imag]`` live channels; otherwise ``[Wr | Wi][rows]`` (L, 2Cin, k, k), applied to the batch
    ``[(xr, -xi); (xi, xr)]`` as the reference does.  ``bias``: stacked (2L,) or None.  ``norm``, ``bn``:
    the BN constants as for :class:`BConv` (naive: ``(s, t)`` per stacked live channel).  ``pool``: the stem's max-pool
    ``(kernel, stride, padding, ceil_mode)`` or None.  See :func:`fp_stem_conv` for how it is run and
    why its result equals the reference's.  An int8 layer (:mod:`prunus.bcnn.int8`) has integer ``weight`` values,
    the model's ``input_scale`` and its ``integer_conv`` (which holds ``s * w_o`` per stacked live channel).
    """

    weight: torch.Tensor
    real_input: bool
    stride: int
    padding: int
    bias: torch.Tensor | None
    norm: str
    bn: tuple[torch.Tensor, ...]
    pool: tuple[int, int, int, bool] | None
    input_fn: Callable = None  # type: ignore[assignment]  # the model's ComplexInput
    weight_cl: torch.Tensor | None = None  # ``weight`` in channels-last memory order, made on first use
    input_scale: torch.Tensor | None = None  # int8 layer only (None: float32)
    integer_conv: Int8Conv | None = None


@dataclass
class TorchIn(Op):
    """Model input -> complex boundary -> [full-precision stem] as a float edge of live channels."""

    fn: Callable[[torch.Tensor], torch.Tensor] = None  # type: ignore[assignment]
    live: torch.Tensor | None = None  # channels to keep (None: all)
    stem: FpStem | None = None  # the full-precision first layer, pruned filters removed (None: no fp stem)


@dataclass
class Pack(Op):
    """Float edge -> sign bits."""


@dataclass
class BitPool(Op):
    kernel: int = 2
    stride: int = 2
    padding: int = 0
    out_size: tuple[int, int] = (0, 0)


@dataclass
class FloatPool(Op):
    kernel: int = 2
    stride: int = 2
    padding: int = 0
    ceil_mode: bool = True


@dataclass
class BConv(Op):
    """A binary (complex) conv on packed bits: threshold epilogue (bits out) or a float epilogue."""

    mode: str = "threshold"  # "threshold" | "float" | "logits"
    weights: np.ndarray = None  # type: ignore[assignment]  # uint64 (kh, kw, nw, P)
    nbits: int = 0
    stride: int = 1
    padding: int = 0
    kernel: tuple[int, int] = (1, 1)
    out_size: tuple[int, int] = (1, 1)
    corr_int: np.ndarray = None  # type: ignore[assignment]  # int32 (P,)
    corr_border: np.ndarray = None  # type: ignore[assignment]  # int32 (Ho, Wo, P) or (0, 0, 0)
    flip: np.ndarray = None  # type: ignore[assignment]  # int64 (P,)
    thr: np.ndarray = None  # type: ignore[assignment]  # int64 (P,)
    alpha: torch.Tensor | None = None  # float32 (P,)
    norm: str = "naive"
    bn: tuple[torch.Tensor, ...] = ()  # naive: (s, t) per live row; whiten: constants per live complex channel
    bias: torch.Tensor | None = None  # logits mode
    in_live: np.ndarray = None  # type: ignore[assignment]
    out_live: np.ndarray = None  # type: ignore[assignment]
    backend_data: dict[str, Any] = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[3])

    @property
    def bit_macs(self) -> int:
        """+-1 multiply-accumulates per image (every tap counted, live channels only)."""
        kh, kw = self.kernel
        return self.out_size[0] * self.out_size[1] * self.out_channels * kh * kw * self.nbits


@dataclass
class Add(Op):
    """Residual add of two float edges (live = union)."""


@dataclass
class TorchHead(Op):
    """Rebuild the full-width float map and run the model's full-precision head."""

    fn: Callable = None  # type: ignore[assignment]


@dataclass
class PooledBits(Op):
    """Binary head, first half: rebuild the full map, the head's own global pooling, sign bits of live channels."""

    fn: Callable = None  # type: ignore[assignment]


# -- the program ---------------------------------------------------------------------------------------------------


@dataclass
class Program:
    ops: list[Op]
    edges: dict[int, Edge]
    image_size: int
    in_channels: int  # complex input channels
    output: int
    in_channels_raw: int = 0  # channels of the model's (real) input tensor

    def last_uses(self) -> dict[int, int]:
        """Edge id -> index of the last op that reads it (values are freed after it)."""
        last: dict[int, int] = {}
        for k, op in enumerate(self.ops):
            for i in op.src:
                last[i] = k
        return last

    def bconvs(self) -> list[BConv]:
        return [op for op in self.ops if isinstance(op, BConv)]

    @property
    def bit_macs(self) -> int:
        return sum(op.bit_macs for op in self.bconvs())


def _sign_bits(x: torch.Tensor) -> np.ndarray:
    return (x >= 0).cpu().numpy()


def pack_weight_bits(signs: np.ndarray) -> np.ndarray:
    """``bool (P, L, kh, kw)`` (True = +1) -> ``uint64 (kh, kw, nw, P)``, channel ``c`` at word c//64 bit c%64."""
    P, L, kh, kw = signs.shape
    nw = max(1, -(-L // 64))
    padded = np.zeros((kh, kw, P, nw * 64), bool)
    padded[..., :L] = signs.transpose(2, 3, 0, 1)
    words = np.packbits(padded, axis=-1, bitorder="little").view("<u8").reshape(kh, kw, P, nw)
    return np.ascontiguousarray(words.transpose(0, 1, 3, 2)).astype(np.uint64)


def _live_rows(layer: ComplexConv2d | ComplexLinear) -> np.ndarray:
    """Complex output channels with at least one nonzero real or imaginary weight."""
    return np.flatnonzero((layer.core.weight.detach().flatten(1) != 0).any(1).cpu().numpy())


def _stacked(idx: np.ndarray, c: int) -> np.ndarray:
    return np.concatenate([idx, idx + c]).astype(np.int64)


def _block_weight(layer: ComplexConv2d | ComplexLinear, rows: str = "both") -> torch.Tensor:
    """The +-1 real block weight ``[[bWr, -bWi], [bWi, bWr]]`` (2Cout x 2Cin x kh x kw), float32."""
    w = layer.core.weight.detach().float()
    b = torch.where(w >= 0, 1.0, -1.0)
    if b.dim() == 2:
        b = b[:, :, None, None]
    cin = layer.in_channels
    br, bi = b[:, :cin], b[:, cin:]
    real = torch.cat([br, -bi], 1)
    if rows == "real":
        return real
    return torch.cat([real, torch.cat([bi, br], 1)], 0)


def _bn_constants(bn, rows_real: np.ndarray) -> tuple[str, tuple[torch.Tensor, ...], np.ndarray]:
    """BN kind, its eval constants restricted to live rows, and the value of every channel for a zero input."""
    if bn.mode == "naive":
        sr, tr = bn.bn_real.fold()
        si, ti = bn.bn_imag.fold()
        s, t = torch.cat([sr, si]), torch.cat([tr, ti])
        const = apply_fold(torch.zeros(1, s.numel(), 1, 1), s, t).flatten().numpy()
        live = torch.from_numpy(np.concatenate([rows_real, rows_real + s.numel() // 2]))
        return "naive", (s[live], t[live]), const
    consts = bn.whiten.fold()
    n = consts[0].numel()
    zr, zi = apply_whitening(torch.zeros(1, n, 1, 1), torch.zeros(1, n, 1, 1), consts)
    const = torch.cat([zr.flatten(), zi.flatten()]).numpy()
    idx = torch.from_numpy(rows_real)
    return "whiten", tuple(v[idx] for v in consts), const


def _thresholds(alpha: torch.Tensor, s: torch.Tensor, t: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer thresholds: bit = ``flip * acc >= thr`` reproduces ``sign(((acc * alpha) * s) + t)``."""
    acc = torch.arange(-n, n + 1, dtype=torch.float32)
    y = acc.view(1, 1, -1) * alpha.view(1, -1, 1)
    bits = (apply_fold(y, s, t) >= 0)[0].numpy()  # (P, 2n+1)
    P = bits.shape[0]
    flip = np.ones(P, np.int64)
    thr = np.zeros(P, np.int64)
    values = np.arange(-n, n + 1, dtype=np.int64)
    for p in range(P):
        row = bits[p]
        if row.all():
            thr[p] = ALWAYS
        elif not row.any():
            thr[p] = NEVER
        elif row[-1]:  # non-decreasing: false ... true
            thr[p] = values[np.argmax(row)]
        else:  # non-increasing: true ... false
            flip[p] = -1
            thr[p] = -values[len(row) - 1 - np.argmax(row[::-1])]
        if not np.array_equal(flip[p] * values >= thr[p], row):
            raise RuntimeError(f"BN + sign is not monotone in the accumulator for channel {p}")
    return flip, thr


class _Compiler:
    def __init__(self, model: ComplexNet, image_size: int) -> None:
        self.model = model
        self.ops: list[Op] = []
        self.edges: dict[int, Edge] = {}
        self.image_size = image_size
        self._packed: dict[int, int] = {}

    def edge(self, kind: str, channels: int, live: np.ndarray, const: np.ndarray, size: tuple[int, int]) -> Edge:
        e = Edge(len(self.edges), kind, channels, np.asarray(live, np.int64), np.asarray(const, np.float32), size)
        self.edges[e.id] = e
        return e

    def bits_of(self, e: Edge) -> Edge:
        """``e`` as sign bits (one Pack op per float edge, shared by its consumers)."""
        if e.kind == "bits":
            return e
        if e.id not in self._packed:
            out = self.edge("bits", e.channels, e.live, e.const, e.size)
            self.ops.append(Pack(f"pack{e.id}", [e.id], out.id))
            self._packed[e.id] = out.id
        return self.edges[self._packed[e.id]]

    # -- the model's parts --------------------------------------------------------------------------------------
    def stem(self) -> Edge:
        m = self.model
        size = (self.image_size, self.image_size)
        cin = m.input.channels
        if not m.stem.conv.binary:  # full-precision first layer: input + stem in PyTorch
            rows = _live_rows(m.stem.conv)
            c = m.stem.conv.out_channels
            _, _, const = _bn_constants(m.stem.bn, rows)
            core = m.stem.conv.conv
            h = (size[0] + 2 * core.padding[0] - core.kernel_size[0]) // core.stride[0] + 1
            out_size = (h, h)
            if m.stem.pool is not None:
                pl = m.stem.pool
                h = _pool_out(h, pl.kernel_size, pl.stride, pl.padding, pl.ceil_mode)
                out_size = (h, h)
            live = _stacked(rows, c)
            e = self.edge("float", 2 * c, live, const, out_size)
            keep = None if len(live) == 2 * c else torch.from_numpy(live)

            def fn(x: torch.Tensor, model=m) -> torch.Tensor:
                r, i = model.stem(model.input(x))
                return torch.cat([r, i], 1)

            self.ops.append(TorchIn("stem", [], e.id, fn=fn, live=keep, stem=self._fp_stem(rows)))
            return e
        e = self.edge("float", 2 * cin, np.arange(2 * cin), np.zeros(2 * cin), size)

        def fn_in(x: torch.Tensor, model=m) -> torch.Tensor:
            r, i = model.input(x)
            return torch.cat([r, i], 1)

        self.ops.append(TorchIn("input", [], e.id, fn=fn_in))
        return self.unit(m.stem, e, "float" if self._stem_feeds_float() else "bits", "stem")

    def _fp_stem(self, rows: np.ndarray) -> FpStem:
        m = self.model
        conv, bn, pool = m.stem.conv, m.stem.bn, m.stem.pool
        w = conv.conv.weight.detach().float()
        if conv.int8:
            w = int8_weight(w)
        idx = torch.from_numpy(rows)
        cin = conv.in_channels
        real_input = m.input.mode == "zero"
        weight = torch.cat([w[idx, :cin], w[idx, cin:]], 0) if real_input else w[idx]
        bias = None
        if conv.bias is not None:
            b = conv.bias.detach().float()
            bias = torch.cat([b[0, idx], b[1, idx]])
        norm, consts, _ = _bn_constants(bn, rows)
        pooling = None if pool is None else (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
        stride, padding = conv.conv.stride[0], conv.conv.padding[0]
        stem = FpStem(weight.contiguous(), real_input, stride, padding, bias, norm, consts, pooling, m.input)
        if conv.int8:
            factor = conv.int8_factor().detach()[idx]
            stem.input_scale = conv.input_scale.detach().clone()
            # integer sums are exact in any order, so one real conv with the block weight [[Wr, -Wi], [Wi, Wr]]
            # on [xr; xi] gives the stacked output directly (no doubled batch to split, as the float path needs)
            block = stem.weight if real_input else torch.cat(
                [torch.cat([weight[:, :cin], -weight[:, cin:]], 1), torch.cat([weight[:, cin:], weight[:, :cin]], 1)])
            stem.integer_conv = Int8Conv(block, torch.cat([factor, factor]), stride, padding)
        return stem

    def _stem_feeds_float(self) -> bool:
        return isinstance(self.model.body[0], ComplexBasicBlock) if len(self.model.body) else True

    def conv_bn(self, name: str, conv: ComplexConv2d, bn, pool, src: Edge, want: str) -> Edge:
        """One binary conv + complex BN (+ max-pool); ``want`` "bits" or "float" output."""
        if not conv.binary:
            raise ConfigError(f"layer {name} is a full-precision convolution inside the binary part; the engine "
                              "runs only the first layer and the head in full precision")
        src = self.bits_of(src)
        cout = conv.out_channels
        rows = _live_rows(conv)
        out_live = _stacked(rows, cout)
        norm, bn_consts, const = _bn_constants(bn, rows)
        k = conv.conv.kernel_size[0]
        stride, pad = conv.conv.stride[0], conv.conv.padding[0]
        h_in, w_in = src.size
        ho, wo = (h_in + 2 * pad - k) // stride + 1, (w_in + 2 * pad - k) // stride + 1
        big = _block_weight(conv)[torch.from_numpy(out_live)]  # (P, 2Cin, k, k)
        weights = pack_weight_bits(_sign_bits(big[:, torch.from_numpy(src.live)]))
        corr_int, corr_border = self.corrections(big, src, stride, pad, (ho, wo))
        alpha = conv.scales().float()[torch.from_numpy(np.concatenate([rows, rows]))]
        threshold = want == "bits" and norm == "naive"
        op = BConv(name, [src.id], -1, mode="threshold" if threshold else "float", weights=weights, nbits=len(src.live),
                   stride=stride, padding=pad, kernel=(k, k), out_size=(ho, wo), corr_int=corr_int,
                   corr_border=corr_border, alpha=alpha, norm=norm, bn=bn_consts, in_live=src.live, out_live=out_live)
        if threshold:
            n = k * k * src.channels
            op.flip, op.thr = _thresholds(alpha, bn_consts[0], bn_consts[1], n)
        else:
            op.flip = op.thr = np.zeros(len(out_live), np.int64)
        out = self.edge("bits" if threshold else "float", 2 * cout, out_live, const, (ho, wo))
        op.dst = out.id
        self.ops.append(op)
        if pool is not None:
            size = tuple(_pool_out(s, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) for s in (ho, wo))
            pooled = self.edge(out.kind, out.channels, out.live, out.const, size)
            if threshold:
                self.ops.append(BitPool(f"{name}.pool", [out.id], pooled.id, pool.kernel_size, pool.stride,
                                        pool.padding, size))
            else:
                self.ops.append(FloatPool(f"{name}.pool", [out.id], pooled.id, pool.kernel_size, pool.stride,
                                          pool.padding, pool.ceil_mode))
            out = pooled
        if want == "bits" and out.kind == "float":
            out = self.bits_of(out)
        return out

    def corrections(self, big: torch.Tensor, src: Edge, stride: int, pad: int,
                    out_size) -> tuple[np.ndarray, np.ndarray]:
        """Integer contribution of the input's dead channels (constant +-1 inside the image, 0 in the padding)."""
        P = big.shape[0]
        dead = src.dead
        if len(dead) == 0:
            return np.zeros(P, np.int32), np.zeros((0, 0, 0), np.int32)
        signs = torch.from_numpy(np.where(src.const[dead] >= 0, 1.0, -1.0).astype(np.float32))
        image = signs.view(1, -1, 1, 1).expand(1, len(dead), *src.size).contiguous()
        wd = big[:, torch.from_numpy(dead)]
        corr = F.conv2d(image, wd, stride=stride, padding=pad)[0]  # (P, Ho, Wo), exact small integers
        corr_int = (wd * signs.view(1, -1, 1, 1)).sum((1, 2, 3))  # every tap inside the image
        border = (corr - corr_int.view(P, 1, 1)).round().to(torch.int32)
        corr_int = corr_int.round().to(torch.int32).numpy()
        if not bool(border.any()):
            return corr_int, np.zeros((0, 0, 0), np.int32)
        return corr_int, np.ascontiguousarray(border.permute(1, 2, 0).numpy())

    def unit(self, unit: ComplexUnit, src: Edge, want: str, name: str) -> Edge:
        if unit.act is not None:
            raise ConfigError(f"unit {name} has a CReLU: a full-precision model; the engine runs binary models")
        return self.conv_bn(name, unit.conv, unit.bn, unit.pool, src, want)

    def block(self, block: ComplexBasicBlock, x: Edge, name: str) -> Edge:
        if block.act is not None:
            raise ConfigError(f"block {name} has a CReLU: a full-precision model; the engine runs binary models")
        a = self.conv_bn(f"{name}.conv1", block.conv1, block.bn1, None, x, "bits")
        b = self.conv_bn(f"{name}.conv2", block.conv2, block.bn2, None, a, "float")
        if block.shortcut_conv is not None:
            s = self.conv_bn(f"{name}.shortcut", block.shortcut_conv, block.shortcut_bn, None, x, "float")
        else:
            s = x if x.kind == "float" else None
            if s is None:
                raise ConfigError(f"block {name}: an identity shortcut needs the float residual stream")
        live = np.union1d(b.live, s.live)
        out = self.edge("float", b.channels, live, (b.const + s.const).astype(np.float32), b.size)
        self.ops.append(Add(f"{name}.add", [b.id, s.id], out.id))
        return out

    def head(self, x: Edge) -> int:
        head = self.model.head
        if x.kind != "float":
            raise ConfigError("the head needs the float output of the last layer")
        if not head.fc.binary:
            out = self.edge("float", 0, np.zeros(0), np.zeros(0), (1, 1))
            self.ops.append(TorchHead("head", [x.id], out.id, fn=head))
            return out.id
        fc = head.fc
        pooled = self.edge("bits", x.channels, x.live, x.const, (1, 1))
        self.ops.append(PooledBits("head.pool", [x.id], pooled.id, fn=head.pooled))
        big = _block_weight(fc, rows="real")  # (classes, 2Cin, 1, 1)
        weights = pack_weight_bits(_sign_bits(big[:, torch.from_numpy(x.live)]))
        corr_int, corr_border = self.corrections(big, pooled, 1, 0, (1, 1))
        classes = fc.out_channels
        op = BConv("head.fc", [pooled.id], -1, mode="logits", weights=weights, nbits=len(x.live), kernel=(1, 1),
                   out_size=(1, 1), corr_int=corr_int, corr_border=corr_border, alpha=fc.scales().float(),
                   bias=None if fc.bias is None else fc.bias.detach().float(), flip=np.zeros(classes, np.int64),
                   thr=np.zeros(classes, np.int64), in_live=x.live, out_live=np.arange(classes))
        out = self.edge("float", 0, np.zeros(0), np.zeros(0), (1, 1))
        op.dst = out.id
        self.ops.append(op)
        return out.id

    def compile(self) -> Program:
        x = self.stem()
        for i, part in enumerate(self.model.body):
            last = i == len(self.model.body) - 1
            if isinstance(part, ComplexBasicBlock):
                x = self.block(part, x, f"body.{i}")
            elif isinstance(part, ComplexUnit):
                nxt = None if last else self.model.body[i + 1]
                want = "float" if last or isinstance(nxt, ComplexBasicBlock) else "bits"
                x = self.unit(part, x, want, f"body.{i}")
            else:
                raise ConfigError(f"body.{i} is a {type(part).__name__}, which the engine does not run")
        if x.kind != "float":
            raise ConfigError("the last layer must produce the float map the head reads")
        out = self.head(x)
        return Program(self.ops, self.edges, self.image_size, self.model.input.channels, out,
                       self.model.input.in_channels)


def compile_program(model: ComplexNet, image_size: int) -> Program:
    """The bit-level program of a binary complex network (a deep copy in eval mode) for square ``image_size`` inputs."""
    if not isinstance(model, ComplexNet):
        raise ConfigError(f"the BCNN engine runs the complex networks of prunus.bcnn (cnin, cresnet18, ...), "
                          f"not a {type(model).__name__}")
    if not model.binary:
        raise ConfigError("the BCNN engine runs binarized models; this complex network is full precision "
                          "(binary=False)")
    work = copy.deepcopy(model).cpu().float().eval()
    for p in work.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        return _Compiler(work, int(image_size)).compile()


# -- running -------------------------------------------------------------------------------------------------------


def _full(data: torch.Tensor, e: Edge) -> torch.Tensor:
    """The full-width float map (B, channels, H, W): live channels from ``data``, dead ones at their constant."""
    if len(e.live) == e.channels:
        return data
    B = data.shape[0]
    out = torch.from_numpy(e.const).view(1, -1, 1, 1).expand(B, e.channels, *data.shape[2:]).clone()
    out[:, torch.from_numpy(e.live)] = data
    return out


def _expand(data: torch.Tensor, e: Edge, live: np.ndarray) -> torch.Tensor:
    """``data`` (channels ``e.live``) widened to the channels ``live`` (a superset), dead ones at their constant."""
    if np.array_equal(e.live, live):
        return data
    B = data.shape[0]
    out = torch.from_numpy(e.const[live]).view(1, -1, 1, 1).expand(B, len(live), *data.shape[2:]).clone()
    out[:, torch.from_numpy(np.searchsorted(live, e.live))] = data
    return out


def fp_stem_conv(stem: FpStem, x: torch.Tensor, channels_last: bool = False, integer_kernel: bool = False
                 ) -> torch.Tensor:
    """The pruned first layer's convolution: ``(B, 2L, H, W)`` stacked live channels, before bias and BN.

    It computes each live output with the same PyTorch convolution the reference runs, only without
    the all-zero filters (and, for a real input, both halves in one call).  PyTorch computes each
    output of a convolution by its own fixed sequence of float operations, so the values equal the
    reference's as long as the algorithm PyTorch picks does not change with the number of filters,
    the batch size or the memory format -- which the numba backend checks on random inputs before
    using this path (``channels_last`` is only used where that check passed).  An int8 layer goes to
    :func:`int8_stem_conv` (``integer_kernel``: on its int8 kernel).
    """
    if stem.integer_conv is not None:
        return int8_stem_conv(stem, x, integer_kernel)
    if stem.real_input:
        inp = x
    else:
        xr, xi = stem.input_fn(x)
        inp = torch.cat([torch.cat([xr, -xi], 1), torch.cat([xi, xr], 1)], 0)
    w = stem.weight
    if channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
        if stem.weight_cl is None:  # made once (two threads may both make it: the same values)
            stem.weight_cl = w.contiguous(memory_format=torch.channels_last)
        w = stem.weight_cl
    y = F.conv2d(inp, w, None, stem.stride, stem.padding)
    if not stem.real_input:
        n = x.shape[0]
        y = torch.cat([y[:n], y[n:]], 1)
    return y


def int8_stem_conv(stem: FpStem, x: torch.Tensor, integer_kernel: bool) -> torch.Tensor:
    """An int8 first layer as the model computes it (:mod:`prunus.bcnn.int8`): the input quantized with the model's
    scale, the exact convolution of the integers (on the int8 kernel or as float32), times ``s * w_o``."""
    if stem.real_input:
        q = int8_input(x, stem.input_scale)
    else:
        xr, xi = stem.input_fn(x)
        q = int8_input(torch.cat([xr, xi], 1), stem.input_scale)
    return stem.integer_conv(q, integer_kernel)


def fp_stem_forward(stem: FpStem, x: torch.Tensor) -> torch.Tensor:
    """The pruned first layer in PyTorch float32 ops (conv, bias, BN, pool), stacked live channels."""
    y = fp_stem_conv(stem, x)
    if stem.bias is not None:
        y = y + stem.bias.view(1, -1, 1, 1)
    if stem.norm == "naive":
        y = apply_fold(y, *stem.bn)
    else:
        k = y.shape[1] // 2
        y = torch.cat(apply_whitening(y[:, :k].contiguous(), y[:, k:].contiguous(), stem.bn), 1)
    if stem.pool is not None:
        k, s, p, ceil = stem.pool
        y = F.max_pool2d(y, k, s, p, 1, ceil)
    return y


def float_epilogue(op: BConv, acc: torch.Tensor) -> torch.Tensor:
    """Integer accumulators (B, P, H, W) -> the reference's float32 ops: scale, then BN (or logits: scale, bias)."""
    y = acc.to(torch.float32)
    if op.mode == "logits":
        y = y.reshape(y.shape[0], -1) * op.alpha.view(1, -1)
        return y + op.bias if op.bias is not None else y
    y = y * op.alpha.view(1, -1, 1, 1)
    if op.norm == "naive":
        return apply_fold(y, *op.bn)
    k = y.shape[1] // 2
    zr, zi = apply_whitening(y[:, :k].contiguous(), y[:, k:].contiguous(), op.bn)
    return torch.cat([zr, zi], 1)


def run_program(program: Program, backend, x: torch.Tensor, *, keep: bool = False) -> torch.Tensor | dict:
    """Run ``program`` on a batch; ``keep=True`` returns every edge's value (for tests)."""
    values: dict[int, Any] = {}
    edges = program.edges
    last = program.last_uses()
    with torch.no_grad():
        for k, op in enumerate(program.ops):
            if isinstance(op, TorchIn):
                if op.stem is not None and hasattr(backend, "run_stem"):  # the pruned stem, live filters only
                    values[op.dst] = backend.run_stem(op, x)
                else:
                    out = op.fn(x)
                    values[op.dst] = out if op.live is None else out.index_select(1, op.live)
            elif isinstance(op, Pack):
                values[op.dst] = backend.pack(values[op.src[0]])
            elif isinstance(op, BConv):
                if op.mode == "threshold":
                    values[op.dst] = backend.bconv_bits(op, values[op.src[0]])
                else:
                    values[op.dst] = float_epilogue(op, backend.bconv_acc(op, values[op.src[0]]))
            elif isinstance(op, BitPool):
                values[op.dst] = backend.bit_maxpool(op, values[op.src[0]])
            elif isinstance(op, FloatPool):
                values[op.dst] = F.max_pool2d(values[op.src[0]], op.kernel, op.stride, op.padding, 1, op.ceil_mode)
            elif isinstance(op, Add):
                a, b = (edges[i] for i in op.src)
                live = edges[op.dst].live
                values[op.dst] = _expand(values[a.id], a, live) + _expand(values[b.id], b, live)
            elif isinstance(op, TorchHead):
                e = edges[op.src[0]]
                full = _full(values[e.id], e)
                r, i = unstack(full)
                values[op.dst] = op.fn((r.contiguous(), i.contiguous()))
            elif isinstance(op, PooledBits):
                e = edges[op.src[0]]
                r, i = unstack(_full(values[e.id], e))
                pr, pi = op.fn((r.contiguous(), i.contiguous()))
                pooled = torch.cat([pr, pi], 1)[:, torch.from_numpy(e.live)]
                values[op.dst] = backend.pack(pooled[:, :, None, None])
            else:  # pragma: no cover
                raise TypeError(type(op).__name__)
            if not keep:
                for i in op.src:
                    if last[i] == k:
                        values.pop(i, None)
    return values if keep else values[program.output]
