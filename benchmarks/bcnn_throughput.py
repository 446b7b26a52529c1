"""Throughput of the BCNN engine on 20x structurally pruned complex NIN and ResNet-18, 32x32x3 inputs (issue 7).

For each model (``cnin``, ``cresnet18``; 3x32x32 inputs, 10 classes):

1. Prune whole complex filters (real and imaginary rows together) with prunus' own machinery:
   ``Plan.uniform(model, ratio, "filter")`` plus, for NIN, the full-precision first layer, projected
   per coupled group by ``prunus.plan.coupling.project_coupled`` (ResNet's first layer is coupled to the
   first stage's residual stream and is pruned with it).  The ratio is the smallest (on a 0.005
   grid) whose model keeps at most 1/20 of the dense conv/linear weights, counted as **live
   weights**: weights of live filters that read live input channels, in every conv and linear
   layer, first and last included (``BinaryEngine.live_weights``).  Weights that read a pruned
   channel are not counted: that channel is a constant, and its contribution becomes an exact
   constant correction.  The masked model's nonzero count is recorded too.
2. Without ``--checkpoint`` the weights are random (seeded) and BN statistics come from one
   training-mode pass on noise, so thresholds are not trivial: throughput does not depend on the
   values.  ``--checkpoint nin=PATH`` (or ``resnet18=PATH``) times a trained, pruned model instead.
3. Check bit-exactness first: engine logits == the PyTorch forward (``torch.equal``) on random
   batches of 1 and 37 images; the PyTorch fp32 baseline of the physically pruned model too.
4. Time, in one process, at batch sizes 1, 64 and 1024, on ``--threads`` threads (engine and
   PyTorch alike): the engine (frames/s, median and p90 latency, bit-MAC/s and the fraction of the
   popcount ceiling measured on the machine), PyTorch fp32 inference of the *physically pruned*
   model (live filters only; ``backend="fp32"``; the better of 1 and ``--threads`` PyTorch threads),
   and PyTorch fp32 of the masked model as trained.
   Median of up to ``--repeats`` runs after ``--warmup`` runs (fewer when a configuration takes
   longer than ``--max-seconds``).
5. Profile the engine on one thread (seconds per fused step, 64 images): shares of time per layer.
6. Chunk sweep: the engine at batch 64 and 1024 with ``--chunk-sweep`` images per chunk (default 16, 32, 64),
   the chunk sizes interleaved run by run, so that drift of the machine hits them alike; the evidence for the
   engine's default chunk (``prunus.bcnn.engine.runner.DEFAULT_CHUNK``).

    python benchmarks/bcnn_throughput.py [--models nin resnet18] [--threads 2] [--checkpoint nin=PATH]
    python benchmarks/bcnn_throughput.py --render            # rebuild the table from the JSON
    python benchmarks/bcnn_throughput.py --tag avx2 --checkpoint nin=PATH   # another machine: a table of its own
    python benchmarks/bcnn_throughput.py --smoke --out /tmp/bcnn.json   # seconds: a check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS, write_result

from prunus.bcnn.engine import compile_engine
from prunus.bcnn.engine.bench import popcount_ceiling, time_call
from prunus.bcnn.engine.runner import DEFAULT_CHUNK
from prunus.bcnn.pruning import filter_plan, prune_to_live_compression, weight_counts
from prunus.environment import environment_info
from prunus.models import build_model
from prunus.models.loading import load_model

NAME = "bcnn_throughput"
# the same table for trained checkpoints (--checkpoint), beside the random-weight one
TRAINED = "bcnn_throughput_trained"
MODELS = {"nin": "cnin", "resnet18": "cresnet18", "nin-binstem": "cnin", "nin-int8stem": "cnin", "nin-full": "cnin",
          "nin-full-int8stem": "cnin"}
#: model options per key: NIN with a binary first layer too, or an int8 one (issue 19: the full-precision stem is
#: half the time; the int8 one runs on the CPU's 8-bit dot products, prunus.bcnn.int8)
OPTIONS = {"nin-binstem": {"fp_first": False}, "nin-int8stem": {"int8_first": True}}
LABELS = {"nin-binstem": "cnin, binary first layer", "nin-int8stem": "cnin, int8 first layer",
          "nin-full-int8stem": "cnin, int8 first layer"}
#: the random-weight models are at the registry's (full) width, so ``nin-full`` only names a second trained NIN
#: checkpoint (``--checkpoint nin-full=PATH`` beside a narrower ``nin=PATH``); a checkpoint's label gives its width
RANDOM_MODELS = ("nin", "resnet18", "nin-binstem", "nin-int8stem")
#: FPGA frames/s (Alveo U280)
TARGETS = {"nin": 5882.0, "resnet18": 4938.0, "nin-binstem": 5882.0, "nin-int8stem": 5882.0, "nin-full": 5882.0,
           "nin-full-int8stem": 5882.0}
STRETCH = {"nin": 20000.0, "nin-binstem": 20000.0, "nin-int8stem": 20000.0, "nin-full": 20000.0,
           "nin-full-int8stem": 20000.0}
BATCHES = (1, 64, 1024)
COMPRESSION = 20.0
SIZE, CIN, CLASSES = 32, 3, 10


# -- the pruned models ---------------------------------------------------------------------------------------------


def calibrate_bn(model: torch.nn.Module, seed: int) -> None:
    """One training-mode pass on noise: realistic BN statistics for a random model (as ``prunus bcnn bench`` does)."""
    model.train()
    with torch.no_grad():
        model(torch.randn(16, CIN, SIZE, SIZE, generator=torch.Generator().manual_seed(seed + 1)))
    model.eval()


def pruned_model(key: str, seed: int) -> tuple[torch.nn.Module, dict]:
    """A random ``key`` model pruned by whole filters to at most 1/20 of its live weights (smallest such ratio)."""
    torch.manual_seed(seed)
    dense = build_model(MODELS[key], in_channels=CIN, num_classes=CLASSES, **OPTIONS.get(key, {}))
    if dense.int8_first:  # an int8 first layer needs its input scale before the pruning traces the model
        calibrate_bn(dense, seed)
    example = torch.randn(2, CIN, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    model, counts = prune_to_live_compression(dense, lambda ratio: filter_plan(dense, ratio), COMPRESSION,
                                              example, prepare=lambda m: calibrate_bn(m, seed))
    return model, {**counts, "source": "random weights (seeded), BN statistics from noise",
                   "stem_pruned": MODELS[key] == "cnin"}


def checkpoint_model(path: str) -> tuple[torch.nn.Module, dict]:
    """A trained, pruned BCNN as it was saved; its own input channels (2 for the modulation frames)."""
    model, ckpt = load_model(path)
    model.eval()
    engine = compile_engine(model, SIZE, backend="fp32")
    return model, {**weight_counts(model, engine), "ratio": None, "source": f"checkpoint {ckpt.path}",
                   "width": ckpt.meta["model"].get("options", {}).get("width", 1.0),
                   "in_channels": ckpt.meta["model"]["in_channels"],
                   "dataset": (ckpt.meta.get("dataset") or {}).get("name")}


# -- timing ----------------------------------------------------------------------------------------------------------


def time_fn(fn, batch: int, repeats: int, warmup: int, max_seconds: float) -> dict:
    """``prunus.bcnn.engine.bench.time_call`` as a row of the table (past ``max_seconds`` it stops after 3 calls)."""
    t = time_call(fn, repeats, warmup, batch, max_seconds=max_seconds)
    return {"batch_size": batch, "runs": t.repeats, "median_ms": t.median_ms, "min_ms": t.min_ms, "p90_ms": t.p90_ms,
            "fps": t.fps}


def chunk_sweep(model: torch.nn.Module, args, cin: int, gen) -> list[dict]:
    """Engine frames/s per chunk size at batch 64 and 1024 (``args.threads`` threads), interleaved: each run times
    every chunk size once, so that a slower minute of the machine falls on all of them; median of the runs."""
    engines = {c: compile_engine(model, SIZE, threads=args.threads, chunk=c) for c in args.chunk_sweep}
    out = []
    for b in [b for b in (64, 1024) if b in args.batches]:
        x = torch.randn(b, cin, SIZE, SIZE, generator=gen)
        with torch.inference_mode():
            ref = model(x)
            for c, engine in engines.items():
                if not torch.equal(engine(x), ref):
                    raise SystemExit(f"chunk {c}: not bit-exact at batch {b}; refusing to time a wrong engine")
            seconds: dict[int, list[float]] = {c: [] for c in engines}
            for _ in range(args.repeats):
                for c, engine in engines.items():
                    t0 = time.perf_counter()
                    engine(x)
                    seconds[c].append(time.perf_counter() - t0)
        for c, ts in seconds.items():
            out.append({"chunk": c, "batch_size": b, "runs": len(ts), "fps": b / statistics.median(ts)})
    return out


def torch_backend_timing(model: torch.nn.Module, device: str, batch: int, timing: tuple, gen, cin: int = CIN) -> dict:
    """The engine's PyTorch backend on ``device`` (its CUDA path on a GPU): logits equal to the model's on a batch of
    37, then frames/s at ``batch`` (synchronised, so the time is the GPU's work, not the launch; the input starts
    on the host, as a caller's would). A path that is not bit-exact is recorded as such and not timed."""
    engine = compile_engine(model, SIZE, backend="torch", device=device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    x = torch.randn(37, cin, SIZE, SIZE, generator=gen)
    with torch.inference_mode():
        if not torch.equal(engine(x).cpu(), model(x)):
            return {"device": name, "exact_b37": False, "fps": None}
        xb = torch.randn(batch, cin, SIZE, SIZE, generator=gen)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

        def call():
            engine(xb)
            sync()

        row = time_fn(call, batch, *timing)
    return {"device": name, "exact_b37": True, **row}


def run_model(key: str, args, ceiling: float) -> dict:
    if key in args.checkpoint:
        model, pruning = checkpoint_model(args.checkpoint[key])
    else:
        model, pruning = pruned_model(key, args.seed)
    cin = pruning.get("in_channels", CIN)
    engine = compile_engine(model, SIZE, threads=args.threads, chunk=args.chunk)
    baseline = compile_engine(model, SIZE, backend="fp32")
    gen = torch.Generator().manual_seed(args.seed + 2)
    exact = {}
    for b in (1, 37):
        x = torch.randn(b, cin, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            ref = model(x)
            exact[f"engine_b{b}"] = bool(torch.equal(engine(x), ref))
            exact[f"fp32_pruned_b{b}"] = bool(torch.equal(baseline(x), ref))
    if not all(exact.values()):
        raise SystemExit(f"{key}: not bit-exact ({exact}); refusing to time a wrong engine")
    chunked = {b: engine.runner.supports(b) for b in args.batches}

    x64 = torch.randn(64, cin, SIZE, SIZE, generator=gen)
    engine.profile(x64)  # warm
    best: dict[str, float] = {}
    for _ in range(args.profile_runs):
        times = engine.profile(x64)[1]
        for step, t in times.items():
            best[step] = min(best.get(step, float("inf")), t)
    total = sum(best.values())
    profile = [{"step": s, "us_per_image": 1e6 * t / 64, "share": t / total}
               for s, t in sorted(best.items(), key=lambda kv: -kv[1])]

    rows = []
    torch_threads = torch.get_num_threads()
    timing = (args.repeats, args.warmup, args.max_seconds)
    try:
        for b in args.batches:
            x = torch.randn(b, cin, SIZE, SIZE, generator=gen)
            row = {"batch_size": b, "chunked": chunked[b]}
            with torch.inference_mode():
                torch.set_num_threads(args.threads)
                row["engine"] = time_fn(lambda: engine(x), b, *timing)
                row["masked"] = time_fn(lambda: model(x), b, *timing)
                # the fair baseline gets PyTorch's better thread setting (small convs often run best on one)
                per_threads = {}
                for t in sorted({1, args.threads}):
                    torch.set_num_threads(t)
                    per_threads[t] = time_fn(lambda: baseline(x), b, *timing)
                best = max(per_threads, key=lambda t: per_threads[t]["fps"])
                row["fp32_pruned"] = {**per_threads[best], "threads": best,
                                      "fps_by_threads": {str(t): v["fps"] for t, v in per_threads.items()}}
            row["engine"]["bit_macs_per_s"] = row["engine"]["fps"] * engine.bit_macs
            row["engine"]["ceiling_fraction"] = row["engine"]["bit_macs_per_s"] / ceiling
            rows.append(row)
            print(json.dumps({"model": key, **row}), flush=True)
    finally:
        torch.set_num_threads(torch_threads)
    sweep = chunk_sweep(model, args, cin, gen) if args.chunk_sweep else []
    gpu = (torch_backend_timing(model, "cuda", max(args.batches), timing, gen, cin) if torch.cuda.is_available()
           else None)
    label = LABELS.get(key, MODELS[key]) + (f" (width {pruning['width']:g})" if "width" in pruning else "")
    return {"model": key, "cuda": gpu, "registry_name": label, "pruning": pruning,
            "exact": exact, "first_layer": engine.first_layer, "chunk": engine.runner.chunk, "chunk_sweep": sweep,
            "bit_macs_per_image": engine.bit_macs, "layers": [layer.to_dict() for layer in engine.layers()],
            "single_thread_profile": {"images": 64, "runs": args.profile_runs, "us_per_image": 1e6 * total / 64,
                                      "steps": profile},
            "timings": rows}


# -- the table -------------------------------------------------------------------------------------------------------


def _cuda_cell(m: dict) -> str:
    if "cuda" not in m:
        return "not measured (run from before the CUDA pass)"
    gpu = m["cuda"]
    if gpu is None:
        return "not measured: no GPU here"
    if not gpu["exact_b37"]:
        return f"NOT bit-exact on {gpu['device']}: not timed"
    return f"{gpu['fps']:,.0f} ({gpu['device']})"


def _subject(data: dict) -> str:
    if any("in_channels" in m["pruning"] for m in data["models"]):
        subject = "trained 20x-pruned checkpoints (`--checkpoint`)"
    else:
        subject = "20x structurally pruned complex NIN and ResNet-18"
    return subject + (f", on {data['environment']['cpu']}" if data.get("tag") else "")


def result_name(trained: bool, tag: str | None) -> str:
    """The results file's name: a run tagged ``--tag`` (another machine) gets a file and table of its own, so it
    never replaces the reference run's."""
    return (TRAINED if trained else NAME) + (f"_{tag}" if tag else "")


def _inputs_text(data: dict) -> str:
    """The inputs timed: the random models' 3x32x32 with 10 classes, or a trained checkpoint's own."""
    trained = [m for m in data["models"] if "in_channels" in m["pruning"]]
    if not trained:
        return "3x32x32 inputs, 10 classes."
    return " ".join(f"{m['registry_name']}: a trained checkpoint, {m['pruning']['in_channels']}x32x32 inputs "
                    f"({m['pruning'].get('dataset') or 'its dataset'}), "
                    f"{m['pruning']['dense_weights']:,} dense weights"
                    + (" (the seed paper's full width, the width of the FPGA design)." if m["pruning"].get("width") == 1
                       else " (the FPGA figure is for the full-width model, so its 'target' is a reference, not a "
                       "like-for-like comparison).") for m in trained)


def _sources_text(data: dict) -> str:
    """Where each model's weights came from (one phrase where they all share it: the random-weight table)."""
    sources = [(m["registry_name"], m["pruning"]["source"]) for m in data["models"]]
    if len({s for _, s in sources}) <= 1:
        return sources[0][1] if sources else "-"
    return "; ".join(f"{name}: {source}" for name, source in sources)


def summarize(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"## BCNN engine throughput, {_subject(data)} (`benchmarks/{NAME}.py`)",
        "",
        f"{_inputs_text(data)} Whole complex filters pruned (real and imaginary rows together) by "
        "`Plan.uniform(..., 'filter')` + `project_coupled` (NIN: the full-precision first layer too) at the smallest "
        "ratio (0.005 grid) that keeps at most 1/20 of the conv/linear weights, counted as **live weights**: "
        "weights of live filters reading live input channels, in every conv and linear layer including the first "
        "and last "
        "(weights reading a pruned channel, a constant, are folded into exact corrections and not counted). "
        f"Weights: {_sources_text(data)}; throughput does not depend on "
        "the values. Engine logits checked equal (`torch.equal`) to the PyTorch forward before timing. "
        f"{data['threads']} thread(s) for the engine and for PyTorch; median of {data['repeats']} runs (fewer, but at "
        f"least 3, for a configuration past {data['max_seconds']:g} s) after {data['warmup']} warm-up(s), one process. "
        "*fp32 pruned*: PyTorch float32 of the physically pruned model (live filters only), the better of 1 and "
        f"{data['threads']} PyTorch threads; *masked*: the model as pruned (zeros in place). Popcount ceiling "
        f"{data['ceiling_bit_macs_per_s'] / 1e9:.0f} Gbit-MAC/s ({data['threads']} thread(s)). "
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, numba {data.get('numba', '?')}. "
        "*target*: the frames/s of the seed paper's FPGA design (Xilinx Alveo U280: 5882 for complex NIN, 4938 for "
        "complex ResNet-18), quoted from the paper, not measured here; the stretch goal is this project's. "
        "*CUDA engine*: the engine's PyTorch backend on a GPU (bit-exact check first, synchronised timing) at the "
        "largest batch, where the machine has one.",
        "",
        "| model | live weights (compression) | ratio | bit-MACs/img | batch | engine frames/s "
        "| latency ms (median / p90) | Gbit-MAC/s (of ceiling) | fp32 pruned frames/s | masked frames/s "
        "| vs fp32 pruned | vs masked | target | CUDA engine frames/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in data["models"]:
        pr = m["pruning"]
        for row in m["timings"]:
            e, f, k = row["engine"], row["fp32_pruned"], row["masked"]
            target = TARGETS[m["model"]]
            verdict = "-"
            if row["batch_size"] == max(r["batch_size"] for r in m["timings"]):
                verdict = f"{target:.0f}: {'met' if e['fps'] >= target else 'not met'}"
                stretch = STRETCH.get(m["model"])
                if stretch:
                    verdict += f"; stretch {stretch:.0f}: {'met' if e['fps'] >= stretch else 'not met'}"
            ratio = f"{pr['ratio']:.3f}" if pr.get("ratio") is not None else "checkpoint"
            cuda = "-"
            if row["batch_size"] == max(r["batch_size"] for r in m["timings"]):
                cuda = _cuda_cell(m)
            lines.append(
                f"| {m['registry_name']} | {pr['live_weights']:,} of {pr['dense_weights']:,} "
                f"({pr['compression']:.1f}x) | "
                f"{ratio} | {m['bit_macs_per_image'] / 1e6:.2f} M | {row['batch_size']} | {e['fps']:,.0f} | "
                f"{e['median_ms']:.3f} / {e['p90_ms']:.3f} | {e['bit_macs_per_s'] / 1e9:.0f} "
                f"({100 * e['ceiling_fraction']:.1f}%) | {f['fps']:,.0f} | {k['fps']:,.0f} | "
                f"{e['fps'] / f['fps']:.1f}x | {e['fps'] / k['fps']:.1f}x | {verdict} | {cuda} |"
            )
    lines += ["", "Where the engine's time goes (one thread, 64 images, best of "
              f"{data['models'][0]['single_thread_profile']['runs'] if data['models'] else 0} runs per step; "
              "`stem` = the first layer (a full-precision one in PyTorch, an int8 one on oneDNN's 8-bit kernel) + its "
              "BN/sign/pack kernel):", ""]
    for m in data["models"]:
        prof = m["single_thread_profile"]
        top = ", ".join(f"{s['step']} {100 * s['share']:.0f}%" for s in prof["steps"][:6])
        first = f" (first layer: {m['first_layer']})" if "first_layer" in m else ""
        lines.append(f"* {m['registry_name']}{first}: {prof['us_per_image']:.0f} us/image on one thread; {top}")
    return "\n".join(lines + _sweep_lines(data)) + "\n"


def _sweep_lines(data: dict) -> list[str]:
    """Frames/s by images per chunk (runs of one model, the sizes interleaved); the table's chunk marked."""
    swept = [m for m in data["models"] if m.get("chunk_sweep")]
    if not swept:
        return []
    chunks = sorted({r["chunk"] for m in swept for r in m["chunk_sweep"]})
    runs = swept[0]["chunk_sweep"][0]["runs"]
    lines = ["", f"Engine frames/s by images per chunk ({data['threads']} thread(s), median of {runs} runs, the chunk "
             f"sizes interleaved run by run; * = the chunk of the table above, {data.get('chunk', 16)}):", "",
             "| model | batch | " + " | ".join(f"chunk {c}" for c in chunks) + " | best |",
             "|---|---|" + "---|" * (len(chunks) + 1)]
    for m in swept:
        for b in sorted({r["batch_size"] for r in m["chunk_sweep"]}):
            fps = {r["chunk"]: r["fps"] for r in m["chunk_sweep"] if r["batch_size"] == b}
            cells = [f"{fps[c]:,.0f}{'*' if c == m.get('chunk') else ''}" if c in fps else "-" for c in chunks]
            best = max(fps, key=fps.get)
            lines.append(f"| {m['registry_name']} | {b} | " + " | ".join(cells) + f" | {best} |")
    return lines


# -- main ------------------------------------------------------------------------------------------------------------


def _checkpoints(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, path = item.partition("=")
        if key not in MODELS or not path:
            raise SystemExit(f"--checkpoint expects KEY=PATH with KEY one of {', '.join(MODELS)}, got {item!r}")
        out[key] = path
    return out


def _tag(text: str) -> str:
    if not text.replace("-", "").isalnum() or not text.islower():
        raise argparse.ArgumentTypeError(f"--tag {text!r}: use lower-case letters, digits and '-' (it names a file)")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(RANDOM_MODELS), choices=list(MODELS),
                    help="nin-full(-int8stem): a second trained NIN, with --checkpoint nin-full=PATH only")
    ap.add_argument("--checkpoint", action="append", default=[],
                    help="KEY=PATH with a KEY of --models (a trained, pruned binary model); repeatable")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunk", type=int, help=f"images per chunk of the engine (default {DEFAULT_CHUNK})")
    ap.add_argument("--chunk-sweep", type=int, nargs="*", default=[16, 32, 64],
                    help="chunk sizes timed side by side at batch 64 and 1024 (none: skip)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="per configuration, after 3 runs")
    ap.add_argument("--profile-runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON (and the .md next to it) here instead of benchmarks/results, "
                                  "without touching BENCHMARKS.md")
    ap.add_argument("--tag", type=_tag, help="a name for this machine (e.g. avx2): the results go to NAME_TAG.json "
                                          "and a table of their own beside the reference run's")
    ap.add_argument("--smoke", action="store_true", help="tiny batches and repeats: only checks that it runs")
    ap.add_argument("--render", action="store_true", help="only rebuild the table from the JSON")
    args = ap.parse_args()
    if args.render:
        for path in sorted(RESULTS.glob(f"{NAME}*.json")):
            data = json.loads(path.read_text())
            write_result(path.stem, data, summarize(data))
        return
    if args.smoke:
        args.batches, args.repeats, args.warmup, args.max_seconds, args.profile_runs = [1, 8, 64], 2, 1, 1.0, 1
    args.checkpoint = _checkpoints(args.checkpoint)
    for key in ("nin-full", "nin-full-int8stem"):
        if key in args.models and key not in args.checkpoint:
            raise SystemExit(f"--models {key} times a trained checkpoint: give --checkpoint {key}=PATH (the "
                             "random-weight nin is already at full width)")
    import numba

    t0 = time.perf_counter()
    ceiling = popcount_ceiling(args.threads)["bit_macs_per_s"]
    data = {"benchmark": NAME, "threads": args.threads, "chunk": args.chunk or DEFAULT_CHUNK, "repeats": args.repeats,
            "warmup": args.warmup, "max_seconds": args.max_seconds, "seed": args.seed, "smoke": args.smoke,
            "ceiling_bit_macs_per_s": ceiling, "environment": environment_info(), "numba": numba.__version__,
            "tag": args.tag, "models": []}
    for key in args.models:
        data["models"].append(run_model(key, args, ceiling))
    data["wall_seconds"] = time.perf_counter() - t0
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(data, indent=1) + "\n")
        out.with_suffix(".md").write_text(summarize(data))
        print(summarize(data))
        return
    write_result(result_name(bool(args.checkpoint), args.tag), data, summarize(data))
    print(summarize(data))


if __name__ == "__main__":
    main()
