"""What makes BCNN training affordable on a CPU: channels-last, bf16 autocast, torch.compile (issue 19).

One training step (forward, cross-entropy, backward, Adam step) on a batch of 128 modulation frames
(2 x 32 x 32), for the complex NIN and ResNet-18 at the widths ``bcnn_accuracy.py`` trains, binary
and full precision. Variants, each against ``nchw`` (float32, NCHW) in the same process:

  channels_last   NHWC tensors (oneDNN's faster CPU convolutions)
  bf16            channels-last + ``torch.autocast("cpu", torch.bfloat16)`` (AVX-512 BF16 where the CPU has it)
  compile         channels-last + torch.compile as ``--compile`` runs it (``prunus.train.trainer.compile_model``;
                  first steps excluded: they compile)
  bf16+compile    both (``--precision bf16 --compile``)

And the loss closure SLR evaluates twice a round (2,048 training frames in chunks of 256, eval mode,
float32: ``prunus.methods.base.batch_closure``), eager against compiled (``--compile``), median of 3
calls after one that compiles.

Median of ``--steps`` timed steps after warm-up, variants interleaved step by step so a slow spell
hits all alike. The loss after the timed steps is recorded too: bf16 changes the numbers, and a
variant that does not train (NaN, or no progress) is worth nothing however fast.

    python benchmarks/bcnn_training_speed.py [--steps 8] [--models ...] [--render]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from common import render_only, write_result

from prunus.data import load_dataset
from prunus.environment import environment_info
from prunus.jobs.common import fixed_batch
from prunus.methods.base import batch_closure
from prunus.train.trainer import compile_model
from prunus.models import build_model

NAME = "bcnn_training_speed"
MODELS = {"cnin (w0.5)": ("cnin", 0.5), "cnin_fp (w0.5)": ("cnin_fp", 0.5), "cresnet18 (w0.5)": ("cresnet18", 0.5),
          "cresnet18_fp (w0.5)": ("cresnet18_fp", 0.5)}
VARIANTS = ("nchw", "channels_last", "bf16", "compile", "bf16+compile")
CLOSURE_FRAMES = 2048
BATCH = 128


def make_step(name: str, width: float, variant: str, x: torch.Tensor, y: torch.Tensor):
    """A closure running one training step of a fresh, seeded model in ``variant``; returns the loss."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=2, num_classes=11, width=width)
    if variant != "nchw":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = compile_model(model) if "compile" in variant else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in variant):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def measure(label: str, steps: int, x: torch.Tensor, y: torch.Tensor, train) -> dict:
    name, width = MODELS[label]
    torch._dynamo.reset()  # each model compiles afresh (models of one class share torch.compile's cache entries)
    fns = {v: make_step(name, width, v, x, y) for v in VARIANTS}
    for fn in fns.values():  # warm-up: oneDNN primitives, and torch.compile's compilation
        fn(), fn()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, float] = {}
    for _ in range(steps):
        for v, fn in fns.items():
            t0 = time.perf_counter()
            losses[v] = fn()
            times[v].append(time.perf_counter() - t0)
    base = statistics.median(times["nchw"])
    return {"model": label, "registry_name": name, "width": width, "batch": BATCH,
            "variants": {v: {"median_s": statistics.median(t), "speedup": base / statistics.median(t),
                             "loss_after": losses[v]} for v, t in times.items()},
            "closure": measure_closure(name, width, train)}


def measure_closure(name: str, width: float, train) -> dict:
    """Seconds of one call of SLR's loss closure on CLOSURE_FRAMES training frames, eager and compiled (median of 3
    after a first call), and the loss each returns."""
    x, y = fixed_batch(train, CLOSURE_FRAMES, 0)
    torch.manual_seed(0)
    model = build_model(name, in_channels=2, num_classes=11, width=width).to(memory_format=torch.channels_last)
    out = {}
    for form, net in (("eager", model), ("compiled", compile_model(model))):
        closure = batch_closure(net, x, y, F.cross_entropy)
        t0 = time.perf_counter()
        closure()
        first = time.perf_counter() - t0
        times, loss = [], 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            loss = float(closure())
            times.append(time.perf_counter() - t0)
        out[form] = {"median_s": statistics.median(times), "first_s": first, "loss": loss}
    return out


def summarize(data: dict) -> str:
    env = data["environment"]
    variants = [v for v in VARIANTS if v in data["rows"][0]["variants"]]  # older runs lack bf16+compile
    losses = [v for v in ("nchw", "bf16", "bf16+compile") if v in variants]
    lines = [f"## BCNN training speed on the CPU (`benchmarks/{NAME}.py`)", "",
             f"One Adam training step on a batch of {BATCH} modulation frames (2x32x32, 11 classes), median of "
             f"{data['steps']} steps after warm-up, variants interleaved; speed-up against NCHW float32 in the same "
             f"process; *loss after*: the training loss at the last timed step ({2 + data['steps']} steps from the "
             f"same initialisation), to show the variant still trains. Machine: {env['cpu']}, {env['cpu_count']} "
             f"cores, torch {env['torch']}, {env['torch_threads']} threads.", "",
             "| model | " + " | ".join(f"{v} s (speed-up)" for v in variants) + " | loss after ("
             + " / ".join(losses) + ") |",
             "|---|" + "---|" * (len(variants) + 1)]
    for r in data["rows"]:
        cells = [f"{r['variants'][v]['median_s']:.3f} ({r['variants'][v]['speedup']:.2f}x)" for v in variants]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " | "
                     + " / ".join(f"{r['variants'][v]['loss_after']:.3f}" for v in losses) + " |")
    closures = [r for r in data["rows"] if "closure" in r]
    if closures:
        lines += ["", f"SLR's loss closure ({CLOSURE_FRAMES:,} training frames in chunks of 256, eval mode, float32; "
                  "median of 3 calls after a first one, which compiles or reads torch's on-disk cache of earlier "
                  "compilations):", "",
                  "| model | eager s | compiled s (speed-up) | first compiled call s | loss eager / compiled |",
                  "|---|---|---|---|---|"]
        for r in closures:
            e, c = r["closure"]["eager"], r["closure"]["compiled"]
            lines.append(f"| {r['model']} | {e['median_s']:.2f} | {c['median_s']:.2f} "
                         f"({e['median_s'] / c['median_s']:.2f}x) | {c['first_s']:.1f} | {e['loss']:.4f} / "
                         f"{c['loss']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--render", action="store_true", help="only rebuild the table from the JSON")
    args = ap.parse_args()
    if render_only(args, NAME, summarize):
        return
    train = load_dataset("modulation", "train")
    x, y = train.images[:BATCH], train.labels[:BATCH]
    data = {"benchmark": NAME, "steps": args.steps, "environment": environment_info(), "rows": []}
    for label in args.models:
        data["rows"].append(measure(label, args.steps, x, y, train))
        print(json.dumps(data["rows"][-1]), flush=True)
    write_result(NAME, data, summarize(data))
    print(summarize(data))


if __name__ == "__main__":
    main()
