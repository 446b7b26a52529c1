"""A pruned + quantized model as the bytes it really needs: codes, scales, sparse positions.

Checkpoints store float32 tensors, zeros included, so a 20x pruned 4-bit model
is as big as the dense one. This format stores what a deployment needs:

* a quantized weight: its float32 scales (one per tensor or per output channel),
  the positions of its nonzero entries (only when some entries are zero) and
  their codes (indices into the level set);
* every other tensor (biases, BatchNorm): in float32 (``rest="float32"``: its own
  dtype), float16, or 8 bits with a power-of-two scale (``rest="int8"``); the
  exporter rounds those tensors in the model itself first (:func:`round_rest`), so
  the file reloads to exactly the model that was evaluated;
* a small header (JSON, deflated with the format's vocabulary as a preset dictionary): the model's
  constructor record (so :func:`load_compressed` rebuilds it, and with it every tensor's name and shape)
  and, per tensor in ``state_dict`` order, its scheme or storage.

The position bitmaps and the codes are entropy-coded (:mod:`prunus.deploy.entropy`: a
range coder with an adaptive model, the role Huffman coding plays in Deep
Compression): a bitmap at density p costs close to H(p) bits per entry and the
codes close to their empirical entropy. Layout::

    b"PRZ2" | crc32 of the rest | crc32 of the decoded symbols | header length (u16) |
    header | scales and other tensors, raw | range-coded words (positions and codes,
    tensor by tensor)

The true size is the size of that file. Writing goes to a temporary file that is
renamed, so an interrupted export never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from prunus.constraints.levels import QuantScheme
from prunus.deploy.entropy import StreamReader, StreamWriter
from prunus.errors import CheckpointError
from prunus.harden.keepers import QuantKeeper
from prunus.io import atomic_write
from prunus.models import build_model

MAGIC = b"PRZ2"
REST = ("float32", "float16", "int8")  # how tensors that are not quantized weights are stored
# The header's deflate stream is primed with the format's vocabulary (the LZ77 window starts with it), so key
# names, model and dataset names and tensor entries cost a few bits instead of their spelling: ~135 -> ~40 bytes
# for LeNet-5, whose whole 100x budget is 2,468 bytes. Part of the format: never edit it, add a new format instead.
HEADER_VOCABULARY = (
    b'"width":0.5,"depth":"image_size":32,"augment":false,"in_channels":3,'
    b'"resnet18","resnet50","resnet20","resnet56","mobilenetv2","nin","cnin","cresnet18","vgg11","vgg16",'
    b'"mnist","cifar10","digits","signals","fashion-mnist","image_size":28},'
    b'["f","float32"],["f","int64"],["f","float16"],["q","ternary",2,true,true],["q","binary",1,false,false],'
    b'["q","pow2",4,true,false],["q","fixed",8,false,false],["i8"],["q","fixed",4,false,true],["i8"],'
    b'{"model":{"name":"lenet5","in_channels":1,"num_classes":10,"options":{}},"dataset":{"name":"'
)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "int64": torch.int64,
           "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}


@dataclass
class SizeReport:
    """Bytes of the exported file, and what the same model takes densely in float32."""

    file_bytes: int
    dense_fp32_bytes: int
    raw: dict[str, int]  # bytes per part: masks and codes as coded (to the 32-bit word), scales, floats, header

    @property
    def ratio(self) -> float:
        return self.dense_fp32_bytes / self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"file_bytes": self.file_bytes, "dense_fp32_bytes": self.dense_fp32_bytes, "ratio": self.ratio,
                "raw_bytes": dict(self.raw)}


def dense_fp32_bytes(model: nn.Module) -> int:
    """4 bytes for every parameter and floating-point buffer: the model stored densely in float32."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return 4 * sum(t.numel() for t in tensors)


def _int8_exponent(t: torch.Tensor) -> int:
    """The power-of-two step 2**e that puts max|t| at 64..127 (0 for an all-zero tensor)."""
    top = float(t.abs().max()) if t.numel() else 0.0
    return 0 if top == 0 else max(-126, min(127, math.ceil(math.log2(top / 127))))


def _int8_codes(t: torch.Tensor, e: int) -> torch.Tensor:
    return torch.round(t.double() / 2.0**e).clamp(-127, 127).to(torch.int8)


@torch.no_grad()
def round_rest(model: nn.Module, skip: set[str], rest: str = "float16") -> None:
    """Round every float parameter/buffer not in ``skip`` as :func:`export_compressed` stores it, in place.

    int8 uses a power-of-two step, so rounding twice changes nothing and the file
    holds exactly the evaluated values.
    """
    if rest not in REST:
        raise ValueError(f"rest must be one of {', '.join(REST)}, got {rest!r}")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name in skip or not t.is_floating_point() or rest == "float32":
            continue
        if rest == "float16":
            t.copy_(t.half().to(t.dtype))
        else:
            e = _int8_exponent(t)
            t.copy_(_int8_codes(t, e).to(t.dtype) * 2.0**e)


