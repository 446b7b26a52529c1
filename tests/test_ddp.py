"""Two-process DDP (torchrun, gloo) for prune, quantize and defend: the ranks hold one model and one method state.

Each job records every rank's SHA-256 of its method/quantizer state (Z, multipliers, rho, s, masks,
scales) and of its final weights (BatchNorm statistics included) in results.json; these tests check
that the two ranks' digests are equal and that they equal the digest of what rank 0 saved.
"""

import json
import os
import subprocess
import sys

from helpers import REPO

from prunus.io import load_checkpoint, latest_checkpoint
from prunus.train.distributed import digest



def torchrun(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "prunus", *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def saved_digest(checkpoint) -> str:
    return digest(load_checkpoint(checkpoint).model_state)


def assert_ranks_agree(ranks: dict, *states: str) -> None:
    assert ranks["world_size"] == 2
    for state in states:
        first, second = ranks[f"{state}_sha256"]
        assert first == second, f"rank 1's {state} differs from rank 0's"


def test_prune_under_torchrun_keeps_the_ranks_equal(tmp_path):
    # ResNet-20 has BatchNorm: its running statistics must be rank 0's on every rank too
    out = tmp_path / "ddp-prune"
    run = torchrun("prune", "--method", "slr", "--model", "resnet20", "--dataset", "digits", "--dense-epochs", "1",
                   "--structure", "filter", "--ratio", "0.5", "--epochs", "1", "--update-every", "10",
                   "--retrain-epochs", "1", "--batch-size", "32", "--out", out)
    results = json.loads((out / "prune" / "results.json").read_text())
    assert len(results["method_history"]) >= 2  # several rounds (Z-step, multiplier update) happened on both ranks
    assert_ranks_agree(results["ranks"], "method_state", "masks", "model")
    assert results["ranks"]["model_sha256"][0] == saved_digest(latest_checkpoint(out / "prune" / "retrain"))
    assert run.stdout.count("hard-pruned (slr, no retraining)") == 1  # rank 1 prints nothing
    assert run.stdout.count("after retraining epochs") == 1


def test_quantize_under_torchrun_keeps_the_ranks_equal(dense_digits, tmp_path):
    out = tmp_path / "ddp-quantize"
    torchrun("quantize", "--init", dense_digits, "--bits", "4", "--method", "admm", "--epochs", "1",
             "--update-every", "10", "--finetune-epochs", "1", "--batch-size", "32", "--out", out)
    results = json.loads((out / "results.json").read_text())
    assert_ranks_agree(results["ranks"], "method_state", "quantizer", "model")
    assert results["ranks"]["model_sha256"][0] == saved_digest(out / "quantized")
    assert results["reloaded_accuracy"] == results["final_accuracy"]


def test_defend_mcmia_under_torchrun_keeps_the_ranks_equal(tmp_path):
    out = tmp_path / "ddp-mcmia"
    torchrun("defend", "--defense", "mcmia", "--model", "lenet5", "--dataset", "digits", "--members", "400",
             "--epochs", "2", "--compression", "4", "--prune-epochs", "2", "--retrain-epochs", "1",
             "--batch-size", "32", "--out", out)
    results = json.loads((out / "results.json").read_text())
    assert_ranks_agree(results["ranks"], "model")
    assert results["ranks"]["model_sha256"][0] == saved_digest(out / "final")
    assert len(results["game"]) == 3  # the game ran (and its attacker stayed one model: the weights agree)


def test_dpsgd_refuses_torchrun_before_writing(tmp_path):
    out = tmp_path / "ddp-dp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "prunus", "defend", "--defense", "dpsgd", "--dataset", "digits", "--members", "300",
                          "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "--defense dpsgd runs in one process" in run.stderr
    assert not out.exists()
