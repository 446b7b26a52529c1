"""SIGKILL at any point of a pruning run, then `prunus prune --resume`: the result equals an uninterrupted run's."""

import json

import torch
from helpers import kill_when_exists, start_prunus

from prunus.models.loading import load_model


def _finish(proc) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def test_prune_killed_while_pruning_and_while_retraining_resumes_to_the_same_result(tmp_path, dense_digits):
    args = ["prune", "--method", "slr", "--init", dense_digits, "--ratio", "0.8", "--epochs", "3", "--update-every", "10",
            "--retrain-epochs", "3", "--batch-size", "16", "--bn-recalibrate", "2"]
    _finish(start_prunus(*args, "--out", tmp_path / "full"))
    run = tmp_path / "killed"
    kill_when_exists(start_prunus(*args, "--out", run), run / "prune" / "checkpoints" / "epoch-0001")
    assert not (run / "hard-pruned").exists() and not (run / "results.json").exists()
    kill_when_exists(start_prunus("prune", "--resume", run), run / "retrain" / "checkpoints" / "epoch-0001")
    assert (run / "hard-pruned").exists() and not (run / "results.json").exists()
    _finish(start_prunus("prune", "--resume", run))

    full, resumed = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("full", "killed"))
    for key in ("dense_accuracy", "hard_pruned_accuracy", "bn_recalibrated_accuracy", "retrain_accuracy"):
        assert full[key] == resumed[key], key
    assert [h["distance"] for h in full["method_history"]] == [h["distance"] for h in resumed["method_history"]]
    a, _ = load_model(tmp_path / "full" / "retrain")
    b, _ = load_model(run / "retrain")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # metrics of each phase list every epoch once
    for phase, epochs in (("prune", 3), ("retrain", 3)):
        lines = (run / phase / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == list(range(1, epochs + 1))
