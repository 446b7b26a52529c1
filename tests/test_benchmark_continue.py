"""--continue of the LeNet-5 benchmark scripts: a run killed after some rows keeps them, and the next run with
--continue trains exactly the missing rows (run-queue.sh restarts every session; a script without it would
train its whole table again each time)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

from prunus.models import build_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


class Killed(Exception):
    """The fake training run's stand-in for a SIGKILL."""


def _script(monkeypatch, tmp_path, name: str):
    """Import benchmark ``name`` with its results (and BENCHMARKS.md) redirected into ``tmp_path``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for module in ("common", "retrain_free", name):
        sys.modules.pop(module, None)
    common = importlib.import_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    script = importlib.import_module(name)
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "model.safetensors").write_bytes(b"the dense model")
    monkeypatch.setattr(script, "dense_checkpoint", lambda: dense)
    monkeypatch.setattr(script, "load_model", lambda init: (build_model("lenet5"), None))  # plans need its layers
    monkeypatch.setattr(script, "load_dataset", lambda *a: None)
    monkeypatch.setattr(common, "dense_fields", lambda init, model, test_set: {
        "dense_checkpoint": "dense", "dense_sha256": common.dense_sha256(init), "dense_accuracy": 90.0})
    return script


def _fake_runs(monkeypatch, script, result, kill_after: int | None = None) -> list:
    """Replace the script's run_pruning; returns the list of (method, seed, options) it is called with."""
    calls = []

    def run_pruning(init, plan, config, run_dir, console=None):
        if kill_after is not None and len(calls) == kill_after:
            raise Killed
        calls.append((config.method, config.seed, dict(config.options)))
        return result

    monkeypatch.setattr(script, "run_pruning", run_pruning)
    return calls


def _main(monkeypatch, script, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [script.__name__, *argv])
    script.main()


def test_structured_filter_continue_runs_only_the_missing_rows(monkeypatch, tmp_path):
    import json

    script = _script(monkeypatch, tmp_path, "structured_filter")
    monkeypatch.setattr(script, "ratio_for_mac_reduction", lambda model, factor: (0.5, 1000, 500))
    result = {"hard_pruned_accuracy": 88.0, "retrain_accuracy": [89.0], "report": {"macs_dense": 1000,
                                                                                   "macs_structural": 500}}
    _fake_runs(monkeypatch, script, result, kill_after=4)
    with pytest.raises(Killed):
        _main(monkeypatch, script, "--seeds", "0", "1", "--factors", "2")
    path = tmp_path / "results" / "structured_filter.json"
    kept = [(r["variant"], r["seed"]) for r in json.loads(path.read_text())["runs"]]
    assert kept == [("slr/100", 0), ("slr/100", 1), ("admm/100", 0), ("admm/100", 1)]

    calls = _fake_runs(monkeypatch, script, result)
    _main(monkeypatch, script, "--seeds", "0", "1", "--factors", "2", "--continue")
    assert [(m, s) for m, s, _ in calls] == [("magnitude", 0), ("magnitude", 1)]
    assert len(json.loads(path.read_text())["runs"]) == 6

    calls = _fake_runs(monkeypatch, script, result)
    _main(monkeypatch, script, "--seeds", "0", "1", "--factors", "2")  # without --continue: all over again
    assert len(calls) == 6 and len(json.loads(path.read_text())["runs"]) == 6


def test_slr_tuning_continue_runs_only_the_missing_settings(monkeypatch, tmp_path):
    import json

    script = _script(monkeypatch, tmp_path, "slr_tuning")
    result = {"hard_pruned_accuracy": 85.0, "method_history": [{"residual": 0.5}]}
    _fake_runs(monkeypatch, script, result, kill_after=5)  # 2 settings x 2 rates, then killed inside the third
    with pytest.raises(Killed):
        _main(monkeypatch, script, "--rates", "20", "50")
    path = tmp_path / "results" / "slr_tuning.json"
    settings = [label for label, *_ in script.SETTINGS]
    assert [r["setting"] for r in json.loads(path.read_text())["rows"]] == settings[:2]

    calls = _fake_runs(monkeypatch, script, result)
    _main(monkeypatch, script, "--rates", "20", "50", "--continue")
    assert len(calls) == 2 * (len(settings) - 2)
    assert calls[0] == (script.SETTINGS[2][1], 0, script.SETTINGS[2][2]["options"])
    rows = json.loads(path.read_text())["rows"]
    assert [r["setting"] for r in rows] == settings and all(set(r["hard_pruned"]) == {"20", "50"} for r in rows)

    stale = json.loads(path.read_text())
    stale["rows"].insert(0, {"setting": "a setting no longer listed", "hard_pruned": {"20": 1.0, "50": 1.0},
                             "final_residual": {"20": 0.0, "50": 0.0}})
    path.write_text(json.dumps(stale))
    calls = _fake_runs(monkeypatch, script, result)
    _main(monkeypatch, script, "--rates", "20", "50", "--continue")  # nothing to run; the stale row goes
    assert calls == [] and [r["setting"] for r in json.loads(path.read_text())["rows"]] == settings

    calls = _fake_runs(monkeypatch, script, result)  # a rate the kept rows lack: every setting runs again
    _main(monkeypatch, script, "--rates", "20", "100", "--continue")
    assert len(calls) == 2 * len(settings)


