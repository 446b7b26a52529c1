"""What machine and library versions a result came from: recorded in every run and benchmark."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy
import torch

from prunus import __version__


def environment_info() -> dict[str, Any]:
    """Machine and library versions, recorded with every run."""


    return {
        "prunus": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    """The CPU's model name with its widest vector extension, e.g. ``AMD EPYC (AVX2)``.

    Virtual machines often report a bare family name, and two machines both called "AMD EPYC"
    (an AVX2 Zen 3 and an AVX-512 Zen 4) time the same model very differently.
    """
    fields = _cpuinfo()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    if "avx512f" in flags:
        simd = "AVX-512" + (" VPOPCNTDQ" if "avx512_vpopcntdq" in flags else "")
    else:
        simd = next((s.upper() for s in ("avx2", "avx", "sse4_2") if s in flags), "")
    return f"{name} ({simd})" if simd else name


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX); None where it cannot be told.

    Without it, bf16 autocast on the CPU is emulated: a ResNet-20 training step of 64 radio frames took 4.4 s
    against 0.35 s in float32 on an AMD EPYC with AVX2 (a short check, 1 thread), while on the Xeon with
    AVX-512 BF16 it halves a float32 step (benchmarks/bcnn_training_speed.py).
    """
    flags = cpu_flags()
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (``avx2``, ``avx512_vnni``, ...); None where there is none."""
    flags = _cpuinfo().get("flags")
    return None if flags is None else set(flags.split())


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in info.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())
    return fields
