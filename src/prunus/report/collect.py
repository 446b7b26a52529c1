"""What the run directories given to ``prunus report`` hold, read without computing anything.

Each run (``prunus train``, ``prune``, ``quantize`` or ``defend``; or a checkpoint directory, such as the smaller
model ``prunus surgery`` writes) is read into a :class:`RunDir`: the
checkpoint of its final model, what kind of run it is, the checkpoint it started from, its training
curves (every phase's ``metrics.jsonl``), the method's per-round history and its compressed file.  An
audit directory (``prunus audit --out``) given among the runs is attached to the run whose model it
audited.  The dense run the others are compared with is found here too (:func:`dense_index`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunus.errors import CheckpointError
from prunus.io import CHECKPOINT_DIR, META_FILE, latest_checkpoint

#: subdirectories holding a training phase's metrics.jsonl, in the order the jobs run them ("" = the run itself)
PHASES = ("", "dense", "train", "prune", "method", "retrain", "finetune")
#: where a run keeps its final model, most final first: defend, quantize, prune (retrained, else hard-pruned),
#: train ("": the run's checkpoints/, or the directory is a checkpoint itself)
MODEL_PLACES = ("final", "quantized", "retrain", "hard-pruned", "")
#: accuracies a job recorded while it ran (test set, %), shown beside the one measured for the report
RECORDED = {"dense_accuracy": "dense (input)", "input_accuracy": "input", "hard_pruned_accuracy": "hard-pruned",
            "hard_quantized_accuracy": "hard-quantized", "final_accuracy": "final"}


@dataclass
class RunDir:
    """One run directory as ``prunus report`` reads it."""

    path: Path
    name: str
    kind: str  # train, prune, quantize, defend, or surgery (a checkpoint directory `prunus surgery` wrote)
    detail: str  # the method, scheme or defense, e.g. "slr" or "fixed:4 (slr)"
    checkpoint: Path  # the run's final model
    init: Path | None  # the checkpoint the run started from (None: trained from scratch)
    dataset: dict[str, Any]
    curves: list[dict[str, Any]]  # [{"phase": name, "epochs": [metrics.jsonl records]}]
    method_history: list[dict[str, Any]]  # per round: round, residual, distance (those recorded)
    recorded: dict[str, float]  # accuracies the job recorded, by RECORDED's labels
    pcz: Path | None  # the compressed model file of a quantize run
    audit: dict[str, Any] | None = field(default=None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON ({e}); the run directory is damaged") from None


def _model_checkpoint(path: Path) -> Path | None:
    """The run's final model: the first of MODEL_PLACES holding a complete checkpoint."""
    for place in MODEL_PLACES:
        d = path / place if place else path
        if (d / CHECKPOINT_DIR).is_dir():
            found = latest_checkpoint(d)
            if found is not None:
                return found
        elif (d / META_FILE).is_file():  # a checkpoint directory, e.g. what `prunus surgery --out` writes
            return d
    return None


def _kind(path: Path, results: dict[str, Any], config: dict[str, Any], meta: dict[str, Any]) -> tuple[str, str]:
    if "surgery" in meta:
        return "surgery", f"{meta['surgery'].get('channels_removed', '?')} channels removed"
    if "defense" in config or "split" in results:
        defense = (results.get("config") or config.get("defense") or {}).get("defense", "?")
        method = (results.get("config") or {}).get("method")
        return "defend", defense + (f" ({method})" if defense in ("prune", "mcmia") and method else "")
    if "scheme" in results or (path / "model.pcz").is_file():
        return "quantize", f"{results.get('scheme', '?')} ({(results.get('config') or {}).get('method', '?')})"
    if "hard_pruned_accuracy" in results or (path / "hard-pruned").is_dir():
        return "prune", str((results.get("config") or {}).get("method", "?"))
    return "train", str((config.get("config") or {}).get("model", ""))


def _curves(path: Path) -> list[dict[str, Any]]:
    curves = []
    for phase in PHASES:
        f = (path / phase if phase else path) / "metrics.jsonl"
        if f.is_file():
            try:
                records = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{f} cannot be read ({e}); the run directory is damaged") from None
            if records:
                curves.append({"phase": phase or "train", "epochs": records})
    return curves


