"""`prunus defend` and `prunus audit` end to end on digits, and their user errors (one line, exit 2, nothing
written)."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, run_cli

from prunus.io import save_checkpoint
from prunus.models import build_model
from prunus.models.loading import load_model


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    from prunus.cli import main

    run = tmp_path_factory.mktemp("cli") / "target"
    assert main(["defend", "--defense", "none", "--model", "lenet5", "--dataset", "digits", "--members", "150",
                 "--epochs", "4", "--batch-size", "32", "--out", str(run)]) == 0
    return run


def test_audit_writes_table_and_roc_pngs(capsys, target, tmp_path):
    out = tmp_path / "audit"
    code, stdout, _ = run_cli(capsys, "audit", str(target), "--attack", "loss,mentr", "--attack", "lira",
                              "--reference-models", "2", "--shadow-models", "1", "--epochs", "2", "--out", str(out))
    assert code == 0
    assert "strongest attack" in stdout and "report.md" in stdout
    report = json.loads((out / "report.json").read_text())
    assert [a["attack"] for a in report["attacks"]] == ["loss", "mentr", "lira-online", "lira-offline"]
    for a in report["attacks"]:
        assert (a["members"], a["nonmembers"]) == (150, 150)
        assert 0.0 <= a["auc"] <= 1.0 and a["roc"]["fpr"][0] == 0.0 and a["roc"]["tpr"][-1] == 1.0
    table = (out / "report.md").read_text()
    assert "| attack | AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | members | non-members |" in table
    assert table.count("| 150 | 150 |") == 4 and "(0 FP)" in table  # 150 non-members cannot resolve 0.1% FPR
    for png in ("roc.png", "roc-log.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert report["accuracy"]["members"] >= report["accuracy"]["nonmembers"] - 5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["reference_training"]["epochs"] == 2 and cfg["split"]["members"] == 150
    scores = np.load(out / "scores.npz", allow_pickle=False)
    assert set(scores.files) >= {"is_member", "score_loss", "score_lira-online"}
    assert not list(out.glob(".*")), "temporary files left behind"


def test_prune_defense_from_the_target(capsys, target, tmp_path):
    out = tmp_path / "pruned"
    code, stdout, _ = run_cli(capsys, "defend", "--defense", "prune", "--init", str(target), "--method", "magnitude",
                              "--ratio", "0.5", "--prune-epochs", "0", "--retrain-epochs", "2", "--batch-size", "32",
                              "--retrain-schedule", "cosine-step", "--out", str(out))
    assert code == 0 and "compression 2.0x" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == json.loads((target / "results.json").read_text())["split"]
    assert len(results["retrain_accuracy"]) == 2
    # the fine-tuning's lr decays every step: the second epoch starts at half of it (cosine at the midpoint)
    assert results["config"]["retrain_schedule"] == "cosine-step"
    lrs = [json.loads(line)["lr"] for line in (out / "retrain" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([results["config"]["lr"], results["config"]["lr"] / 2])


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["audit", "{missing}", "--out", "{out}"], ["does not exist"]),
        (["audit", "{target}", "--attack", "gradient-magic", "--out", "{out}"], ["gradient-magic", "lira"]),
        (["audit", "{target}", "--reference-models", "0", "--out", "{out}"], ["--reference-models", "at least 1"]),
        (["audit", "{target}", "--attack", "lira", "--reference-models", "1", "--out", "{out}"],
         ["at least 2 for LiRA"]),
        (["audit", "{plain}", "--out", "{out}"], ["records no membership split", "prunus defend"]),
        (["defend", "--defense", "mcmia", "--dataset", "digits", "--out", "{out}"], ["--compression"]),
        (["defend", "--defense", "dpsgd", "--dataset", "digits", "--members", "300", "--delta", "0.01",
          "--out", "{out}"], ["--delta", "1/members"]),
        (["defend", "--defense", "none", "--dataset", "digits", "--members", "1000", "--out", "{out}"],
         ["--members 1000"]),
        (["defend", "--defense", "magic", "--out", "{out}"], ["--defense"]),
    ],
)
def test_user_errors(capsys, tmp_path, target, argv, fragments):
    plain = tmp_path / "plain"  # a checkpoint without a membership split (as `prunus train` writes)
    model = build_model("lenet5")
    save_checkpoint(plain, model.state_dict(), {}, {"model": {"name": "lenet5", "in_channels": 1, "num_classes": 10,
                                                              "options": {}}, "dataset": {"name": "digits"}})
    out = tmp_path / "out"
    subs = {"{missing}": str(tmp_path / "nope"), "{out}": str(out), "{target}": str(target), "{plain}": str(plain)}
    code, _, err = run_cli(capsys, *[subs.get(a, a) for a in argv])
    assert_user_error(code, err, *fragments)
    assert not out.exists(), "a failed command must not leave anything behind"


def test_audit_refuses_a_non_empty_out(capsys, target, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(capsys, "audit", str(target), "--out", str(out))
    assert_user_error(code, err, "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_defended_checkpoint_evaluates(capsys, target):
    code, stdout, _ = run_cli(capsys, "eval", str(target / "final"), "--json")
    assert code == 0
    results = json.loads((target / "results.json").read_text())
    assert json.loads(stdout)["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)


def test_audit_runs_rmia_on_the_lira_reference_models(capsys, target, tmp_path):
    out = tmp_path / "audit-rmia"
    code, stdout, _ = run_cli(capsys, "audit", str(target), "--attack", "rmia", "--reference-models", "4",
                              "--epochs", "2", "--out", str(out))
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [a["attack"] for a in report["attacks"]] == ["rmia-online", "rmia-offline", "rmia-1ref"]
    for a in report["attacks"]:
        assert (a["members"], a["nonmembers"]) == (150, 150) and 0.0 <= a["auc"] <= 1.0
    assert report["attacks"][2]["extra"]["reference_models"] == 1
    assert report["attacks"][0]["extra"]["reference_models"] == 4
    assert "| rmia-online |" in (out / "report.md").read_text()


def test_adaptive_audit_trains_its_references_with_the_targets_defense(capsys, target, tmp_path):
    pruned = tmp_path / "pruned"
    code, _, _ = run_cli(capsys, "defend", "--defense", "prune", "--init", str(target), "--method", "magnitude",
                         "--ratio", "0.5", "--prune-epochs", "0", "--retrain-epochs", "1", "--batch-size", "32",
                         "--out", str(pruned))
    assert code == 0
    out = tmp_path / "adaptive"
    code, stdout, _ = run_cli(capsys, "audit", str(pruned), "--attack", "lira,rmia", "--reference-models", "2",
                              "--epochs", "2", "--adaptive", "--out", str(out))
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["attacker"].startswith("adaptive")
    assert "Attacker: adaptive" in (out / "report.md").read_text()
    for k in ("00", "01"):  # each reference model trained densely on its half (2 epochs), then pruned like the target
        ref = out / "reference" / k
        assert len((ref / "dense" / "metrics.jsonl").read_text().splitlines()) == 2
        model, _ = load_model(ref / "retrain")
        w = model.conv2.weight
        assert int((w == 0).sum()) == w.numel() // 2
    # a non-adaptive bank is not reused for an adaptive audit: the defense is part of what the bank was built for
    bank = tmp_path / "bank"
    assert run_cli(capsys, "audit", str(pruned), "--attack", "lira", "--reference-models", "2", "--epochs", "2",
                   "--reference-bank", str(bank), "--out", str(tmp_path / "plain"))[0] == 0
    code, _, err = run_cli(capsys, "audit", str(pruned), "--attack", "lira", "--reference-models", "2", "--epochs", "2",
                           "--reference-bank", str(bank), "--adaptive", "--out", str(tmp_path / "again"))
    assert_user_error(code, err, "adaptive_defense")


def test_adaptive_references_of_a_pruned_target_can_prune_the_non_adaptive_banks_models(capsys, target, tmp_path):
    """--dense-starts: each adaptive reference prunes the non-adaptive bank's model of its half (no dense phase of
    its own), so its magnitude mask is the bank model's; misuse is one error line and writes nothing."""
    pruned = tmp_path / "pruned"
    assert run_cli(capsys, "defend", "--defense", "prune", "--init", str(target), "--method", "magnitude", "--ratio",
                   "0.5", "--prune-epochs", "0", "--retrain-epochs", "1", "--batch-size", "32",
                   "--out", str(pruned))[0] == 0
    bank = tmp_path / "bank"
    common = ["--attack", "lira", "--epochs", "2"]
    assert run_cli(capsys, "audit", str(pruned), *common, "--reference-models", "2", "--reference-bank", str(bank),
                   "--out", str(tmp_path / "plain"))[0] == 0
    out = tmp_path / "adaptive"
    code, _, _ = run_cli(capsys, "audit", str(pruned), *common, "--reference-models", "2", "--adaptive",
                         "--dense-starts", str(bank), "--out", str(out))
    assert code == 0
    assert json.loads((out / "config.json").read_text())["dense_starts"] == str(bank)
    for k in ("00", "01"):
        ref = out / "reference" / k
        assert not (ref / "dense").exists() and (ref / "retrain").is_dir()
        dense, _ = load_model(bank / "reference" / k)
        w = dense.conv2.weight.detach().abs().flatten()
        keep = w >= w.kthvalue(w.numel() // 2 + 1).values  # magnitude pruning at ratio 0.5 keeps the larger half
        model, _ = load_model(ref / "retrain")
        assert bool(((model.conv2.weight.flatten() != 0) == keep).all())
    for argv, fragment in (([str(target), "--adaptive"], "only a pruned target's references"),
                           ([str(pruned)], "--dense-starts is for --adaptive audits"),
                           ([str(pruned), "--adaptive", "--reference-models", "4"], "--reference-models: bank 2")):
        argv = argv if "--reference-models" in argv else [*argv, "--reference-models", "2"]
        code, _, err = run_cli(capsys, "audit", *argv, *common, "--dense-starts", str(bank),
                               "--out", str(tmp_path / "bad"))
        assert_user_error(code, err, fragment)
        assert not (tmp_path / "bad").exists()


def test_adaptive_audit_needs_a_recorded_defense(capsys, tmp_path, dense_digits):
    code, _, err = run_cli(capsys, "audit", str(dense_digits), "--adaptive", "--out", str(tmp_path / "a"))
    assert code == 2 and "prunus: error:" in err and not (tmp_path / "a").exists()