def export_compressed(model: nn.Module, keeper: QuantKeeper, meta: dict[str, Any], path: str | os.PathLike,
                      *, rest: str = "float16") -> SizeReport:
    """Write ``model`` (quantized by ``keeper``) to ``path``; returns its true size.

    The header lists the tensors in ``state_dict`` order *without* names or shapes:
    the loader rebuilds the model from its constructor record, which gives both, and
    the sections follow one another, so no offsets are stored either. Each entry is
    ``["q", scheme, bits, per_channel, has_mask]``, ``["f", dtype]`` or ``["i8"]``
    (8-bit codes and their power-of-two exponent).
    """
    if rest not in REST:
        raise ValueError(f"rest must be one of {', '.join(REST)}, got {rest!r}")
    path = Path(path)
    w = _Writer()
    for name, tensor in model.state_dict().items():
        if name in keeper.state:
            _write_quantized(w, name, tensor, keeper)
        else:
            _write_rest(w, name, tensor, rest)
    header = {"model": meta["model"], "dataset": meta.get("dataset"), "tensors": w.entries}
    head = _deflate(json.dumps(header, separators=(",", ":")).encode())
    w.raw["header"] = len(head)
    body = struct.pack("<IH", w.stream.crc, len(head)) + head + bytes(w.plain) + w.stream.getvalue()
    blob = MAGIC + struct.pack("<I", zlib.crc32(body)) + body
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_bytes(blob)
    return SizeReport(path.stat().st_size, dense_fp32_bytes(model), w.raw)


class _Writer:
    """The file's sections as they grow: header entries, the raw section, the range-coded words; bytes per kind."""

    def __init__(self) -> None:
        self.plain, self.stream, self.entries = bytearray(), StreamWriter(), []
        self.raw = {"codes": 0, "masks": 0, "scales": 0, "floats": 0}

    def put(self, data: bytes, kind: str) -> None:
        self.raw[kind] += len(data)
        self.plain.extend(data)

    def code(self, symbols: np.ndarray, alphabet: int, kind: str) -> None:
        before = self.stream.num_bytes()
        self.stream.write(symbols, alphabet)
        self.raw[kind] += self.stream.num_bytes() - before


def _write_quantized(w: _Writer, name: str, tensor: torch.Tensor, keeper: QuantKeeper) -> None:
    s, scheme = keeper.state[name], keeper.schemes[name]
    if not torch.equal(tensor, keeper.quantized(name)):
        raise CheckpointError(f"export: {name} is not on its quantization levels; run the quantization first")
    # positions of the nonzero weights: pruned ones, and kept ones that quantized to the zero level,
    # cost no code (the model is the same, and the bitmap is cheaper than a code per extra zero)
    mask = s["mask"].bool() & (tensor != 0)
    pruned = not bool(mask.all())
    w.entries.append(["q", scheme.kind, scheme.bits, scheme.per_channel, pruned])
    w.put(s["scale"].float().cpu().numpy().tobytes(), "scales")
    if pruned:
        w.code(mask.cpu().numpy().reshape(-1), 2, "masks")
    w.code(keeper.codes(name)[mask].cpu().numpy(), len(scheme.levels()), "codes")


def _write_rest(w: _Writer, name: str, tensor: torch.Tensor, rest: str) -> None:
    """A tensor that is not quantized (bias, BatchNorm, an unplanned layer): float32, float16 or int8 as ``rest``."""
    if not tensor.is_floating_point() or rest == "float32":
        w.entries.append(["f", str(tensor.dtype).removeprefix("torch.")])
        w.put(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(), "floats")
    elif rest == "float16":
        t = tensor.detach().half()
        if not torch.equal(t.to(tensor.dtype), tensor):
            raise CheckpointError(f"export: {name} is not representable in float16; call round_rest first")
        w.entries.append(["f", "float16"])
        w.put(t.cpu().contiguous().view(torch.uint8).numpy().tobytes(), "floats")
    else:
        e = _int8_exponent(tensor)
        codes = _int8_codes(tensor, e)
        if not torch.equal(codes.to(tensor.dtype) * 2.0**e, tensor):
            raise CheckpointError(f"export: {name} is not representable in 8 bits; call round_rest(..., 'int8') first")
        w.entries.append(["i8"])
        w.put(struct.pack("<b", e) + codes.cpu().numpy().tobytes(), "floats")


def _deflate(data: bytes) -> bytes:
    # raw deflate (no zlib header: the file has its own checksum), primed with the format's vocabulary
    c = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=HEADER_VOCABULARY)
    return c.compress(data) + c.flush()


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj(-15, zdict=HEADER_VOCABULARY)
    out = d.decompress(data) + d.flush()
    if not d.eof:
        raise ValueError("the header is truncated")
    return out


