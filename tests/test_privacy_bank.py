"""Reference banks: shadow/LiRA reference models trained once per split and shared by the audits of its checkpoints."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, run_cli
from rich.console import Console

from prunus.errors import ConfigError
from prunus.privacy.audit import run_audit
from prunus.privacy.audit_config import AuditConfig
from prunus.privacy.bank import LiraOutputs, ReferenceBank, ShadowOutputs
from prunus.privacy.defenses import DefenseConfig, run_defense
from prunus.privacy.references import prepare_reference_bank

QUIET = Console(quiet=True)
CONFIG = dict(attacks=("loss", "shadow", "lira"), reference_models=2, shadow_models=1, epochs=2)


def _target(run: Path, split_seed: int = 0) -> Path:
    run_defense(DefenseConfig(defense="none", model="lenet5", dataset="digits", members=150, epochs=3, batch_size=32,
                              split_seed=split_seed), run, console=QUIET)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The undefended target and a pruned model of it (same split, same recipe): two checkpoints of one split."""
    root = tmp_path_factory.mktemp("bank")
    target = _target(root / "target")
    run_defense(DefenseConfig(defense="prune", model="lenet5", dataset="digits", method="magnitude", ratio=0.5,
                              prune_epochs=0, retrain_epochs=1, batch_size=32), root / "pruned", init=target / "final",
                console=QUIET)
    return {"target": target / "final", "pruned": root / "pruned" / "final", "root": root}


def _aucs(report) -> dict[str, float]:
    return {a["attack"]: a["auc"] for a in report["attacks"]}


def test_a_bank_gives_the_same_audit_and_is_reused(runs, tmp_path):
    config = AuditConfig(**CONFIG)
    plain = run_audit(runs["target"], config, tmp_path / "plain", console=QUIET)
    bank_dir = tmp_path / "bank"
    first = run_audit(runs["target"], config, tmp_path / "first", reference_bank=bank_dir, console=QUIET)
    # the bank holds the very models a plain audit trains: identical results
    assert _aucs(first) == _aucs(plain) and set(_aucs(plain)) == {"loss", "shadow", "lira-online", "lira-offline"}
    assert first["models"]["bank"]["trained_now"] == ["shadow", "lira"]
    assert (bank_dir / "bank.json").is_file() and (bank_dir / "reference" / "01").is_dir()
    assert not (tmp_path / "first" / "reference").exists()
    stamp = (bank_dir / "bank.npz").stat().st_mtime_ns

    log = io.StringIO()
    second = run_audit(runs["pruned"], config, tmp_path / "second", reference_bank=bank_dir,
                       console=Console(file=log, width=200))
    assert "reusing 2 LiRA reference models" in log.getvalue() and "training" not in log.getvalue()
    assert second["models"]["bank"]["trained_now"] == [] and second["models"]["bank"]["reused"] == ["shadow", "lira"]
    assert second["defense"] == "prune" and (bank_dir / "bank.npz").stat().st_mtime_ns == stamp
    assert not (tmp_path / "second" / "reference").exists() and not (tmp_path / "second" / "shadow").exists()
    assert np.array_equal(np.load(tmp_path / "second" / "lira_inclusion.npy"),
                          np.load(tmp_path / "first" / "lira_inclusion.npy"))

    # in memory: Shokri's attack classifier is fitted once and kept for every later audit
    bank = ReferenceBank.load(bank_dir)
    again = run_audit(runs["pruned"], config, tmp_path / "third", reference_bank=bank, console=QUIET)
    fitted = bank._attacks[(False, 0)]
    run_audit(runs["target"], config, tmp_path / "fourth", reference_bank=bank, console=QUIET)
    assert list(bank._attacks) == [(False, 0)] and bank._attacks[(False, 0)] is fitted
    assert _aucs(again) == _aucs(second)


def test_a_bank_for_another_audit_is_refused_before_anything_is_written(runs, tmp_path):
    bank_dir = tmp_path / "bank"
    prepare_reference_bank(runs["target"], AuditConfig(**CONFIG), bank_dir, console=QUIET)
    other_split = _target(tmp_path / "other", split_seed=1) / "final"
    cases = [
        (runs["pruned"], dict(CONFIG, reference_models=4), ["--reference-models: bank 2 vs audit 4"]),
        (runs["pruned"], dict(CONFIG, shadow_models=2), ["--shadow-models: bank 1 vs audit 2"]),
        (runs["pruned"], dict(CONFIG, epochs=3), ["recipe.epochs: bank 2 vs audit 3"]),
        (runs["pruned"], dict(CONFIG, seed=5), ["seed: bank 0 vs audit 5"]),
        (other_split, CONFIG, ["split.seed: bank 0 vs audit 1", "split.sha256_16"]),
    ]
    for k, (ckpt, cfg, fragments) in enumerate(cases):
        out = tmp_path / f"out{k}"
        with pytest.raises(ConfigError) as e:
            run_audit(ckpt, AuditConfig(**cfg), out, reference_bank=bank_dir, console=QUIET)
        for fragment in fragments:
            assert fragment in str(e.value), (fragment, str(e.value))
        assert "\n" not in str(e.value) and not out.exists()


