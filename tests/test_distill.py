"""Knowledge distillation during masked retraining: the term is what its formula says, and it pulls the pruned
model toward the unpruned one."""

import json

import pytest
import torch
import torch.nn as nn
from helpers import run_cli

from prunus.data import load_dataset
from prunus.errors import ConfigError
from prunus.models.loading import load_model
from prunus.train.distill import Distillation


def test_distillation_term_is_alpha_t2_times_the_kl_of_the_softened_outputs():
    torch.manual_seed(0)
    teacher = nn.Linear(5, 4)
    x, student = torch.randn(8, 5), torch.randn(8, 4)
    hook = Distillation(teacher, alpha=0.5, temperature=3.0)
    p = torch.softmax(teacher(x) / 3.0, 1)
    q = torch.softmax(student / 3.0, 1)
    by_hand = 0.5 * 9.0 * (p * (p.log() - q.log())).sum(1).mean()
    assert float(hook.output_loss(x, student)) == pytest.approx(float(by_hand), rel=1e-5)
    with torch.no_grad():
        assert float(hook.output_loss(x, teacher(x))) == pytest.approx(0.0, abs=1e-6)  # nothing left to learn
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    for bad in ({"alpha": 0.0}, {"alpha": float("nan")}, {"temperature": -1.0}):
        with pytest.raises(ConfigError):
            Distillation(teacher, **bad)


def _kl_to(teacher, student, images, temperature: float) -> float:
    with torch.no_grad():
        p = torch.log_softmax(teacher(images) / temperature, 1)
        return float(torch.nn.functional.kl_div(torch.log_softmax(student(images) / temperature, 1), p,
                                                log_target=True, reduction="batchmean"))


def test_prune_distill_pulls_the_retrained_model_toward_the_unpruned_one(capsys, tmp_path, dense_digits):
    """The same seed with and without --distill: the distilled run's softened outputs are closer to the dense model's
    (KL at the distillation's temperature on the test set: 0.053 against 0.287 when written), its zeros are the
    same, and results.json records the weight."""
    def prune(name: str, *extra):
        out = tmp_path / name
        code, _, _ = run_cli(capsys, "prune", "--method", "magnitude", "--init", str(dense_digits), "--compression",
                             "20", "--epochs", "0", "--retrain-epochs", "2", "--retrain-lr", "1e-3", "--batch-size",
                             "32", *extra, "--out", str(out))  # the lr the figures below were written with
        assert code == 0
        return json.loads((out / "results.json").read_text()), load_model(out / "retrain")[0].eval()

    (plain_results, plain), (kd_results, kd) = (prune("plain"),
                                                prune("kd", "--distill", "1", "--distill-temperature", "4"))
    assert plain_results["config"]["distill"] == 0.0 and kd_results["config"]["distill"] == 1.0
    dense = load_model(dense_digits)[0].eval()
    images = load_dataset("digits", "test").images
    assert _kl_to(dense, kd, images, 4.0) < 0.5 * _kl_to(dense, plain, images, 4.0)
    for (name, a), b in zip(plain.named_parameters(), kd.parameters()):
        if name.endswith("weight") and a.dim() > 1:
            assert torch.equal(a == 0, b == 0), name  # magnitude pruning: the same zeros, distilled or not
