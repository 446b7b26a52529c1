"""Each script in examples/ runs as a user would run it, and does what its header says."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return [float(g.replace(",", "")) for g in match.groups()]


def test_prune_in_your_own_loop():
    out = run_example("prune_in_your_own_loop.py")
    dense, hard, final, zeros = numbers(r"dense ([\d.]+)% -> hard-pruned \(no retraining\) ([\d.]+)% -> after 2 "
                                        r"fine-tuning epochs ([\d.]+)%; ([\d.]+)% of the weights are zero", out)
    assert zeros == 90.0 and dense > 85 and hard >= dense - 3 and final >= dense - 3


def test_prune_huggingface():
    pytest.importorskip("transformers")
    out = run_example("prune_huggingface.py")
    dense, hard = numbers(r"dense ([\d.]+)% -> hard-pruned 2:4 \(no retraining\) ([\d.]+)%", out)
    assert "every group of 4 holds <= 2 nonzeros: True" in out
    assert "embeddings" not in out and "classifier" not in out.split(";")[0]  # the rule skips them
    assert out.startswith("pruned: bert.encoder.layer.0.attention.self.query.weight")  # not skipped as a 'first layer'
    assert dense >= 95 and hard >= 95


def test_prune_surgery_export(tmp_path):
    out = run_example("prune_surgery_export.py", str(tmp_path))
    dense, hard, final, before, after = numbers(
        r"dense ([\d.]+)% -> hard-pruned ([\d.]+)% -> ([\d.]+)% after 1 epoch; parameters ([\d,]+) -> ([\d,]+)", out)
    assert after < before / 3 and hard >= dense - 5 and final >= dense - 3
    assert (tmp_path / "resnet20-pruned.onnx").stat().st_size > 0