def _method_history(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each round's number, residual and distance to the constraint set (the keys a method recorded)."""
    rounds = []
    for i, r in enumerate(results.get("method_history") or [], 1):
        kept = {k: float(r[k]) for k in ("residual", "distance") if isinstance(r.get(k), (int, float))}
        if kept:
            rounds.append({"round": int(r.get("round", i)), **kept})
    return rounds


def read_run(path: str | Path) -> RunDir:
    """Read one run directory; a missing or unrecognisable one is one :class:`CheckpointError` line."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory {path} does not exist")
    checkpoint = _model_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"{path} is not a prunus run directory: it holds no complete checkpoint "
                              "(checkpoints/, final/, quantized/, retrain/, hard-pruned/ or a checkpoint itself)")
    meta = _read_json(checkpoint / META_FILE)
    results = _read_json(path / "results.json") if (path / "results.json").is_file() else {}
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    kind, detail = _kind(path, results, config, meta)
    init = meta.get("init")
    recorded = {label: float(results[k]) for k, label in RECORDED.items() if isinstance(results.get(k), (int, float))}
    if results.get("retrain_accuracy"):
        recorded["retrained"] = float(results["retrain_accuracy"][-1])
    pcz = path / "model.pcz"
    return RunDir(path=path, name=path.name, kind=kind, detail=detail, checkpoint=checkpoint,
                  init=Path(init) if init else None, dataset=meta.get("dataset") or {}, curves=_curves(path),
                  method_history=_method_history(results), recorded=recorded, pcz=pcz if pcz.is_file() else None)


def is_audit(path: str | Path) -> bool:
    """True for a ``prunus audit`` output directory (its report.json lists attacks)."""
    report = Path(path) / "report.json"
    return report.is_file() and "attacks" in (_read_json(report) or {})


def attach_audit(path: Path, runs: list[RunDir]) -> None:
    """Give the audit in ``path`` to the run whose final model it audited."""
    report = _read_json(path / "report.json")
    audited = Path(report["checkpoint"]).resolve()
    owner = next((r for r in runs if r.checkpoint.resolve() == audited), None)
    if owner is None:
        raise CheckpointError(f"audit {path} audited {report['checkpoint']}, which is not the final model of any "
                              "run given; add that run's directory to the command")
    if owner.audit is not None:
        raise CheckpointError(f"run {owner.path} has two audits ({owner.audit['path']} and {path}); give one")
    owner.audit = {"path": str(path), "accuracy": report.get("accuracy"), "defense": report.get("defense"),
                   "attacks": [{k: a[k] for k in ("attack", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "members",
                                                  "nonmembers", "fpr_resolution", "roc")} for a in report["attacks"]]}


def read_runs(paths: list[str | Path]) -> list[RunDir]:
    """Read every run (dense first, see :func:`dense_index`), with the audits among ``paths`` attached.

    Every path is checked before anything is measured, so a mistake costs nothing.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_dir():
            raise CheckpointError(f"run directory {p} does not exist")
    audits = [p for p in paths if is_audit(p)]
    runs = [read_run(p) for p in paths if p not in audits]
    if not runs:
        raise CheckpointError("only audit directories were given; add the run directories they audited")
    _name_uniquely(runs)
    for a in audits:
        attach_audit(a, runs)
    first = dense_index(runs)
    return [runs[first]] + runs[:first] + runs[first + 1:]


def _name_uniquely(runs: list[RunDir]) -> None:
    """Name runs by their directory's name, or by their path where two names are equal."""
    names = [r.path.name for r in runs]
    for r in runs:
        r.name = r.path.name if names.count(r.path.name) == 1 else str(r.path)
    if len({r.name for r in runs}) < len(runs):
        raise CheckpointError(f"the same run directory is given twice: {', '.join(sorted(r.name for r in runs))}")


def dense_index(runs: list[RunDir]) -> int:
    """The run the others are compared with: the first run, or the run it was pruned from (followed back)."""
    current, seen = 0, {0}
    while runs[current].init is not None:
        parent = _owner(runs, runs[current].init)
        if parent is None or parent in seen:
            break
        current = parent
        seen.add(parent)
    return current


def _owner(runs: list[RunDir], checkpoint: Path) -> int | None:
    """Index of the run whose directory holds ``checkpoint`` (None: none of them)."""
    target = checkpoint.resolve()
    for i, r in enumerate(runs):
        if target.is_relative_to(r.path.resolve()):
            return i
    return None