def test_continue_refuses_rows_of_other_settings(monkeypatch, tmp_path, capsys):
    script = _script(monkeypatch, tmp_path, "slr_tuning")
    _fake_runs(monkeypatch, script, {"hard_pruned_accuracy": 85.0, "method_history": [{"residual": 0.5}]})
    _main(monkeypatch, script, "--rates", "20")
    with pytest.raises(SystemExit, match="--epochs 6 --seed 0"):
        _main(monkeypatch, script, "--rates", "20", "--seed", "1", "--continue")


def test_every_slr_tuning_setting_is_a_valid_prune_config(monkeypatch, tmp_path):
    """A setting the current PruneConfig refuses would stop the table half-way (rho_factor once met the budget
    schedule, the default since)."""
    from prunus.jobs.prune import PruneConfig

    script = _script(monkeypatch, tmp_path, "slr_tuning")
    for label, method, fields in script.SETTINGS:
        PruneConfig(method=method, epochs=6, retrain_epochs=0, **fields).validate()
    assert len({label for label, *_ in script.SETTINGS}) == len(script.SETTINGS)


def test_structured_filter_continue_refuses_rows_of_other_epochs(monkeypatch, tmp_path):
    script = _script(monkeypatch, tmp_path, "structured_filter")
    monkeypatch.setattr(script, "ratio_for_mac_reduction", lambda model, factor: (0.5, 1000, 500))
    _fake_runs(monkeypatch, script, {"hard_pruned_accuracy": 88.0, "retrain_accuracy": [89.0],
                                     "report": {"macs_dense": 1000, "macs_structural": 500}})
    _main(monkeypatch, script, "--seeds", "0", "--factors", "2")
    with pytest.raises(SystemExit, match="--prune-epochs 6 --retrain-epochs 3"):
        _main(monkeypatch, script, "--seeds", "1", "--factors", "2", "--retrain-epochs", "5", "--continue")


