"""`prunus prune` end to end: real data, exact sparsity, zeros that stay zero, and its error paths."""

import dataclasses
import json
import math

import pytest
import torch
from helpers import assert_user_error, run_cli

from prunus.cli import main
from prunus.data import load_dataset
from prunus.jobs.prune import MIN_ROUNDS, PruneConfig
from prunus.models.loading import load_model
from prunus.train.config import TrainConfig
from prunus.train.run import train


def test_prune_cli_end_to_end(capsys, tmp_path, dense_digits):
    out = tmp_path / "pruned"
    code, stdout, _ = run_cli(
        capsys, "prune", "--method", "slr", "--init", str(dense_digits), "--compression", "10",
        "--epochs", "3", "--update-every", "10", "--retrain-epochs", "2", "--batch-size", "32", "--out", str(out),
    )
    assert code == 0
    assert "dense:" in stdout and "hard-pruned (slr, no retraining)" in stdout
    results = json.loads((out / "results.json").read_text())
    assert len(results["retrain_accuracy"]) == 2
    assert results["hard_pruned_accuracy"] >= results["dense_accuracy"] - 15
    # exactly 90% of conv2, fc1 and fc2 are zero, in the report and in the retrained weights
    layers = {entry["name"]: entry for entry in results["report"]["layers"]}
    assert set(layers) == {"conv2.weight", "fc1.weight", "fc2.weight"}
    assert [layers[n]["zeros"] for n in ("conv2.weight", "fc1.weight", "fc2.weight")] == [2160, 43200, 9072]
    assert results["report"]["compression"] == pytest.approx(10.0)
    model, _ = load_model(out / "retrain")
    hard, _ = load_model(out / "hard-pruned")
    for name in layers:
        pruned = dict(hard.named_parameters())[name] == 0
        retrained = dict(model.named_parameters())[name]
        assert torch.all(retrained[pruned] == 0), f"{name}: a pruned weight came back during retraining"
    # prunus eval of the retrained run gives the accuracy the run reported
    code, stdout, _ = run_cli(capsys, "eval", str(out / "retrain"), "--json")
    assert json.loads(stdout)["accuracy"] == pytest.approx(results["retrain_accuracy"][-1], abs=1e-6)
    # without --retrain-lr the retraining fine-tunes at a tenth of --lr (1e-3), constant
    epochs = [json.loads(line) for line in (out / "retrain" / "metrics.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in epochs] == [pytest.approx(1e-4)] * 2
    # the run records that lr itself, so a resume does not depend on the default of the day
    assert json.loads((out / "job.json").read_text())["config"]["retrain_lr"] == pytest.approx(1e-4)
    assert results["config"]["retrain_lr"] == pytest.approx(1e-4)


def test_retraining_lr_defaults_to_a_tenth_of_the_pruning_lr_except_where_a_recipe_was_measured_at_lr():
    """prunus prune fine-tunes at lr / 10 unless --retrain-lr is given; the privacy defenses keep the recipe
    their benchmark measured (retraining at the pruning lr)."""
    from prunus.jobs.prune import RETRAIN_LR_FACTOR
    from prunus.privacy.defenses.config import DefenseConfig

    assert RETRAIN_LR_FACTOR == 0.1
    assert PruneConfig(lr=0.05).retrain_config().lr == pytest.approx(0.005)
    assert PruneConfig(lr=0.05, retrain_lr=0.02).retrain_config().lr == 0.02
    defense = DefenseConfig(method="slr", lr=0.002)
    assert defense.prune_config().retrain_config().lr == 0.002
    assert DefenseConfig(method="slr", lr=0.002, retrain_lr=3e-4).prune_config().retrain_config().lr == 3e-4


def test_a_run_written_before_the_retraining_default_changed_resumes_at_the_lr_it_started_with(tmp_path):
    """job.json of a run started when masked retraining defaulted to the pruning lr records retrain_lr null:
    resumed, it must go on at that lr, not at today's tenth of it."""
    from prunus.jobs.common import write_job
    from prunus.jobs.prune import read_prune_job
    from prunus.plan.recipe import Plan

    plan = Plan.from_dict({"prune": {"fc1.weight": {"structure": "unstructured", "ratio": 0.9}}})
    write_job(tmp_path, "prune", tmp_path / "dense", plan=plan.to_dict(),
              config={**dataclasses.asdict(PruneConfig(lr=0.002)), "retrain_lr": None})
    _, _, config = read_prune_job(tmp_path)
    assert config.retrain_lr == 0.002 and config.retrain_config().lr == 0.002


def test_prune_precision_bf16_reaches_the_pruning_and_retraining_phases(capsys, tmp_path, dense_digits):
    """--precision bf16 autocasts every phase's forward pass: the run records it and its weights differ from the
    same seed's float32 run (which is deterministic), while the zeros are the same count."""
    def prune(precision: str, name: str):
        out = tmp_path / name
        code, _, _ = run_cli(capsys, "prune", "--method", "slr", "--init", str(dense_digits), "--compression", "10",
                             "--epochs", "1", "--update-every", "10", "--retrain-epochs", "1", "--batch-size", "32",
                             "--precision", precision, "--out", str(out))
        assert code == 0
        return json.loads((out / "results.json").read_text()), load_model(out / "retrain")[0]

    (r32, m32), (_, m32b), (r16, m16) = prune("fp32", "a"), prune("fp32", "b"), prune("bf16", "c")
    assert r32["config"]["precision"] == "fp32" and r16["config"]["precision"] == "bf16"
    w32, w32b, w16 = (dict(m.named_parameters())["fc1.weight"] for m in (m32, m32b, m16))
    assert torch.equal(w32, w32b)
    assert not torch.equal(w32, w16)
    assert int((w16 == 0).sum()) == int((w32 == 0).sum()) == 43200


def test_slr_keeps_accuracy_on_fashion_mnist(tmp_path):
    """Real data floor: SLR at 10x on a 3-epoch dense LeNet-5 loses little without retraining."""
    dense = train(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=3), tmp_path / "dense")
    dense_acc = dense.history[-1]["test_accuracy"]
    assert dense_acc >= 86.0
    code = main(["prune", "--method", "slr", "--init", str(tmp_path / "dense"), "--compression", "10", "--global",
                 "--epochs", "2", "--update-every", "100", "--retrain-epochs", "0", "--out", str(tmp_path / "slr")])
    assert code == 0
    results = json.loads((tmp_path / "slr" / "results.json").read_text())
    assert results["hard_pruned_accuracy"] >= dense_acc - 1.5, results["hard_pruned_accuracy"]
    assert results["report"]["compression"] == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--ratio", "1.3"], ["ratio must be a number in [0, 1)"]),
        (["--compression", "0.5"], ["--compression"]),
        (["--ratio", "0.5", "--structure", "banana"], ["banana"]),
        (["--ratio", "0.5", "--method", "slr", "--epochs", "0"], ["--epochs"]),
        ([], ["--recipe", "--ratio"]),
        (["--ratio", "0.5", "--model", "vgg11"], ["--model vgg11 does not match"]),
        (["--ratio", "0.5", "--rho", "-1"], ["rho"]),
        (["--ratio", "0.5", "--round-to", "8"], ["round-to applies to filter and channel"]),
        (["--ratio", "0.5", "--precision", "fp16"], ["--precision", "fp16"]),
    ],
)
def test_prune_user_errors(capsys, tmp_path, dense_digits, args, fragments):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "prune", "--init", str(dense_digits), "--out", str(out), *args)
    assert_user_error(code, err, *fragments)
    assert not out.exists()


