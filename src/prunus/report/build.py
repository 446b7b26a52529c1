"""The report of several runs: every measurement of each run and how each compares with the dense run.

:func:`build_report` reads the runs (:mod:`prunus.report.collect`), measures each final model
(:mod:`prunus.report.measure`) and adds, for every run, its comparison with the dense one: accuracy
difference, compression by nonzero (and live) weights, how much smaller its smallest file is, and the
speed-up at each batch size.  The result is plain JSON (``Report.data``, what ``--json`` prints) plus
the sparsity maps the page draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunus import __version__
from prunus.data import load_dataset
from prunus.environment import environment_info
from prunus.errors import ConfigError
from prunus.models.loading import load_model
from prunus.report import measure
from prunus.report.collect import RunDir, read_runs
from prunus.train.distributed import pick_device

#: the page's sections, in order (each is an element id in the HTML and a key of what it shows)
SECTIONS = ("summary", "accuracy", "layers", "size", "latency", "sparsity", "curves", "residuals", "privacy")


@dataclass(frozen=True)
class ReportOptions:
    """What to measure and where the data is."""

    latency: bool = True
    repeats: int = 10  # timed runs per batch size (median reported)
    onnx: bool = True
    data_dir: str | None = None
    download: bool = False
    device: str | None = None


@dataclass
class Report:
    data: dict[str, Any]  # JSON-able: every number of the report
    grids: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # run -> layer -> share of nonzeros

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.data["runs"]


def common_dataset(runs: list[RunDir]) -> dict[str, Any]:
    """The dataset every run was trained on (the dense run's); runs on another one are one ConfigError line."""
    dense = runs[0]
    if "name" not in dense.dataset:
        raise ConfigError(f"run {dense.path}: its model ({dense.checkpoint}) does not record its dataset")
    for r in runs[1:]:
        if ((r.dataset.get("name"), r.dataset.get("image_size"))
                != (dense.dataset["name"], dense.dataset.get("image_size"))):
            raise ConfigError(f"run {r.path} is on {r.dataset.get('name')} ({r.dataset.get('image_size')} px) but the "
                              f"dense run {dense.path} on {dense.dataset['name']} "
                              f"({dense.dataset.get('image_size')} px); "
                              "a report compares runs of one dataset")
    return dense.dataset


def build_report(paths: list[str | Path], options: ReportOptions = ReportOptions()) -> Report:
    """Measure every run of ``paths`` (run directories, and audit directories of their models)."""
    runs = read_runs(paths)
    dataset = common_dataset(runs)
    test_set = load_dataset(dataset["name"], "test", data_dir=options.data_dir, download=options.download,
                            image_size=dataset.get("image_size"))
    device = pick_device(options.device)
    example = test_set.images[:1]
    entries, deployed, grids = [], {}, {}
    for run in runs:
        model, _ = load_model(run.checkpoint)
        model.eval()
        entry, deployed[run.name] = _measure(run, model, test_set, example, options, device)
        grids[run.name] = measure.sparsity_grids(model)
        entries.append(entry)
    timing = None
    if options.latency:
        timing = measure.latencies({k: d.model for k, d in deployed.items()}, example, device, options.repeats)
    for entry in entries:
        entry["latency"] = timing[entry["name"]] if timing else None
        entry["vs_dense"] = compare(entry, entries[0])
    data = {
        "prunus": __version__, "environment": environment_info(), "sections": list(SECTIONS),
        "dataset": {"name": dataset["name"], "image_size": dataset.get("image_size"), "test_examples": len(test_set)},
        "dense": entries[0]["name"],
        "latency": {"measured": options.latency, "batch_sizes": list(measure.LATENCY_BATCHES),
                    "repeats": options.repeats, "device": str(device), "threads": torch.get_num_threads()},
        "runs": entries,
    }
    return Report(data, grids)


def _measure(run: RunDir, model, test_set, example: torch.Tensor, options: ReportOptions, device: torch.device
             ) -> tuple[dict[str, Any], measure.Deployed]:
    """Every measurement of one run but latency (measured for all runs together)."""
    layers = measure.layer_counts(model, example)
    deployed = measure.deploy(model, example)
    files, files_note = measure.file_sizes(run.checkpoint, run.pcz, deployed.model, example, options.onnx)
    accuracy = measure.accuracy_of(model.to(device), test_set, device)
    model.to("cpu")
    entry = {
        "name": run.name, "path": str(run.path), "kind": run.kind, "detail": run.detail,
        "checkpoint": str(run.checkpoint), "init": str(run.init) if run.init else None,
        "accuracy": accuracy, "recorded_accuracy": run.recorded,
        "layers": layers,
        "totals": {"parameters": sum(p.numel() for p in model.parameters()),
                   "parameters_nonzero": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
                   "weights": sum(r["parameters"] for r in layers), "nonzeros": sum(r["nonzeros"] for r in layers),
                   "live": sum(r["live"] for r in layers)},
        "macs": measure.macs(model, example), "deployed": deployed.to_dict(),
        "files": files, "files_note": files_note,
        "curves": run.curves, "method_history": run.method_history, "audit": run.audit,
    }
    return entry, deployed


def smallest_file(files: dict[str, int | None]) -> tuple[str, int]:
    """The smallest file the run has or would have: (kind, bytes)."""
    present = {k: v for k, v in files.items() if v is not None}
    kind = min(present, key=present.get)
    return kind, present[kind]


def compare(entry: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """``entry`` against the dense run: accuracy difference (points), compression by nonzero and live weights
    (dense's / this run's), size ratio (dense's safetensors / this run's smallest file) and speed-up per batch."""
    kind, size = smallest_file(entry["files"])
    out = {
        "accuracy_delta": entry["accuracy"]["test"] - dense["accuracy"]["test"],
        "compression": dense["totals"]["nonzeros"] / max(entry["totals"]["nonzeros"], 1),
        "live_compression": dense["totals"]["live"] / max(entry["totals"]["live"], 1),
        "smallest_file": kind, "smallest_file_bytes": size,
        "size_ratio": dense["files"]["safetensors"] / size,
        "speedup": None,
    }
    if entry.get("latency") and dense.get("latency"):
        out["speedup"] = {b: dense["latency"][b]["median_ms"] / lat["median_ms"] for b, lat in entry["latency"].items()}
    return out