def test_bcnn_accuracy_names_the_compiled_rows_by_dataset(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    script = importlib.import_module("bcnn_accuracy")
    runs = [{"model": "nin", "dataset": "modulation", "seed": 0},
            {"model": "nin", "dataset": "fashion-mnist", "seed": 0, "compiled": True}]
    text = script._compiled_text(runs)
    assert "nin on fashion-mnist seed 0" in text and "modulation" not in text
    assert script._compiled_text(runs[:1]) == ""


def test_structured_retrain_free_trains_vgg16_rows_in_bf16_and_resnet20_rows_in_fp32(monkeypatch, tmp_path):
    """Every training of a model's rows, its dense model's included, runs in that model's PRECISION (a VGG-16 row
    in float32 would not be comparable with its bf16 dense model), and the dense files of the two precisions
    never share a cache directory."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("structured_retrain_free", None)
    script = importlib.import_module("structured_retrain_free")
    dense_configs, prune_configs = {}, []
    monkeypatch.setattr(script, "train_cached", lambda config, path: dense_configs.setdefault(path.name, config))
    monkeypatch.setattr(script, "prune_run", lambda init, plan, config, inspect: prune_configs.append(config) or {})
    for name in ("resnet20", "vgg16"):
        script.dense_checkpoint(name)
        script.prunus_row(tmp_path / "dense", None, "slr", 0, script.PRECISION[name])
    assert {k: c.precision for k, c in dense_configs.items()} == {"dense-resnet20-e10-32": "fp32",
                                                                   "dense-vgg16-w0.5-bf16-e10-32": "bf16"}
    assert [c.precision for c in prune_configs] == ["fp32", "bf16"]


def test_structured_retrain_free_trains_torch_pruning_rows_in_the_models_precision(monkeypatch, tmp_path):
    """The Torch-Pruning rows' two trainings (regularised or masked, then retraining) run in the precision they are
    given, as the prunus rows do: a tp row in float32 beside bf16 prunus rows would not be an equal budget."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("structured_retrain_free", None)
    script = importlib.import_module("structured_retrain_free")
    precisions = []

    class Pruner:
        def step(self):
            pass

    class Trainer:
        def __init__(self, model, train_set, test_set, config, run_dir, hooks, console):
            precisions.append(config.precision)

        def fit(self):
            return [{"test_accuracy": 50.0}]

    monkeypatch.setattr(script, "load_model", lambda init: (build_model("lenet5"), None))
    monkeypatch.setattr(script, "evaluate", lambda model, test_set: {"accuracy": 50.0})
    monkeypatch.setattr(script, "tp_pruner", lambda method, model, plan: Pruner())
    monkeypatch.setattr(script, "Trainer", Trainer)
    monkeypatch.setattr(script, "recalibrate_batchnorm", lambda *args, **kwargs: None)
    monkeypatch.setattr(script, "small_model_stats", lambda model: {})
    for method, precision in (("tp-l1", "bf16"), ("tp-groupnorm", "bf16"), ("tp-growingreg", "fp32")):
        script.tp_row(tmp_path / "dense", None, method, 0, None, None, precision)
    assert precisions == ["bf16", "bf16", "bf16", "bf16", "fp32", "fp32"]


def test_retrain_lr_pairs_each_pruning_with_both_retraining_lrs_and_continues(monkeypatch, tmp_path):
    """retrain_lr.py: per plan, two runs whose configs differ only in retrain_lr (the pruning lr, then a tenth of
    it); --continue adds only the missing rows; the last column is the best retrained minus the hard-pruned."""
    import dataclasses
    import json

    script = _script(monkeypatch, tmp_path, "retrain_lr")
    monkeypatch.setattr(script, "ratio_for_macs", lambda model, structure, target, probe: (0.5, 500))
    monkeypatch.setattr(script, "load_dataset", lambda *a, **k: None)
    configs, limit = [], [3]

    def prune_run(init, plan, config, **extra):
        if len(configs) == limit[0]:
            raise Killed
        configs.append(config)
        return {**extra, "seed": config.seed, "hard_pruned_accuracy": 90.0,
                "retrain_accuracy": [89.0, 90.5, 90.25] if config.retrain_lr == 1e-3 else [90.1, 90.2, 90.3]}

    monkeypatch.setattr(script, "prune_run", prune_run)
    with pytest.raises(Killed):
        _main(monkeypatch, script)
    assert [c.retrain_lr for c in configs] == [1e-3, 1e-4, 1e-3]
    first, second = (dataclasses.asdict(c) for c in configs[:2])
    assert {k for k in first if first[k] != second[k]} == {"retrain_lr"}

    configs.clear()
    limit[0] = 99
    _main(monkeypatch, script, "--continue")
    assert [c.retrain_lr for c in configs] == [1e-4, 1e-3, 1e-4]  # filter 4x at 1e-4, then column 4x
    data = json.loads((tmp_path / "results" / "retrain_lr.json").read_text())
    assert [(r["structure"], r["target"], r["retrain_lr"]) for r in data["runs"]] == [
        ("filter", 2.0, 1e-3), ("filter", 2.0, 1e-4), ("filter", 4.0, 1e-3), ("filter", 4.0, 1e-4),
        ("column", 4.0, 1e-3), ("column", 4.0, 1e-4)]
    table = (tmp_path / "results" / "retrain_lr.md").read_text()
    assert "| filter | 2x fewer | 0.001 | 90.00 | 89.00 | 90.50 | 90.25 | +0.50 |" in table
    assert "| column | 4x fewer | 0.0001 | 90.00 | 90.10 | 90.20 | 90.30 | +0.30 |" in table
    assert ("After 3 epochs, lr 0.0001 minus lr 0.001: filter 2x seed 0 +0.05 pt; filter 4x seed 0 +0.05 pt; "
            "column 4x seed 0 +0.05 pt. The tenth of the lr ends ahead in 3 of 3 plans.") in table


def test_privacy_targets_prune_alone_at_every_mcmia_compression_and_new_rows_keep_the_old(monkeypatch):
    """Issue 22's equal-compression rows: on each target, every MCMIA compression has an SLR and a magnitude row.
    Compressions are lists of rows, so a target given more of them keeps its recorded runs under --continue,
    while a changed pruning recipe drops the pruning rows only."""
    import copy

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("privacy_mia", None)
    bench = importlib.import_module("privacy_mia")
    for target in bench.TARGETS.values():
        budget = bench.Budget.of(target)
        names = {r.name for r in bench.rows(budget)}
        for c in target.game_compressions():
            mcmia = "mcmia" if c == target.game_compressions()[0] else f"mcmia-{c}x"
            assert {mcmia, f"prune-slr-{c}x", f"prune-magnitude-{c}x"} <= names, (target.key, c)
    target = bench.TARGETS["resnet20-modulation"]
    assert target.game_compressions() == (10, 8, 4, 2)
    fewer = bench.Budget.of(bench.dataclasses.replace(target, compressions=(8, 10), mcmia_compressions=(10, 8),
                                                      rows=None))
    runs = [{"row": name} for name in ("undefended", "prune-slr-8x", "mcmia", "dpsgd-target-eps64")]
    data = {"setup": bench.setup(fewer), "runs": runs}
    budget = bench.Budget.of(target)
    assert bench.still_valid(data, budget) == runs
    changed = copy.deepcopy(data)
    changed["setup"]["prune"]["epochs"] += 1
    assert [r["row"] for r in bench.still_valid(changed, budget)] == ["undefended", "dpsgd-target-eps64"]


def test_privacy_resnet20_fine_tunes_to_lr_zero_and_lenet5_keeps_its_recorded_recipe(monkeypatch):
    """The ResNet-20 target's pruning and MCMIA rows run SLR on the budget schedule and fine-tune on a schedule that
    ends at lr 0, which reaches their DefenseConfig, the PruneConfig and the setup (so its runs of the paper's recipe
    are dropped by --continue); LeNet-5's setup has no such keys, so its committed runs stay valid."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("privacy_mia", None)
    bench = importlib.import_module("privacy_mia")
    resnet = bench.Budget.of(bench.TARGETS["resnet20-modulation"])
    slr = next(r for r in bench.rows(resnet) if r.name == "prune-slr-2x")
    config = bench.defense_config(slr, 0, resnet)
    assert config.retrain_schedule == "cosine-step"
    assert config.prune_config().retrain_config().schedule == "cosine-step"
    assert bench.setup(resnet)["prune"]["retrain_schedule"] == "cosine-step"
    assert config.prune_recipe == "budget" and config.prune_config().rho_schedule == "budget"
    assert bench.setup(resnet)["prune"]["prune_recipe"] == "budget"
    old = {"setup": {**bench.setup(resnet), "prune": {k: v for k, v in bench.setup(resnet)["prune"].items()
                                                        if k != "retrain_schedule"}},
           "runs": [{"row": "undefended"}, {"row": "prune-slr-2x"}, {"row": "mcmia"}, {"row": "relaxloss-a0.5"}]}
    assert [r["row"] for r in bench.still_valid(old, resnet)] == ["undefended", "relaxloss-a0.5"]
    assert "with the lr decayed every step to 0" in bench.rows_text(bench.setup(resnet))

    lenet = bench.Budget.of(bench.TARGETS["lenet5-fashion-mnist"])
    assert not {"retrain_schedule", "prune_recipe"} & set(bench.setup(lenet)["prune"])
    committed = json.loads((BENCHMARKS / "results" / "privacy_mia.json").read_text())
    kept = bench.still_valid(committed, lenet)
    assert kept is not None and len(kept) == len(committed["runs"])
    assert bench.defense_config(next(r for r in bench.rows(lenet) if r.name == "prune-slr-10x"), 0,
                                lenet).retrain_schedule == "constant"
    assert "masked fine-tuning epochs at that lr" in bench.rows_text(bench.setup(lenet))
    assert ("8 epochs with the method (SLR/ADMM: fixed ρ, a round per epoch, the penalty on every weight; magnitude: "
            "pruned at the start, these epochs with the mask), hard-prune") in bench.rows_text(bench.setup(lenet))
    assert "(SLR/ADMM: prunus prune's schedule" in bench.rows_text(bench.setup(resnet))


def test_privacy_adaptive_audits_of_pruned_rows_start_from_the_bank_where_its_halves_are_theirs(monkeypatch):
    """ResNet-20 (a bank of 8 references, 8 adaptive ones): the pruned rows' adaptive references prune the bank's
    models, and an audit recorded before that runs again; LeNet-5 (16 vs 8: other halves) keeps its records."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("privacy_mia", None)
    bench = importlib.import_module("privacy_mia")
    done = {"attacks_run": list(bench.ADAPTIVE_ATTACKS), "reference_models": 8}
    resnet = bench.Budget.of(bench.TARGETS["resnet20-modulation"])
    by_name = {r.name: r for r in bench.adaptive_rows(resnet)}
    assert bench.dense_starts(by_name["mcmia"], resnet) and not bench.dense_starts(by_name["relaxloss-a0.5"], resnet)
    assert bench.needs_adaptive({"row": "mcmia", "adaptive": done}, resnet)
    assert not bench.needs_adaptive({"row": "mcmia", "adaptive": {**done, "dense_starts": True}}, resnet)
    assert not bench.needs_adaptive({"row": "relaxloss-a0.5", "adaptive": done}, resnet)
    assert not bench.needs_adaptive({"row": "prune-slr-2x"}, resnet)  # not a row the adaptive attacker audits
    assert set(by_name) == {"prune-slr-10x", "mcmia", "mcmia-8x", "mcmia-4x", "mcmia-2x", "relaxloss-a0.5"}
    assert bench.needs_adaptive({"row": "mcmia-2x"}, resnet)  # every MCMIA row: the goal is judged on each
    lenet = bench.Budget.of(bench.TARGETS["lenet5-fashion-mnist"])
    assert not any(bench.dense_starts(r, lenet) for r in bench.adaptive_rows(lenet))
    committed = json.loads((BENCHMARKS / "results" / "privacy_mia.json").read_text())
    audited = [r for r in committed["runs"] if r.get("adaptive")]
    assert audited and not any(bench.needs_adaptive(r, lenet) for r in audited)
    attacks = {a: {"auc": 0.6, "tpr_at_0.1pct_fpr": 0.01} for a in ("lira-online", "rmia-online")}
    record = {"row": "mcmia", "defense": "mcmia", "attacks": attacks,
              "adaptive": {**done, "dense_starts": True, "attacks": attacks}}
    text = "\n".join(bench.adaptive_lines({"mcmia": [record]}, {}))
    assert "(pruned rows: the non-adaptive bank's reference model of the same half, then the same pruning)" in text


def test_privacy_goal_compares_with_dp_sgd_on_the_tpr_it_judges(monkeypatch):
    """The DP-SGD comparison is on the strongest attack's TPR at 0.1% FPR (in %), and says so; a DP-SGD that never
    reaches the MCMIA row's accuracy leaves the comparison undetermined instead of deciding it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("privacy_mia", None)
    bench = importlib.import_module("privacy_mia")
    dp = bench.dp_front([(80.0, 0.5, "dpsgd-a", 0.05), (84.0, 1.0, "dpsgd-b", 0.05), (82.0, 1.5, "dpsgd-c", 0.05)])
    assert [d[2] for d in dp] == ["dpsgd-a", "dpsgd-b"]  # c: less accurate and leakier than b
    below = bench.compare_with_dp(82.0, 0.25, 0.05, dp)
    assert below["met"] is True and below["value"].startswith("0.25% vs 0.75% (DP-SGD interpolated")
    above = bench.compare_with_dp(90.0, 2.0, 0.05, dp)
    assert above["met"] is None and "best dpsgd-b: 84.00%, TPR 1.00%" in above["value"]


def test_privacy_claims_on_one_seed_say_the_verdict_has_no_error_estimate(monkeypatch):
    """With three seeds a claim's difference must exceed two standard errors; with one there is no spread, so the
    verdict is marked as such instead of reading like a settled one."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("privacy_claims", None)
    claims = importlib.import_module("privacy_claims")

    def runs(*accuracies):
        return [{"attacks": {"loss": {"balanced_accuracy": a}}} for a in accuracies]

    one = claims.claim_lines({"undefended": runs(0.7074), "prune-slr-2x": runs(0.7070)}, {})
    assert one[-1].endswith("-> **met** (one seed: no spread known, so any difference counts)")
    three = claims.claim_lines({"undefended": runs(0.70, 0.72, 0.71), "prune-slr-2x": runs(0.69, 0.72, 0.70)}, {})
    assert three[-1].endswith("-> **tie**")
