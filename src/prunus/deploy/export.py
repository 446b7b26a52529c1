"""ONNX export, checked with onnxruntime before the file is kept.

An exported model that computes something else is worse than none, so
:func:`export_onnx` runs the ONNX file in onnxruntime on random inputs and
compares with PyTorch; only a file that matches (max abs difference <= ``atol``)
is renamed into place, so a failed export leaves nothing behind.

The exporter is torch's TorchScript-based one (``dynamo=False``): since torch 2.9
the default ``torch.export``-based exporter needs the ``onnxscript`` package, which
prunus does not depend on; the TorchScript exporter handles every prunus model
(plain conv/BN/linear/pool/add graphs) with no extra package.  The batch
dimension is dynamic.  onnx and onnxruntime are optional dependencies (the
``surgery`` extra).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from prunus._optional import require
from prunus.errors import ConfigError, ExportError
from prunus.io import atomic_write, ensure_parent_dir

__all__ = ["OnnxCheck", "export_onnx"]


@dataclass(frozen=True)
class OnnxCheck:
    """An exported file and how closely onnxruntime reproduced PyTorch on it."""

    path: Path
    bytes: int
    max_abs_diff: float
    batch_sizes: tuple[int, ...]
    opset: int


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _outputs(o)]
    raise ExportError(f"the model returns {type(out).__name__}; ONNX export supports tensors and tuples of tensors")


@contextlib.contextmanager
def _silenced_stdout():
    """Send file descriptor 1 to /dev/null: torch 2.13's TorchScript exporter turns its C++ log on by mistake
    and prints the whole graph to stdout when an export fails; the error itself is reported in one line."""
    log_was_on = bool(torch._C._jit_is_onnx_log_enabled()) if hasattr(torch._C, "_jit_is_onnx_log_enabled") else None
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if log_was_on is False:
            torch._C._jit_set_onnx_log_enabled(False)


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    atol: float = 1e-4,
    batch_sizes: Sequence[int] = (1, 4),
    opset: int = 17,
    seed: int = 0,
) -> OnnxCheck:
    """Export ``model`` (eval mode, on CPU in float32) to ``path``, atomically, after onnxruntime matched it.

    ``example_input`` fixes every dimension but the batch.  Raises :class:`ExportError` if any output
    of onnxruntime differs from PyTorch's by more than ``atol`` on seeded random inputs of each of
    ``batch_sizes``, and :class:`ConfigError` if ``path`` cannot be written.
    """
    onnx = require("onnx", "ONNX export (prunus export)")
    ort = require("onnxruntime", "checking an ONNX export (prunus export)")
    path = Path(path)
    ensure_parent_dir(path, f"ONNX file {path}")
    cpu = copy.deepcopy(model).to("cpu", torch.float32).eval()
    example = example_input[:1].to("cpu", torch.float32)
    try:
        with atomic_write(path) as tmp:
            _export(cpu, example, tmp, opset)
            onnx.checker.check_model(str(tmp))
            diff = _onnxruntime_difference(ort, cpu, example, tmp, batch_sizes, seed, path)
            if not diff <= atol:
                raise ExportError(f"onnxruntime's outputs differ from PyTorch's by up to {diff:.3g} (> {atol:g}); "
                                  f"{path} was not written")
    except OSError as e:
        raise ConfigError(f"ONNX file {path} cannot be written ({e.strerror or e})") from None
    return OnnxCheck(path, path.stat().st_size, diff, tuple(int(b) for b in batch_sizes), opset)


def _export(model: nn.Module, example: torch.Tensor, target: Path, opset: int) -> None:
    """TorchScript ONNX export with a dynamic batch dimension; an operator ONNX cannot express is one ExportError."""
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in favour of one that needs onnxscript
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        try:
            with _silenced_stdout():
                torch.onnx.export(
                    model, (example,), str(target), dynamo=False, opset_version=opset, verbose=False,
                    input_names=["input"], output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                )
        except torch.onnx.errors.OnnxExporterError as e:
            first = str(e).strip().splitlines()[0].split(" Please feel free")[0]
            raise ExportError(f"the model cannot be exported to ONNX: {first}") from None


def _onnxruntime_difference(ort, model: nn.Module, example: torch.Tensor, onnx_file: Path, batch_sizes: Sequence[int],
                            seed: int, path: Path) -> float:
    """The largest absolute difference between onnxruntime's and PyTorch's outputs on seeded random inputs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    diff = 0.0
    for b in batch_sizes:
        x = torch.randn((int(b), *example.shape[1:]), generator=gen)
        with torch.no_grad():
            expected = _outputs(model(x))
        got = session.run(None, {name: x.numpy()})
        if len(got) != len(expected) or any(tuple(g.shape) != tuple(e.shape) for g, e in zip(got, expected)):
            raise ExportError(f"onnxruntime's outputs have shapes {[g.shape for g in got]}, PyTorch's "
                              f"{[tuple(e.shape) for e in expected]}; {path} was not written")
        for g, e in zip(got, expected):
            diff = max(diff, float((torch.from_numpy(g).double() - e.double()).abs().max()) if e.numel() else 0.0)
    return diff