def test_a_bank_directory_grows_the_parts_it_lacks(runs, tmp_path):
    bank_dir = tmp_path / "bank"
    lira_only = AuditConfig(**dict(CONFIG, attacks=("lira",)))
    bank = prepare_reference_bank(runs["target"], lira_only, bank_dir, console=QUIET)
    assert bank.shadow is None and bank.lira.models == 2 and bank.path == bank_dir
    inclusion = bank.lira.inclusion.copy()
    # an object in memory cannot train what it lacks
    with pytest.raises(ConfigError, match="holds no shadow models"):
        run_audit(runs["pruned"], AuditConfig(**CONFIG), tmp_path / "x", reference_bank=bank, console=QUIET)
    assert not (tmp_path / "x").exists()
    # a directory can: the shadow model is trained into it, the LiRA models are kept
    report = run_audit(runs["pruned"], AuditConfig(**CONFIG), tmp_path / "y", reference_bank=bank_dir, console=QUIET)
    assert report["models"]["bank"]["trained_now"] == ["shadow"] and report["models"]["bank"]["reused"] == ["lira"]
    grown = ReferenceBank.load(bank_dir)
    assert grown.shadow.models == 1 and np.array_equal(grown.lira.inclusion, inclusion)
    meta = json.loads((bank_dir / "bank.json").read_text())
    assert set(meta["info"]) == {"shadow", "lira"} and meta["lira"]["examples"] == 300
    # preparing again trains nothing
    stamp = (bank_dir / "bank.npz").stat().st_mtime_ns
    assert prepare_reference_bank(runs["target"], AuditConfig(**CONFIG), bank_dir, console=QUIET).shadow.models == 1
    assert (bank_dir / "bank.npz").stat().st_mtime_ns == stamp


def test_save_and_load_keep_every_array(tmp_path):
    rng = np.random.default_rng(0)
    key = {"format": 1, "split": {"sha256_16": "abc"}, "recipe": {"epochs": 2}, "seed": 0}
    shadow = ShadowOutputs(rng.normal(size=(40, 10)), rng.integers(0, 10, 40), rng.random(40) < 0.5, 2, 10)
    lira = LiraOutputs(rng.random((4, 30)) < 0.5, rng.normal(size=(4, 30, 10)), np.arange(30) * 2)
    ReferenceBank(key, shadow, lira, {"lira": {"seconds": 1.5}}).save(tmp_path / "b")
    back = ReferenceBank.load(tmp_path / "b")
    assert back.key == key and back.info == {"lira": {"seconds": 1.5}} and back.path == tmp_path / "b"
    for a, b in ((back.shadow.logits, shadow.logits), (back.shadow.labels, shadow.labels),
                 (back.shadow.is_member, shadow.is_member), (back.lira.inclusion, lira.inclusion),
                 (back.lira.logits, lira.logits), (back.lira.indices, lira.indices)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert back.lira.phi(np.zeros(30, int)).shape == (4, 30)
    assert not list((tmp_path / "b").glob(".*")), "temporary files left behind"
    with pytest.raises(ConfigError, match="recipe.epochs: bank 2 vs audit 3"):
        back.check({**key, "recipe": {"epochs": 3}})
    with pytest.raises(ConfigError, match="bank.npz is missing"):
        (tmp_path / "b" / "bank.npz").unlink()
        ReferenceBank.load(tmp_path / "b")


def test_cli_reference_bank(capsys, runs, tmp_path):
    bank = tmp_path / "bank"
    args = ["--attack", "loss,lira", "--reference-models", "2", "--shadow-models", "1", "--epochs", "2",
            "--reference-bank", str(bank)]
    code, stdout, _ = run_cli(capsys, "audit", str(runs["target"]), *args, "--out", str(tmp_path / "a"))
    assert code == 0 and "training 2 LiRA reference models" in stdout and (bank / "bank.json").is_file()
    code, stdout, _ = run_cli(capsys, "audit", str(runs["pruned"]), *args, "--out", str(tmp_path / "b"))
    assert code == 0 and "reusing 2 LiRA reference models" in stdout and "training" not in stdout
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    code, _, err = run_cli(capsys, "audit", str(runs["pruned"]), *args[:-1], str(busy), "--out", str(tmp_path / "c"))
    assert_user_error(code, err, "neither a reference bank nor empty", "notes.txt")
    assert not (tmp_path / "c").exists()


def test_a_bank_key_leaves_out_newer_recipe_fields_at_their_default():
    """Banks built before TrainConfig.compile existed trained eagerly: an eager audit's key must still match them;
    a compiled recipe is another bank."""
    from types import SimpleNamespace

    from prunus.privacy.references import bank_key
    from prunus.train.config import TrainConfig

    ckpt = SimpleNamespace(meta={"dataset": {"name": "digits"}, "model": {"name": "lenet5"}})
    split, config = SimpleNamespace(summary=lambda: {"members": 10}), SimpleNamespace(seed=0)
    eager = bank_key(ckpt, split, TrainConfig(), config)
    assert "compile" not in eager["recipe"] and "precision" in eager["recipe"]
    assert bank_key(ckpt, split, TrainConfig(compile=True), config)["recipe"]["compile"] is True
