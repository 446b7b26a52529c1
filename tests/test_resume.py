"""SIGKILL at any point of a pruning run, then `prunus prune --resume`: the result equals an uninterrupted run's."""

import json

import torch
from helpers import kill_when_exists, start_prunus

from prunus.models.loading import load_model


def _finish(proc) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def test_prune_killed_while_pruning_and_while_retraining_resumes_to_the_same_result(tmp_path, dense_digits):
    args = ["prune", "--method", "slr", "--init", dense_digits, "--ratio", "0.8", "--epochs", "3",
            "--update-every", "10", "--retrain-epochs", "3", "--batch-size", "16", "--bn-recalibrate", "2"]
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


def test_quantize_killed_in_each_phase_resumes_to_the_same_result(tmp_path, dense_digits):
    args = ["quantize", "--init", dense_digits, "--bits", "4", "--method", "slr", "--epochs", "3",
            "--update-every", "10", "--finetune-epochs", "3", "--batch-size", "16"]
    _finish(start_prunus(*args, "--out", tmp_path / "full"))
    run = tmp_path / "killed"
    kill_when_exists(start_prunus(*args, "--out", run), run / "method" / "checkpoints" / "epoch-0001")
    assert not (run / "finetune").exists() and not (run / "results.json").exists()
    kill_when_exists(start_prunus("quantize", "--resume", run), run / "finetune" / "checkpoints" / "epoch-0001")
    assert not (run / "model.pcz").exists()
    _finish(start_prunus("quantize", "--resume", run))

    full, resumed = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("full", "killed"))
    for key in ("input_accuracy", "hard_quantized_accuracy", "finetune_accuracy", "final_accuracy", "size"):
        assert full[key] == resumed[key], key
    assert [h["distance"] for h in full["method_history"]] == [h["distance"] for h in resumed["method_history"]]
    assert (tmp_path / "full" / "model.pcz").read_bytes() == (run / "model.pcz").read_bytes()
    for phase, epochs in (("method", 3), ("finetune", 3)):
        lines = (run / phase / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == list(range(1, epochs + 1))


def test_defend_mcmia_killed_in_each_phase_resumes_to_the_same_result(tmp_path):
    args = ["defend", "--defense", "mcmia", "--model", "lenet5", "--dataset", "digits", "--members", "400",
            "--epochs", "2", "--compression", "4", "--prune-epochs", "3", "--retrain-epochs", "3",
            "--warmup-epochs", "1", "--batch-size", "16"]
    _finish(start_prunus(*args, "--out", tmp_path / "full"))
    run = tmp_path / "killed"
    kill_when_exists(start_prunus(*args, "--out", run), run / "prune" / "checkpoints" / "epoch-0001")
    kill_when_exists(start_prunus("defend", "--resume", run), run / "retrain" / "checkpoints" / "epoch-0002")
    assert not (run / "final").exists()
    _finish(start_prunus("defend", "--resume", run))

    full, resumed = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("full", "killed"))
    for key in ("test_accuracy", "member_accuracy", "nonmember_accuracy", "hard_pruned_accuracy", "retrain_accuracy",
                "game", "split"):
        assert full[key] == resumed[key], key
    a, _ = load_model(tmp_path / "full" / "final")
    b, _ = load_model(run / "final")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
