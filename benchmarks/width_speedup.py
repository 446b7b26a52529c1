"""How much of 2x fewer MACs a CPU turns into speed, by layer width and channel rounding (issue 5).

Why ``surgery_speedup.py`` prunes VGG-16 at width 0.5 with multiples of 16 filters: for
VGG-16 at widths 0.25, 0.5 and 1.0 (untrained, seeded: speed depends on the shapes only),
a uniform filter plan with every layer keeping a multiple of 8 or of 16 filters is chosen
by bisection for 2x fewer MACs (``surgery_speedup.ratio_for``), the channels are removed,
and the dense and small models are timed in one process, their runs interleaved
(``prunus.deploy.latency.compare_latency``, allocator held steady), eager and deployed
(``for_inference``), batch 1 and 64. The process flushes denormals to zero on every thread before anything
else (``flush_denormals_for_timing``): random weights make them, and they would time the values, not the shape.

    python benchmarks/width_speedup.py
"""

from __future__ import annotations

import surgery_speedup as S
import torch
from common import write_result

from prunus.deploy.latency import compare_latency, flush_denormals_for_timing, for_inference
from prunus.environment import environment_info
from prunus.harden.stats import count_macs
from prunus.models import build_model

NAME = "width_speedup"
WIDTHS = (0.25, 0.5, 1.0)
ROUND_TO = (8, 16)
REPEATS, WARMUP = 40, 5


def measure(width: float) -> list[dict]:
    torch.manual_seed(0)
    dense = build_model("vgg16", width=width).eval()
    small = {r: S.pruned_copy(dense, S.plan_for(dense, "uniform", S.ratio_for(dense, "uniform", 2.0, r), r), S.PROBE)
             for r in ROUND_TO}
    forms = {"eager": ({"dense": dense, **small}, S.PROBE),
             "deployed": ({k: for_inference(m) for k, m in {"dense": dense, **small}.items()},
                          S.PROBE.to(memory_format=torch.channels_last))}
    rows = [{"width": width, "round_to": r,
             "macs_fewer": count_macs(dense, S.PROBE).dense / count_macs(m, S.PROBE).dense,
             "channels": [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]}
            for r, m in small.items()]
    for form, (models, probe) in forms.items():
        lat = compare_latency(models, probe, (1, 64), repeats=REPEATS, warmup=WARMUP)
        for row in rows:
            row["denormals_flushed"] = row.get("denormals_flushed", True) and all(  # eager and deployed
                v.denormals_flushed for per in lat.values() for v in per.values())
            for b in (1, 64):
                row[f"{form}_dense_b{b}_ms"] = lat["dense"][b].median_ms
                row[f"{form}_small_b{b}_ms"] = lat[row["round_to"]][b].median_ms
    return rows


def summarize(data: dict) -> str:
    env = data["environment"]
    lines = [f"## Speed-up of 2x fewer MACs by layer width (`benchmarks/{NAME}.py`)", "",
             "VGG-16 (untrained, 1x32x32 inputs), uniform filter pruning to 2x fewer MACs with every layer keeping a "
             "multiple of 8 or 16 filters, channels removed; dense and small timed in one process, runs interleaved, "
             f"allocator steady, median of {data['repeats']} after {data['warmup']} warm-ups; deployed = BatchNorm "
             f"folded, channels-last. {data['threads']} threads{_flushed(data)}. Machine: {env['cpu']}, "
             f"{env['cpu_count']} cores, "
             f"torch {env['torch']}.", "",
             ("| width | multiple of | MACs fewer | kept filters per conv "
              "| eager b1 | eager b64 | deployed b1 | deployed b64 |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        cells = [f"{r[f'{f}_dense_b{b}_ms'] / r[f'{f}_small_b{b}_ms']:.2f}x"
                 for f in ("eager", "deployed") for b in (1, 64)]
        lines.append(f"| {r['width']:g} | {r['round_to']} | {r['macs_fewer']:.2f}x "
                     f"| {' '.join(map(str, r['channels']))} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _flushed(data: dict) -> str:
    """The table's note on denormals: flushed on every thread, or not (rows from before the flush say neither)."""
    flags = {r.get("denormals_flushed") for r in data["rows"]}
    return {frozenset({True}): ", denormals flushed to zero on every thread",
            frozenset({False}): ", denormals NOT flushed on every thread"}.get(frozenset(flags), "")


def main() -> None:
    flush_denormals_for_timing()  # first, before any parallel operation starts the intra-op workers
    data = {"benchmark": NAME, "repeats": REPEATS, "warmup": WARMUP, "threads": torch.get_num_threads(),
            "environment": environment_info(), "rows": [row for w in WIDTHS for row in measure(w)]}
    write_result(NAME, data, summarize(data))
    print(summarize(data))


if __name__ == "__main__":
    main()
