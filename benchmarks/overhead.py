"""What SLR costs: one training step with SLR's penalty vs a plain SGD step, and projection time.

* Step overhead: the same model, batch and optimizer; a plain step (forward, loss,
  backward, SGD step) against an SLR step (the same plus ``penalty()``). The two are
  interleaved and each figure is the median of many repeats, so machine noise hits
  both alike. SLR's per-round ``step()`` (two loss evaluations on its 2048-sample
  batch plus one projection) is timed apart and reported amortized over a round
  every 100 batches and once per Fashion-MNIST epoch (469 batches).
* Projection: one Euclidean projection of every conv/linear weight of a ResNet-50
  (ImageNet stem, 25.5M weights) onto each sparsity set.

    python benchmarks/overhead.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import write_result

from prunus.constraints.sparsity import project, project_global
from prunus.constraints.structures import Structure, StructureError
from prunus.environment import environment_info
from prunus.methods import SLR, batch_closure
from prunus.models import build_model
from prunus.plan.recipe import Plan, prunable_weights

CASES = [  # (model, options, input shape per sample, batch)
    ("lenet5", {}, (1, 28, 28), 128),
    ("vgg11", {"width": 0.5}, (3, 32, 32), 64),
    ("resnet20", {}, (3, 32, 32), 64),
]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_overhead(name: str, options: dict, shape: tuple, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, in_channels=shape[0], num_classes=10, **options)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    plan = Plan.uniform(model, 0.95, global_unstructured=True)
    closure_x, closure_y = torch.randn(2048, *shape), torch.randint(0, 10, (2048,))
    slr = SLR(model, plan, closure=batch_closure(model, closure_x, closure_y, F.cross_entropy))

    def plain():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def with_penalty():
        opt.zero_grad(set_to_none=True)
        (F.cross_entropy(model(x), y) + slr.penalty()).backward()
        opt.step()

    for _ in range(3):  # warm-up
        plain(), with_penalty()
    plain_t, slr_t = [], []
    for i in range(repeats):  # ABBA order: neither kind always runs first
        pair = [(plain, plain_t), (with_penalty, slr_t)]
        for fn, out in pair if i % 2 == 0 else pair[::-1]:
            out.append(_timed(fn))
    round_t = [_timed(slr.step) for _ in range(3)]
    p, s, r = statistics.median(plain_t), statistics.median(slr_t), statistics.median(round_t)
    return {
        "model": name, "options": options, "batch": batch, "input": list(shape),
        "params": sum(q.numel() for q in model.parameters()),
        "planned_weights": sum(q.numel() for _, q in plan_weights(model, plan)),
        "plain_step_s": p, "slr_step_s": s, "ratio": s / p, "slr_round_s": r,
        "ratio_with_round_every_100": (s + r / 100) / p, "ratio_with_round_every_469": (s + r / 469) / p,
        "plain_all": plain_t, "slr_all": slr_t,
    }


def plan_weights(model, plan):
    params = dict(model.named_parameters())
    return [(t.name, params[t.name]) for t in plan.resolve(model)]


def fits(spec: str, shape) -> bool:
    try:
        Structure.parse(spec).check(shape)
        return True
    except StructureError:
        return False


def projection_times(repeats: int = 3) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet50", in_channels=3, num_classes=1000, stem="imagenet")
    weights = [w.detach() for _, w in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    block, nm, pattern = ([w for w in weights if fits(spec, w.shape)] for spec in ("block:4x1", "nm:2:4", "pattern"))
    cases = {
        "unstructured 0.9 (per tensor)": lambda: [project(w, "unstructured", 0.9) for w in weights],
        "unstructured 0.9 (global)": lambda: project_global(weights, 0.9),
        "filter 0.5": lambda: [project(w, "filter", 0.5) for w in weights],
        "column 0.5": lambda: [project(w, "column", 0.5) for w in weights],
        "block:4x1 0.75": lambda: [project(w, "block:4x1", 0.75) for w in block],
        "nm:2:4": lambda: [project(w, "nm:2:4", 0.5) for w in nm],
        "pattern 0.8 (3x3 convs)": lambda: [project(w, "pattern", 0.8) for w in pattern],
    }
    out = {"model": "resnet50 (imagenet stem)", "weights": total}
    for label, fn in cases.items():
        fn()  # warm-up
        out[label] = statistics.median(_timed(fn) for _ in range(repeats))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=60)
    args = ap.parse_args()
    steps = [step_overhead(*case, repeats=args.repeats) for case in CASES]
    proj = projection_times()
    env = environment_info()
    data = {"benchmark": "overhead", "environment": env, "repeats": args.repeats, "steps": steps, "projection": proj}
    lines = [
        "## SLR overhead (`benchmarks/overhead.py`)",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads). "
        f"Median of {args.repeats} interleaved steps (alternating which runs first); SGD "
        "with momentum; plan: global unstructured 95% of all but first and last layer.",
        "",
        ("| model | batch | plain SGD step, ms | SLR step (with penalty), ms | ratio | "
         "SLR round, ms | ratio incl. a round every 100 batches | ... every 469 batches |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        label = s["model"] + (f" (width {s['options']['width']})" if "width" in s["options"] else "")
        lines.append(
            f"| {label} | {s['batch']} | {1e3 * s['plain_step_s']:.2f} | "
            f"{1e3 * s['slr_step_s']:.2f} | {s['ratio']:.3f}x | {1e3 * s['slr_round_s']:.0f} | "
            f"{s['ratio_with_round_every_100']:.3f}x | {s['ratio_with_round_every_469']:.3f}x |"
        )
    worst = max(s["ratio"] for s in steps)
    lines += ["", (f"Target: SLR step at most 1.15x a plain step: worst case {worst:.3f}x -> "
                   f"**{'met' if worst <= 1.15 else 'NOT met'}**."), ""]
    lines += [f"Projection of all {proj['weights']:,} conv/linear weights of a ResNet-50 (median of 3):", "",
              "| set | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in proj.items() if isinstance(v, float)]
    write_result("overhead", data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
