"""A pruned + quantized model as the bytes it really needs: codes, scales, sparse indices.

Checkpoints store float32 tensors, zeros included, so a 20x pruned 4-bit model
is as big as the dense one. This format stores what a deployment needs:

* a quantized weight: a bitmap of its nonzero positions (only when some entries
  are pruned), the codes of those entries bit-packed at ``bits_needed(scheme)``
  bits each (indices into the level set), and float32 scales (one per tensor or
  per output channel);
* every other tensor (biases, BatchNorm): raw, in float16 when ``float16=True``
  (the exporter rounds those tensors in the model itself first, so the file
  reloads to exactly the model that was evaluated) else in its own dtype;
* a small JSON header: the model's constructor record (so :func:`load_compressed`
  rebuilds it, and with it every tensor's name and shape) and, per tensor in
  ``state_dict`` order, its scheme or dtype.

The whole stream ``len(header) | header | payload`` is then compressed with LZMA
(Python's ``lzma``), which plays the role of Deep Compression's Huffman stage:
sparse bitmaps and skewed code histograms shrink to close to their entropy.
The true size is the size of that file. Writing goes to a temporary file that is
renamed, so an interrupted export never leaves a half-written file.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from prunus.errors import CheckpointError
from prunus.quantize import QuantKeeper, QuantScheme, bits_needed

MAGIC = "prunus-compressed"
VERSION = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "int64": torch.int64,
           "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}


@dataclass
class SizeReport:
    """Bytes of the exported file, and what the same model takes densely in float32."""

    file_bytes: int
    dense_fp32_bytes: int
    raw: dict[str, int]  # before LZMA: codes, masks, scales, floats, header

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


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Unsigned codes < 2**bits, ``bits`` bits each, little-endian bit order."""
    codes = codes.astype(np.uint16)
    planes = ((codes[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    return (flat.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(1)


@torch.no_grad()
def round_floats_to_half(model: nn.Module, skip: set[str]) -> None:
    """Round every float parameter/buffer not in ``skip`` to float16 precision, in place (the export stores them so)."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name not in skip and t.is_floating_point():
            t.copy_(t.half().float())


def export_compressed(model: nn.Module, keeper: QuantKeeper, meta: dict[str, Any], path: str | os.PathLike,
                      *, float16: bool = True) -> SizeReport:
    """Write ``model`` (quantized by ``keeper``) to ``path``; returns its true size.

    The header lists the tensors in ``state_dict`` order *without* names or shapes:
    the loader rebuilds the model from its constructor record, which gives both, and
    the sections follow one another, so no offsets are stored either. Each entry is
    ``["q", scheme, bits, per_channel, has_mask]`` or ``["f", dtype]``.
    """
    path = Path(path)
    payload = bytearray()
    raw = {"codes": 0, "masks": 0, "scales": 0, "floats": 0}
    entries: list[list[Any]] = []

    def put(data: bytes, kind: str) -> None:
        raw[kind] += len(data)
        payload.extend(data)

    for name, tensor in model.state_dict().items():
        if name in keeper.state:
            s, scheme = keeper.state[name], keeper.schemes[name]
            if not torch.equal(tensor, keeper.quantized(name)):
                raise CheckpointError(f"export: {name} is not on its quantization levels; run the quantization first")
            mask = s["mask"].bool()
            pruned = not bool(mask.all())
            entries.append(["q", scheme.kind, scheme.bits, scheme.per_channel, pruned])
            put(s["scale"].float().cpu().numpy().tobytes(), "scales")
            if pruned:
                put(np.packbits(mask.cpu().numpy().reshape(-1), bitorder="little").tobytes(), "masks")
            put(pack_codes(keeper.codes(name)[mask].cpu().numpy(), bits_needed(scheme)), "codes")
        else:
            dtype = torch.float16 if float16 and tensor.is_floating_point() else tensor.dtype
            t = tensor.detach().to(dtype)
            if float16 and tensor.is_floating_point() and not torch.equal(t.to(tensor.dtype), tensor):
                raise CheckpointError(f"export: {name} is not representable in float16; call round_floats_to_half first")
            entries.append(["f", str(dtype).removeprefix("torch.")])
            put(t.cpu().contiguous().view(torch.uint8).numpy().tobytes(), "floats")

    header = {"format": MAGIC, "version": VERSION, "model": meta["model"], "dataset": meta.get("dataset"), "tensors": entries}
    head = json.dumps(header, separators=(",", ":")).encode()
    raw["header"] = len(head)
    blob = lzma.compress(struct.pack("<I", len(head)) + head + bytes(payload), preset=9 | lzma.PRESET_EXTREME)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return SizeReport(path.stat().st_size, dense_fp32_bytes(model), raw)


def is_compressed(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_file() and p.read_bytes()[:6] == b"\xfd7zXZ\x00"


def load_compressed(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a file written by :func:`export_compressed` holds; returns (model, header)."""
    from prunus.models import build_model

    path = Path(path)
    try:
        blob = lzma.decompress(path.read_bytes())
        (n,) = struct.unpack("<I", blob[:4])
        header = json.loads(blob[4 : 4 + n])
        if header.get("format") != MAGIC or header.get("version") != VERSION:
            raise ValueError(f"not a {MAGIC} v{VERSION} file")
    except (OSError, lzma.LZMAError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the compressed model ({e})") from None
    payload, pos = memoryview(blob)[4 + n :], 0

    def take(length: int) -> bytes:
        nonlocal pos
        if pos + length > len(payload):
            raise CheckpointError(f"{path}: the payload is truncated")
        pos += length
        return bytes(payload[pos - length : pos])

    m = header["model"]
    model = build_model(m["name"], m["in_channels"], m["num_classes"], **m.get("options", {}))
    target = model.state_dict()
    if len(header["tensors"]) != len(target):
        raise CheckpointError(f"{path}: {len(header['tensors'])} tensors stored, model {m['name']} has {len(target)}")
    state = {}
    for (name, ref), entry in zip(target.items(), header["tensors"]):
        shape, numel = ref.shape, ref.numel()
        if entry[0] == "q":
            _, kind, bits, per_channel, pruned = entry
            scheme = QuantScheme(kind, bits, per_channel)
            rows = shape[0] if per_channel and ref.dim() > 1 else 1
            scales = torch.from_numpy(np.frombuffer(take(4 * rows), dtype=np.float32).copy())
            mask = np.ones(numel, dtype=bool)
            if pruned:
                bitmap = np.frombuffer(take((numel + 7) // 8), dtype=np.uint8)
                mask = np.unpackbits(bitmap, count=numel, bitorder="little").astype(bool)
            kept, width = int(mask.sum()), bits_needed(scheme)
            codes = np.zeros(numel, dtype=np.int64)
            codes[mask] = unpack_codes(take((kept * width + 7) // 8), kept, width)
            values = scheme.levels(ref.dtype)[torch.from_numpy(codes)].reshape(rows, -1) * scales.to(ref.dtype).unsqueeze(1)
            state[name] = values.reshape(shape) * torch.from_numpy(mask).reshape(shape)
        else:
            dtype = _DTYPES[entry[1]]
            size = numel * torch.empty((), dtype=dtype).element_size()
            state[name] = torch.frombuffer(bytearray(take(size)), dtype=dtype).reshape(shape).to(ref.dtype) if numel else ref.clone()
    if pos != len(payload):
        raise CheckpointError(f"{path}: {len(payload) - pos} bytes left over; the file does not match model {m['name']}")
    model.load_state_dict(state)
    return model.eval(), header
