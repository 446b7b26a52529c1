"""`prunus bcnn bench|verify`, BCNN training and SLR filter pruning through the existing commands."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_user_error, run_cli

from prunus.errors import ConfigError
from prunus.io import save_checkpoint

numba = pytest.importorskip("numba")






def tiny_checkpoint(path, name="cnin_small", options=None, in_channels=1, dataset="digits", size=28):
    torch.manual_seed(0)
    from prunus.models import build_model

    options = {"width": 0.25} if options is None else options
    model = build_model(name, in_channels=in_channels, num_classes=10, **options)
    model.train()
    with torch.no_grad():  # realistic BN statistics
        model(torch.randn(16, in_channels, size, size))
    meta = {"model": {"name": name, "in_channels": in_channels, "num_classes": 10, "options": options},
            "dataset": {"name": dataset, "image_size": size}, "epoch": 0}
    return save_checkpoint(path, model.state_dict(), {}, meta)


def test_bench_prints_throughput_latency_and_bit_macs(capsys, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    code, out, err = run_cli(capsys, "bcnn", "bench", "--model", "nin", "--checkpoint", ckpt, "--batch-sizes", "1,3",
                             "--repeats", "2", "--warmup", "0", "--threads", "1")
    assert code == 0, err
    assert "cnin_small" in out and "input 1x28x28" in out and "1 threads" in out
    assert "bit-exact: engine logits == PyTorch forward on 8 random inputs: yes" in out
    assert "popcount ceiling:" in out and "Gbit-MAC/s" in out and "bit-MACs per image:" in out
    for column in ("frames/s", "of ceiling", "pytorch frames/s", "speed-up", "body.3", "threshold"):
        assert column in out
    assert "latency (batch 1): median" in out
    rows = [line for line in out.splitlines() if line.strip("│ ").startswith(("1 ", "3 "))]
    assert len(rows) == 2


def test_bench_json_structure(capsys, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", "cresnet_small", {"width": 0.5})
    code, out, err = run_cli(capsys, "bcnn", "bench", "--checkpoint", ckpt, "--batch-sizes", "2", "--repeats", "1",
                             "--warmup", "0", "--threads", "1", "--no-ceiling", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["exact"] is True and result["image_size"] == 28 and result["ceiling_bit_macs_per_s"] is None
    assert [r["batch_size"] for r in result["engine"]] == [2] and result["engine"][0]["fps"] > 0
    assert result["torch_fp32"][0]["batch_size"] == 2 and result["bit_macs_per_image"] > 0
    assert {layer["name"] for layer in result["layers"]} >= {"body.0.conv1", "body.1.shortcut"}


def test_bench_random_model_without_checkpoint(capsys):
    code, out, err = run_cli(capsys, "bcnn", "bench", "--model", "resnet_small", "--image-size", "28",
                             "--in-channels", "2",
                             "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-torch",
                             "--no-ceiling")
    assert code == 0, err
    assert "cresnet_small (random weights)" in out and "input 2x28x28" in out


@pytest.mark.parametrize(("make", "args", "fragments"), [
    (None, ["bcnn", "bench", "--checkpoint", "{tmp}/missing"], ["{tmp}/missing", "does not exist"]),
    ("lenet5", ["bcnn", "bench", "--checkpoint", "{tmp}/ckpt"], ["BCNN engine", "not a LeNet5"]),
    ("cnin_fp", ["bcnn", "bench", "--checkpoint", "{tmp}/ckpt"], ["full precision"]),
    ("cnin_small", ["bcnn", "bench", "--model", "resnet18", "--checkpoint", "{tmp}/ckpt"],
     ["does not match", "cnin_small"]),
    (None, ["bcnn", "bench", "--model", "alexnet"], ["alexnet"]),
    (None, ["bcnn", "bench"], ["--checkpoint", "--model"]),
    (None, ["bcnn", "bench", "--model", "nin", "--batch-sizes", "1,x"], ["batch-sizes"]),
    (None, ["bcnn"], ["train, prune, int8-stem, evaluate or bench"]),
    ("lenet5", ["bcnn", "verify", "{tmp}/ckpt"], ["not a LeNet5"]),
    ("lenet5", ["bcnn", "evaluate", "{tmp}/ckpt"], ["not a LeNet5"]),
    (None, ["bcnn", "train", "--model", "lenet5", "--out", "{tmp}/x"], ["--model lenet5", "not a BCNN model"]),
    (None, ["bcnn", "train", "--model", "nin_small", "--fp", "--out", "{tmp}/x"], ["--fp", "not a BCNN model"]),
    (None, ["bcnn", "train", "--model", "nin"], ["--out RUN_DIR"]),
    (None, ["bcnn", "train", "--model", "nin", "--fp", "--binary-stem", "--out", "{tmp}/x"], ["--binary-stem", "--fp"]),
    ("lenet5", ["bcnn", "prune", "--init", "{tmp}/ckpt", "--out", "{tmp}/x"], ["lenet5 is not a complex (BCNN) model"]),
    ("cnin_small", ["bcnn", "prune", "--init", "{tmp}/ckpt", "--compression", "1", "--out", "{tmp}/x"],
     ["--compression must be above 1"]),
    ("cnin_small", ["bcnn", "prune", "--init", "{tmp}/ckpt", "--compression", "500", "--out", "{tmp}/x"],
     ["500x fewer live weights is out of reach", "would remove all"]),
    ("cnin_small", ["bcnn", "prune", "--init", "{tmp}/ckpt", "--bn-reestimate", "-1", "--out", "{tmp}/x"],
     ["--bn-reestimate must be a whole number of training frames >= 0, got -1"]),
])
def test_user_errors_are_one_line_exit_2(capsys, tmp_path, make, args, fragments):
    if make == "lenet5":
        from prunus.models import build_model

        model = build_model("lenet5", in_channels=1)
        save_checkpoint(tmp_path / "ckpt", model.state_dict(), {}, {
            "model": {"name": "lenet5", "in_channels": 1, "num_classes": 10, "options": {}},
            "dataset": {"name": "digits", "image_size": 28}, "epoch": 0})
    elif make:
        tiny_checkpoint(tmp_path / "ckpt", make, {} if make == "cnin_fp" else None)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(capsys, *argv)
    assert_user_error(code, err, *[f.replace("{tmp}", str(tmp_path)) for f in fragments])
    assert not (tmp_path / "x").exists()


def test_train_slr_filter_prune_then_engine(capsys, tmp_path):
    """A BCNN trains with the reference loop, SLR prunes whole complex filters, the engine runs the result exactly."""
    dense, pruned = tmp_path / "dense", tmp_path / "slr"
    code, out, err = run_cli(capsys, "train", "--model", "cnin_small", "--width", "0.25", "--dataset", "digits",
                             "--epochs", "2", "--optimizer", "adam", "--lr", "0.005", "--batch-size", "64",
                             "--out", dense)
    assert code == 0, err
    code, out, err = run_cli(capsys, "prune", "--method", "slr", "--init", dense, "--ratio", "0.75", "--structure",
                             "filter", "--epochs", "1", "--retrain-epochs", "1", "--batch-size", "64", "--out", pruned)
    assert code == 0, err
    assert "compression 4.0x" in out
    results = json.loads((pruned / "results.json").read_text())
    assert {"dense_accuracy", "hard_pruned_accuracy", "retrain_accuracy"} <= set(results)
    code, out, err = run_cli(capsys, "bcnn", "verify", pruned / "retrain", "--samples", "120")
    assert code == 0, err
    assert "engine logits equal PyTorch's exactly on 120/120" in out

    from prunus.bcnn.engine import compile_engine
    from prunus.models.loading import load_model

    model, _ = load_model(pruned / "retrain")
    engine = compile_engine(model, 28)
    for op, info in zip(engine.program.bconvs(), engine.layers()):
        conv = model.get_submodule(op.name).conv
        kept = int((conv.conv.weight.flatten(1) != 0).any(1).sum())
        assert kept == conv.out_channels // 4  # 75% of the complex filters pruned, real and imaginary together
        assert info.out_channels == 2 * kept  # ... and physically gone from the packed weights


def test_bcnn_train_prune_evaluate_end_to_end(capsys, tmp_path):
    """`prunus bcnn train`, `prune --compression 6` (live weights), `evaluate`: the counts hold and the engine
    agrees."""
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    code, out, err = run_cli(capsys, "bcnn", "train", "--model", "nin_small", "--width", "0.25", "--dataset", "digits",
                             "--epochs", "2", "--lr", "0.005", "--batch-size", "64", "--out", dense)
    assert code == 0, err
    assert "cnin_small: test accuracy" in out
    config = json.loads((dense / "config.json").read_text())["config"]
    assert (config["optimizer"], config["weight_decay"], config["augment"], config["channels_last"]) == \
        ("adam", 0.0, False, True)
    code, out_prune, err = run_cli(capsys, "bcnn", "prune", "--init", dense, "--compression", "6", "--epochs", "1",
                                   "--retrain-epochs", "1", "--batch-size", "64", "--update-every", "10",
                                   "--out", pruned)
    assert code == 0, err
    results = json.loads((pruned / "results.json").read_text())
    b = results["bcnn"]
    assert b["live_compression"] >= 6 and f"{b['live_compression']:.1f}x fewer live weights" in out_prune
    # a BCNN's recipe: SLR's penalty as a proximal step (Adam), retraining on a decaying lr
    assert results["config"]["options"] == {"penalty_step": "proximal"}
    assert results["config"]["retrain_schedule"] == "cosine-step"
    assert results["config"]["retrain_lr"] == results["config"]["lr"] == 1e-3  # the full lr: binary weights flip

    from prunus.bcnn.engine import compile_engine
    from prunus.bcnn.pruning import RATIO_GRID, filter_plan, prune_to_live_compression
    from prunus.models.loading import load_model

    model, _ = load_model(pruned / "retrain")
    engine = compile_engine(model.eval(), 28, backend="fp32")
    assert sum(engine.live_weights().values()) == b["live_weights"]
    assert b["dense_weights"] / b["live_weights"] == b["live_compression"]
    dense_model, _ = load_model(dense)
    lower = RATIO_GRID[RATIO_GRID.index(b["ratio"]) - 1]  # the smallest grid ratio that reaches 6x
    with pytest.raises(ConfigError, match=f"even filter ratio {lower} leaves more live weights"):
        prune_to_live_compression(dense_model.eval(), lambda r: filter_plan(dense_model, r), 6,
                                  torch.zeros(2, 1, 28, 28), grid=(lower,))
    code, out, err = run_cli(capsys, "bcnn", "evaluate", pruned / "retrain")
    assert code == 0, err
    assert "engine logits equal PyTorch's exactly on 359/359" in out

    # OUT/deployed: the same weights, BatchNorm statistics re-estimated one at a time, its accuracy as recorded
    from prunus.data import load_dataset
    from prunus.harden.batchnorm import reestimate_batchnorm
    from prunus.train.trainer import evaluate

    deployed, ckpt = load_model(pruned / "deployed")
    train_set, test_set = (load_dataset("digits", split) for split in ("train", "test"))
    assert len(train_set) < 4096  # the record says how many frames it really used
    assert ckpt.meta["bn_reestimated"] == {"from": "retrain", "frames": len(train_set), "seed": 0}
    assert b["bn_reestimate_frames"] == len(train_set)
    weights = {k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(deployed.state_dict()[k], v) for k, v in weights.items())
    assert b["as_trained_accuracy"] == evaluate(model, test_set)["accuracy"] == results["retrain_accuracy"][-1]
    assert b["bn_reestimated_accuracy"] == evaluate(deployed, test_set)["accuracy"]
    assert reestimate_batchnorm(model, train_set, frames=4096, seed=0) == len(train_set)
    assert all(torch.equal(deployed.state_dict()[k], v) for k, v in model.state_dict().items())
    assert f"deployed (BatchNorm re-estimated) {b['bn_reestimated_accuracy']:.2f}%" in out_prune
    code, out, err = run_cli(capsys, "bcnn", "evaluate", pruned / "deployed")
    assert code == 0, err
    assert "engine logits equal PyTorch's exactly on 359/359" in out


def test_bcnn_train_binary_stem(capsys, tmp_path):
    run = tmp_path / "binstem"
    code, out, err = run_cli(capsys, "bcnn", "train", "--model", "nin_small", "--binary-stem", "--width", "0.25",
                             "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--out", run)
    assert code == 0, err
    assert (json.loads((run / "config.json").read_text())["config"]["model_options"]
            == {"width": 0.25, "fp_first": False})
    code, out, err = run_cli(capsys, "bcnn", "evaluate", run, "--samples", "100")
    assert code == 0 and "exactly on 100/100" in out


def test_live_compression_reaches_low_targets_at_the_smallest_grid_ratio():
    """The ratio grid reaches down to 2x live weights (a compression sweep needs them), at the smallest ratio."""
    from prunus.bcnn.pruning import RATIO_GRID, filter_plan, prune_to_live_compression
    from prunus.models import build_model

    torch.manual_seed(0)
    model = build_model("cnin", in_channels=1, width=0.25).eval()
    example = torch.zeros(2, 1, 28, 28)
    _, counts = prune_to_live_compression(model, lambda r: filter_plan(model, r), 2.0, example)
    assert counts["compression"] >= 2.0 and counts["ratio"] < 0.5
    lower = RATIO_GRID[RATIO_GRID.index(counts["ratio"]) - 1]
    with pytest.raises(ConfigError, match=f"even filter ratio {lower} leaves more live weights"):
        prune_to_live_compression(model, lambda r: filter_plan(model, r), 2.0, example, grid=(lower,))
