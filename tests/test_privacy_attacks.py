"""Attacks against a real overfit target: 100 Fashion-MNIST members, LeNet-5, 30 epochs (about 30 s in all)."""

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from prunus.cli import main
from prunus.data import load_dataset
from prunus.io import load_checkpoint
from prunus.privacy.audit import run_audit
from prunus.privacy.audit_config import AuditConfig
from prunus.privacy.defenses import DefenseConfig, run_defense
from prunus.privacy.splits import split_of_checkpoint

MEMBERS = 100


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mia") / "target"
    run_defense(DefenseConfig(defense="none", model="lenet5", dataset="fashion-mnist", members=MEMBERS, epochs=30,
                              batch_size=16, lr=2e-3, eval_examples=500), run, console=Console(quiet=True))
    return run


@pytest.fixture(scope="module")
def audit(target, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("mia") / "audit"
    return run_audit(target / "final", AuditConfig(attacks=("loss", "lira"), reference_models=4, shadow_models=1), out,
                     console=Console(quiet=True)) | {"out": out}


def test_split_is_recorded_disjoint_and_balanced(target, capsys):
    ckpt = load_checkpoint(target / "final")
    split = split_of_checkpoint(ckpt)
    assert (len(split.members), len(split.nonmembers), len(split.pool)) == (MEMBERS, MEMBERS, 60000 - 2 * MEMBERS)
    assert len(np.intersect1d(split.members, split.nonmembers)) == 0
    assert (len(np.intersect1d(split.members, split.pool)) == 0
            and len(np.intersect1d(split.nonmembers, split.pool)) == 0)
    # every checkpoint of the run carries the same split, and the target trained on exactly the members
    for epoch_dir in (target / "train" / "checkpoints").glob("epoch-*"):
        assert split_of_checkpoint(load_checkpoint(epoch_dir)).digest == split.digest
    results = json.loads((target / "results.json").read_text())
    assert results["split"]["members"] == MEMBERS and results["member_accuracy"] >= 90.0
    assert results["member_accuracy"] - results["nonmember_accuracy"] >= 15.0  # it overfits
    # a defended model is a normal checkpoint: prunus eval reproduces its test accuracy
    assert main(["eval", str(target / "final"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)


def test_overfit_target_leaks(audit):
    by = {a["attack"]: a for a in audit["attacks"]}
    assert set(by) == {"loss", "lira-online", "lira-offline"}
    for a in by.values():
        assert (a["members"], a["nonmembers"]) == (MEMBERS, MEMBERS)
    assert by["loss"]["auc"] > 0.65, by["loss"]["auc"]
    assert by["lira-online"]["auc"] > 0.65, by["lira-online"]["auc"]
    assert by["loss"]["balanced_accuracy"] > 0.55  # threshold from the shadow model, not from the target
    assert "shadow" in by["loss"]["threshold_source"]
    assert "reference models" in by["lira-online"]["threshold_source"]
    assert audit["models"]["lira"]["models"] == 4


def test_lira_reference_models_train_on_balanced_halves(audit, target):
    out = audit["out"]
    inc = np.load(out / "lira_inclusion.npy")
    assert inc.shape == (4, 2 * MEMBERS) and (inc.sum(0) == 2).all()
    scores = np.load(out / "scores.npz", allow_pickle=False)
    assert scores["is_member"].sum() == MEMBERS and len(scores["is_member"]) == 2 * MEMBERS
    split = split_of_checkpoint(load_checkpoint(target / "final"))
    assert np.array_equal(scores["indices"], np.r_[split.members, split.nonmembers])
    # a reference model's training set is exactly the audit examples its inclusion row selects
    train = load_dataset("fashion-mnist", "train")
    ref0 = load_checkpoint(sorted((out / "reference" / "00" / "checkpoints").glob("epoch-*"))[-1])
    assert ref0.meta["model"]["name"] == "lenet5"
    assert int(inc[0].sum()) == audit["models"]["lira"]["examples_per_model"][0]
    assert len(train.labels) == split.total