def is_compressed(path: str | os.PathLike) -> bool:
    """A file :func:`export_compressed` wrote (or an older, LZMA-based one, which the loader names)."""
    p = Path(path)
    if not p.is_file():
        return False
    with p.open("rb") as f:
        start = f.read(6)
    return start[:4] == MAGIC or start == b"\xfd7zXZ\x00"


def load_compressed(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a file written by :func:`export_compressed` holds; returns (model, header)."""
    path = Path(path)
    header, payload, symbols_crc = _read_container(path)
    m = header["model"]
    model = build_model(m["name"], m["in_channels"], m["num_classes"], **m.get("options", {}))
    target = model.state_dict()
    if len(header["tensors"]) != len(target):
        raise CheckpointError(f"{path}: {len(header['tensors'])} tensors stored, model {m['name']} has {len(target)}")
    raw = _Cursor(payload, path)
    raw_parts = [_read_raw(raw, ref, entry) for ref, entry in zip(target.values(), header["tensors"])]
    try:
        state = _decode_coded(StreamReader(bytes(payload[raw.pos:])), target, header, raw_parts, symbols_crc)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot decode the compressed model ({e})") from None
    model.load_state_dict(state)
    return model.eval(), header


def _read_container(path: Path) -> tuple[dict[str, Any], memoryview, int]:
    """The header, the payload and the checksum of the decoded symbols; a damaged file is one CheckpointError."""
    try:
        blob = path.read_bytes()
        if blob[:6] == b"\xfd7zXZ\x00":
            raise ValueError("it was written by prunus 0.1's LZMA format; export it again with this version")
        if blob[:4] != MAGIC:
            raise ValueError("not a prunus compressed model (no PRZ2 signature)")
        (crc,) = struct.unpack("<I", blob[4:8])
        body = memoryview(blob)[8:]
        if zlib.crc32(body) != crc:
            raise ValueError("checksum mismatch: the file is corrupt or truncated")
        symbols_crc, n = struct.unpack("<IH", body[:6])
        header = json.loads(_inflate(bytes(body[6 : 6 + n])))
    except (OSError, struct.error, zlib.error, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the compressed model ({e})") from None
    return header, body[6 + n :], symbols_crc


class _Cursor:
    """Reads the raw section front to back; running past its end is one CheckpointError."""

    def __init__(self, payload: memoryview, path: Path):
        self.payload, self.path, self.pos = payload, path, 0

    def take(self, length: int) -> bytes:
        if self.pos + length > len(self.payload):
            raise CheckpointError(f"{self.path}: the payload is truncated")
        self.pos += length
        return bytes(self.payload[self.pos - length : self.pos])


def _read_raw(raw: _Cursor, ref: torch.Tensor, entry: list) -> torch.Tensor:
    """A tensor's raw part: a quantized tensor's scales, an int8 tensor, or a float tensor as stored."""
    if entry[0] == "q":
        rows = ref.shape[0] if entry[3] and ref.dim() > 1 else 1
        return torch.from_numpy(np.frombuffer(raw.take(4 * rows), dtype=np.float32).copy())
    if entry[0] == "i8":
        (e,) = struct.unpack("<b", raw.take(1))
        codes = np.frombuffer(raw.take(ref.numel()), dtype=np.int8).copy()
        return torch.from_numpy(codes).to(ref.dtype).reshape(ref.shape) * 2.0**e
    dtype = _DTYPES[entry[1]]
    size = ref.numel() * torch.empty((), dtype=dtype).element_size()
    return (torch.frombuffer(bytearray(raw.take(size)), dtype=dtype).reshape(ref.shape).to(ref.dtype)
            if ref.numel() else ref.clone())


def _decode_coded(stream: StreamReader, target: dict[str, torch.Tensor], header: dict[str, Any],
                  raw_parts: list[torch.Tensor], symbols_crc: int) -> dict[str, torch.Tensor]:
    """The state dict: quantized tensors from their range-coded positions and level codes times their scales."""
    state = {}
    for (name, ref), entry, part in zip(target.items(), header["tensors"], raw_parts):
        if entry[0] != "q":
            state[name] = part
            continue
        _, kind, bits, per_channel, pruned = entry
        levels = QuantScheme(kind, bits, per_channel).levels(ref.dtype)
        numel = ref.numel()
        mask = stream.read(numel, 2).astype(bool) if pruned else np.ones(numel, dtype=bool)
        codes = np.zeros(numel, dtype=np.int64)
        codes[mask] = stream.read(int(mask.sum()), len(levels))
        values = levels[torch.from_numpy(codes)].reshape(part.numel(), -1) * part.to(ref.dtype).unsqueeze(1)
        state[name] = values.reshape(ref.shape) * torch.from_numpy(mask).reshape(ref.shape)
    if not stream.exhausted():
        raise ValueError(f"coded data left over; the file does not match model {header['model']['name']}")
    if stream.crc != symbols_crc:
        raise ValueError("the decoded positions and codes fail their checksum (written by an incompatible coder?)")
    return state