def test_prune_bad_recipe_names_entry_and_writes_nothing(capsys, tmp_path, dense_digits):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("prune:\n  conv2.weight: {structure: filter, ratio: 0.5}\n  fc9.weight: {ratio: 0.9}\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "prune", "--init", str(dense_digits), "--recipe", str(recipe), "--out", str(out))
    assert_user_error(code, err, str(recipe), "'fc9.weight' matches no parameter")
    assert not out.exists()


def test_reweighted_prune_then_quantize_cli(capsys, tmp_path, dense_digits):
    """prune --method reweighted, then quantize --bits 4 --method slr: zeros kept, levels, a file that reloads
    exactly."""
    pruned = tmp_path / "rw"
    code, stdout, _ = run_cli(capsys, "prune", "--method", "reweighted", "--init", str(dense_digits),
                              "--compression", "10",
                              "--epochs", "3", "--retrain-epochs", "1", "--batch-size", "32", "--out", str(pruned))
    assert code == 0 and "hard-pruned (reweighted, no retraining)" in stdout
    results = json.loads((pruned / "results.json").read_text())
    assert results["report"]["compression"] == pytest.approx(10.0)
    assert results["hard_pruned_accuracy"] >= results["dense_accuracy"] - 10

    out = tmp_path / "q4"
    code, stdout, _ = run_cli(capsys, "quantize", "--init", str(pruned / "retrain"), "--bits", "4", "--method", "slr",
                              "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "32", "--rest", "int8",
                              "--out", str(out))
    assert code == 0
    q = json.loads((out / "results.json").read_text())
    assert q["scheme"] == "fixed:4" and q["reloaded_accuracy"] == q["final_accuracy"]
    assert q["final_accuracy"] >= q["input_accuracy"] - 10
    assert q["size"]["file_bytes"] == (out / "model.pcz").stat().st_size
    assert q["size"]["ratio"] > 30  # 10x fewer weights (first/last dense), 4-bit codes, positions, 8-bit biases
    source, _ = load_model(pruned / "retrain")
    model, _ = load_model(out / "quantized")
    src = dict(source.named_parameters())
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            assert torch.all(p[src[name] == 0] == 0), f"{name}: a pruned weight came back"
            assert len(torch.unique(p)) <= 15, f"{name}: more than 15 levels"
        else:  # --rest int8: biases on a power-of-two grid, at most 127 steps from 0
            step = 2.0 ** math.ceil(math.log2(float(p.abs().max()) / 127))
            assert torch.equal(p / step, torch.round(p / step)) and float((p / step).abs().max()) <= 127, name
    code, stdout, _ = run_cli(capsys, "eval", str(out / "model.pcz"), "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] == pytest.approx(q["final_accuracy"], abs=1e-9)


@pytest.mark.parametrize("args,fragment", [
    (["--bits", "9"], "2 to 8 bits"),
    (["--scheme", "int"], "cannot parse quantization 'int'"),
    (["--bits", "4", "--method", "magnitude"], "invalid choice"),
    (["--bits", "4", "--epochs", "0"], "--method slr needs --epochs >= 1"),
    (["--bits", "4", "--rest", "int4"], "invalid choice"),
])
def test_quantize_user_errors(capsys, tmp_path, dense_digits, args, fragment):
    out = tmp_path / "q"
    code, _, err = run_cli(capsys, "quantize", "--init", str(dense_digits), *args, "--out", str(out))
    assert_user_error(code, err, fragment)
    assert not out.exists()


def test_filter_prune_of_a_batchnorm_resnet_is_reproducible_and_reports_its_distances(capsys, tmp_path):
    """The same command twice gives the same bits; SLR constrains the BatchNorms with their filters, drives the
    distance to the set down by the budget, prints the per-tensor distances and reports BN recalibration apart."""
    train(TrainConfig(model="resnet20", dataset="digits", epochs=2, batch_size=64), tmp_path / "dense")
    runs = []
    for name in ("a", "b"):
        code, stdout, _ = run_cli(
            capsys, "prune", "--method", "slr", "--init", str(tmp_path / "dense"), "--ratio", "0.5", "--structure",
            "filter", "--epochs", "2", "--update-every", "5", "--retrain-epochs", "1", "--batch-size", "64",
            "--optimizer", "sgd", "--lr", "0.05",
            "--bn-recalibrate", "4", "--out", str(tmp_path / name))
        assert code == 0
        runs.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert "distance to the constraint set" in stdout and "layer1.0.bn2.weight" in stdout
    assert "+ BN recalibration" in stdout
    a, b = runs
    for key in ("dense_accuracy", "hard_pruned_accuracy", "bn_recalibrated_accuracy", "retrain_accuracy"):
        assert a[key] == b[key], key
    ma, _ = load_model(tmp_path / "a" / "retrain")
    mb, _ = load_model(tmp_path / "b" / "retrain")
    assert all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values()))
    history = a["method_history"]
    batches = math.ceil(len(load_dataset("digits", "train").labels) / 64)
    assert len(history) == 2 * batches // 5  # a round every 5 batches over 2 epochs
    assert "bn1.weight" in history[-1]["distances"] and "conv1.weight" in history[-1]["distances"]  # stem and BN
    assert history[-1]["distance"] < 0.2 * history[0]["distance"]
    assert history[-1]["rho"] > history[0]["rho"]  # grown by the budget
    assert max(h["rho"] for h in history) == pytest.approx(1 / 0.05)  # capped for SGD at 1 / lr: no divergence
    # BN channels were pruned with their filters: every zero filter has gamma = beta = 0 after the hard-prune
    hard, _ = load_model(tmp_path / "a" / "hard-pruned")
    conv, bn = hard.layer1[0].conv1, hard.layer1[0].bn1
    dead = conv.weight.flatten(1).abs().sum(1) == 0
    assert int(dead.sum()) == 8 and torch.all(bn.weight[dead] == 0) and torch.all(bn.bias[dead] == 0)


def test_default_round_spacing_gives_a_short_run_enough_rounds():
    """Without --update-every a run makes at least MIN_ROUNDS rounds, so the budget schedule can reach the set:
    3 epochs of the modulation task (86 batches each) made 2 rounds of 100 batches and hard-pruned a BCNN from a
    distance of 0.70 to chance accuracy."""
    short = PruneConfig(method="slr", epochs=3)
    assert short.rounds_every(86) == 21 and short.planned_rounds(86) == MIN_ROUNDS == 12
    assert PruneConfig(method="slr", epochs=6).rounds_every(469) == 100  # Fashion-MNIST: the method's spacing
    assert PruneConfig(method="slr", epochs=3, update_every=100).planned_rounds(86) == 2  # a given spacing is kept
    assert short.rounds_every() == 100  # no batch count known: the method's spacing
