"""benchmarks/common.py's committed checkpoints: a finished run is pinned with only its last checkpoints, and a
lost cache is restored from the pin (sessions run on other machines, where a retrained model is another file)."""

import importlib
import sys
from pathlib import Path

import torch

from prunus.io import META_FILE, MODEL_FILE, STATE_FILE, load_checkpoint, save_checkpoint

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
CHECKPOINT_FILES = sorted([META_FILE, MODEL_FILE, STATE_FILE])


def _common(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("common", None)
    common = importlib.import_module("common")
    monkeypatch.setattr(common, "PINNED", tmp_path / "pinned")
    return common


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _checkpoint(path: Path, value: float) -> None:
    """A checkpoint like a training's: model, optimizer buffers as large as the model, RNG state."""
    weight = torch.full((8,), value)
    save_checkpoint(path, {"w": weight}, {"optimizer": {"state": {0: {"momentum_buffer": weight * 2}}},
                                          "rng": {"torch": torch.tensor([1, 2, 3])}}, {"epoch": int(value)})


def test_pin_keeps_the_last_checkpoint_of_each_run_and_pinned_restores_a_lost_cache(monkeypatch, tmp_path):
    common = _common(monkeypatch, tmp_path)
    run = tmp_path / "cache" / "bcnn-s0-slr20x"
    for epoch in (1, 2, 3):
        _checkpoint(run / "checkpoints" / f"epoch-000{epoch}", epoch)
    for epoch in (4, 5):
        _checkpoint(run / "retrain" / "checkpoints" / f"epoch-000{epoch}", epoch)
    _write(run / "results.json", "{}")
    _write(run / "hard-pruned" / "model.safetensors", "hard")
    common.pin(run, skip=("hard-pruned",))
    pinned = sorted(str(p.relative_to(tmp_path / "pinned")) for p in (tmp_path / "pinned").rglob("*") if p.is_file())
    kept = ["checkpoints/epoch-0003", "retrain/checkpoints/epoch-0005"]
    assert pinned == sorted([f"bcnn-s0-slr20x/{k}/{f}" for k in kept for f in CHECKPOINT_FILES] + [
        "bcnn-s0-slr20x/results.json"])
    for checkpoint in kept:
        copy = tmp_path / "pinned" / run.name / checkpoint
        assert not load_checkpoint(copy).has_state("optimizer") and load_checkpoint(copy).has_state("rng")
        # the model file is the same bytes, so the hash recorded in the rows pruned from it still holds
        assert (copy / MODEL_FILE).read_bytes() == (run / checkpoint / MODEL_FILE).read_bytes()
    assert load_checkpoint(run / "checkpoints/epoch-0003").has_state("optimizer")  # the cache is left as it was
    common.pin(run, skip=("hard-pruned",), resumable=True)  # part-way at a session's end: the next one resumes it
    assert load_checkpoint(tmp_path / "pinned" / run.name / "checkpoints/epoch-0003").has_state("optimizer")

    _write(run / "results.json", "newer")
    assert common.pinned(run) == run and (run / "results.json").read_text() == "newer"  # a cache is never replaced
    for f in sorted(run.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    run.rmdir()
    common.pinned(run)
    assert torch.equal(load_checkpoint(run / "retrain/checkpoints/epoch-0005").model_state["w"], torch.full((8,), 5.0))
    assert not (run / "checkpoints/epoch-0001").exists() and (run / "results.json").read_text() == "{}"
    assert common.pinned(tmp_path / "cache" / "never-pinned") == tmp_path / "cache" / "never-pinned"
    assert not (tmp_path / "cache" / "never-pinned").exists()


def test_continue_on_rows_of_another_dense_file_exits_with_its_own_status(monkeypatch, tmp_path, capsys):
    """run-queue.sh starts a script over only on this status; the line says which file and both hashes."""
    common = _common(monkeypatch, tmp_path)
    common.check_same_dense({"dense_sha256": "a" * 64}, "a" * 64, tmp_path / "x.json")  # same file: goes on
    try:
        common.check_same_dense({"dense_sha256": "a" * 64}, "b" * 64, tmp_path / "x.json")
    except SystemExit as e:
        assert e.code == common.OTHER_DENSE_EXIT == 3
    else:
        raise AssertionError("rows of another dense file were continued")
    err = capsys.readouterr().err
    assert "x.json" in err and "aaaaaaaaaaaa" in err and "bbbbbbbbbbbb" in err and "without --continue" in err
