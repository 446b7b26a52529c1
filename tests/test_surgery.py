"""Physical channel removal: same outputs, exact channel and parameter counts, coupled groups, checkpoints,
CLI, ONNX."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import assert_user_error, run_cli

from prunus.constraints.structures import num_pruned
from prunus.deploy.footprint import comparison_table, measure_footprint, weights_bytes
from prunus.deploy.surgery import remove_pruned_channels
from prunus.errors import CheckpointError, ConfigError, MissingDependencyError, SurgeryError
from prunus.harden.keepers import MaskKeeper
from prunus.harden.stats import count_macs
from prunus.io import save_checkpoint
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.models.shapes import apply_layer_shapes, layer_shapes
from prunus.plan.coupling import coupled_groups, project_coupled
from prunus.plan.projection import hard_prune
from prunus.plan.recipe import Plan

# (model, options, input size): small widths and inputs so that the file runs in seconds on 2 cores
ZOO = {
    "lenet5": ({}, 28),
    "vgg16": ({"width": 0.25}, 16),
    "resnet18": ({}, 8),
    "resnet20": ({}, 8),
    "resnet56": ({}, 8),
    "mobilenetv2": ({"width": 0.25}, 8),
}


def calibrated(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model in eval mode with non-trivial BatchNorms (random gamma/beta, running stats from train-mode
    forwards), so that a zero filter before a BN really becomes a nonzero constant; and an example input."""
    options, size = ZOO[name]
    torch.manual_seed(seed)
    model = build_model(name, in_channels=1, num_classes=10, **options)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
        model.train()
        for _ in range(3):
            model(torch.randn(8, 1, size, size))
    model.eval()
    return model, torch.randn(2, 1, size, size)


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def kept_rows(p: torch.Tensor) -> int:
    return int((p.detach().reshape(p.shape[0], -1) != 0).any(1).sum())


# -- surgery on the zoo ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ZOO))
def test_coupled_filter_pruning_is_removed_with_equal_outputs(name):
    model, x = calibrated(name)
    project_coupled(model, Plan.uniform(model, 0.5, "filter"), x)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    report = remove_pruned_channels(model, x)
    small = report.model

    # the model passed in is untouched, the new one is smaller and computes the same function
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    inputs = torch.randn(6, *x.shape[1:])
    assert max_diff(model, small, inputs) <= 1e-5
    assert report.max_abs_diff <= 1e-5 and report.checked_inputs == 5
    assert report.params_after < 0.5 * report.params_before
    assert report.params_after == sum(p.numel() for p in small.parameters())
    assert report.blocked == 0

    # every layer keeps exactly the output channels whose filter (or BN gamma) was kept
    masked, pruned = dict(model.named_modules()), dict(small.named_modules())
    for mod_name, m in masked.items():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            rows = torch.cat([m.weight.detach().reshape(m.weight.shape[0], -1)]
                             + ([m.bias.detach()[:, None]] if m.bias is not None else []), 1)
            out = pruned[mod_name].out_channels if isinstance(m, nn.Conv2d) else pruned[mod_name].out_features
            assert out == kept_rows(rows), mod_name
        elif isinstance(m, nn.BatchNorm2d):
            assert pruned[mod_name].num_features == int((m.weight != 0).sum()), mod_name
    for mod_name, m in pruned.items():
        if isinstance(m, nn.Conv2d) and masked[mod_name].groups > 1:  # depthwise stays depthwise
            assert m.groups == m.in_channels == m.out_channels == m.weight.shape[0], mod_name
    assert report.removed == sum(g.before - g.after for g in report.groups) > 0


def test_lenet_and_resnet20_parameter_counts_are_exact():
    """Halving every pruned layer gives closed-form parameter counts."""
    model, x = calibrated("lenet5")
    project_coupled(model, Plan.uniform(model, 0.5, "filter"), x)
    small = remove_pruned_channels(model, x).model
    # conv1 (first layer, kept) 6; conv2 16->8; fc1 120->60 reading 8*5*5; fc2 84->42; fc3 (last layer) 10
    expected = (6 * 25 + 6) + (8 * 6 * 25 + 8) + (60 * 8 * 25 + 60) + (42 * 60 + 42) + (10 * 42 + 10)
    assert sum(p.numel() for p in small.parameters()) == expected == 16416
    assert (small.conv2.out_channels, small.fc1.in_features, small.fc1.out_features,
            small.fc2.out_features) == (8, 200, 60, 42)

    model, x = calibrated("resnet20")
    project_coupled(model, Plan.uniform(model, 0.5, "filter"), x)
    small = remove_pruned_channels(model, x).model
    bn = lambda c: 2 * c  # noqa: E731
    stage1 = 8 * 9 + bn(8) + 3 * 2 * (8 * 8 * 9 + bn(8))  # the stem is coupled with stage 1's residual stream
    stage2 = (16 * 8 * 9 + 16 * 16 * 9 + 2 * bn(16) + 16 * 8 + bn(16)) + 2 * 2 * (16 * 16 * 9 + bn(16))
    stage3 = (32 * 16 * 9 + 32 * 32 * 9 + 2 * bn(32) + 32 * 16 + bn(32)) + 2 * 2 * (32 * 32 * 9 + bn(32))
    assert sum(p.numel() for p in small.parameters()) == stage1 + stage2 + stage3 + 10 * 32 + 10 == 68642


# -- which channels may go -------------------------------------------------------------------------------------------

STAGE1 = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
STAGE1_BN = ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]


def _zero_channel(model: nn.Module, convs, norms, c: int) -> None:
    with torch.no_grad():
        for n in convs:
            model.get_submodule(n).weight[c] = 0
        for n in norms:
            model.get_submodule(n).weight[c] = 0
            model.get_submodule(n).bias[c] = 0


def test_a_channel_not_zero_in_its_whole_group_is_never_removed():
    model, x = calibrated("resnet20")
    # zero in three of the four convs added into stage 1's residual stream: nothing may go
    _zero_channel(model, STAGE1[1:], STAGE1_BN[1:], 5)
    report = remove_pruned_channels(model, x)
    assert report.removed == 0 and report.model.conv1.out_channels == 16
    assert max_diff(model, report.model, x) <= 1e-5

    # zero everywhere but one weight of one conv whose BN passes it on (gamma 1, beta 0, mean 0): still nothing
    _zero_channel(model, STAGE1, STAGE1_BN, 5)
    with torch.no_grad():
        model.get_submodule("layer1.1.bn2").weight[5] = 1.0
        model.get_submodule("layer1.1.bn2").running_mean[5] = 0.0
        model.get_submodule("layer1.1.conv2").weight[5, 0, 1, 1] = 1e-3
    report = remove_pruned_channels(model, x)
    assert report.removed == 0 and report.blocked == 0

    # the same weight behind a BN with gamma = beta = 0 is zero wherever it is read: the channel goes
    with torch.no_grad():
        model.get_submodule("layer1.1.bn2").weight[5] = 0.0
    report = remove_pruned_channels(model, x)
    assert report.removed == 1 and report.model.conv1.out_channels == 15
    assert max_diff(model, report.model, torch.randn(4, 1, 8, 8)) <= 1e-5
    with torch.no_grad():
        model.get_submodule("layer1.1.conv2").weight[5, 0, 1, 1] = 0

    # filters zero everywhere, but one BN keeps a beta: the channel is a nonzero constant where it is read
    with torch.no_grad():
        model.get_submodule("layer1.1.conv2").weight[5, 0, 1, 1] = 0
        model.get_submodule("layer1.2.bn2").bias[5] = 0.3
    report = remove_pruned_channels(model, x)
    assert report.removed == 0 and report.blocked == 1
    assert report.groups[0].producers[0] == "conv1" and report.groups[0].blocked == 1

    # zero in the whole group: exactly that channel goes, from every member and every reader
    with torch.no_grad():
        model.get_submodule("layer1.2.bn2").bias[5] = 0
    report = remove_pruned_channels(model, x)
    assert report.removed == 1 and report.blocked == 0
    small = report.model
    for n in STAGE1:
        assert small.get_submodule(n).out_channels == 15, n
    for n in STAGE1_BN:
        assert small.get_submodule(n).num_features == 15, n
    for n in ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"]:
        assert small.get_submodule(n).in_channels == 15, n
    assert torch.equal(small.conv1.weight, torch.cat([model.conv1.weight[:5], model.conv1.weight[6:]]))
    assert max_diff(model, small, torch.randn(4, 1, 8, 8)) <= 1e-5


def test_per_tensor_filter_pruning_before_batchnorm_is_blocked_not_removed():
    """hard_prune zeroes filters but leaves BN: those channels are constants, so they are kept and counted."""
    model, x = calibrated("vgg16")
    plan = Plan.uniform(model, 0.5, "filter")
    hard_prune(model, plan.layout(model))
    report = remove_pruned_channels(model, x)
    zero_filters = sum(num_pruned(0.5, model.get_submodule(t.name.removesuffix(".weight")).out_channels)
                       for t in plan.resolve(model))
    assert report.removed == 0
    assert report.blocked == zero_filters == sum(g.zero_filters for g in report.groups) > 0
    assert report.params_after == report.params_before


def test_channel_pruning_removes_the_unread_producer_filters():
    """A consumer whose input channel c is zero makes the producer's (nonzero) filter c dead: it goes."""
    model, x = calibrated("vgg16")
    hard_prune(model, Plan.uniform(model, 0.5, "channel").layout(model))
    report = remove_pruned_channels(model, x)
    assert max_diff(model, report.model, torch.randn(4, *x.shape[1:])) <= 1e-5
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    small = dict(report.model.named_modules())
    for producer, consumer in zip(convs, convs[1:]):
        read = int((model.get_submodule(consumer).weight != 0).any(0).flatten(1).any(1).sum())
        assert small[producer].out_channels == small[consumer].in_channels == read, producer


class TwoBranchConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(torch.flatten(torch.relu(self.c(y)), 1))


def test_concatenation_maps_channels_to_the_right_branch():
    torch.manual_seed(0)
    model = TwoBranchConcat().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        for conv, c in ((model.a, [1]), (model.b, [0, 4])):
            conv.weight[c] = 0
            conv.bias[c] = 0
        model.bn.weight[[1, 4, 8]] = 0  # concat positions of a[1], b[0], b[4]
        model.bn.bias[[1, 4, 8]] = 0
        model.b.weight[2] = 0  # b[2] (position 6) has a zero filter but a bias: it stays
        model.c.weight[2] = 0
        model.c.bias[2] = 0
    report = remove_pruned_channels(model, torch.randn(1, 1, 4, 4))
    small = report.model
    assert (small.a.out_channels, small.b.out_channels, small.bn.num_features) == (3, 4, 7)
    assert (small.c.in_channels, small.c.out_channels, small.fc.in_features) == (7, 4, 4 * 16)
    assert max_diff(model, small, torch.randn(5, 1, 4, 4)) <= 1e-5


class NegatedReLU(nn.Module):
    """relu(-x): prunus' zero analysis assumes activations that only see nonnegative support."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(-self.conv(x)))


def test_a_wrong_removal_is_caught_by_the_output_check():
    model = NegatedReLU().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SurgeryError, match="changed the outputs"):
        remove_pruned_channels(model, torch.randn(1, 1, 6, 6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- coupled groups and the coupled projection -----------------------------------------------------------------------


def test_coupled_groups_of_residual_flatten_and_depthwise_models():
    model, x = calibrated("resnet20")
    groups = {g.root: g for g in coupled_groups(model, x)}
    stage1 = next(g for g in groups.values() if "conv1" in g.producers)
    assert set(stage1.producers) == set(STAGE1) and set(stage1.norms) == set(STAGE1_BN)
    assert {c.name for c in stage1.consumers} == {"layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
                                                 "layer2.0.conv1", "layer2.0.shortcut.0"}
    assert set(stage1.parameters) >= {"conv1.weight", "bn1.weight", "bn1.bias", "layer1.2.conv2.weight"}
    assert groups["fc"].protected == "its channels are the model's output"
    assert sum(g.protected is None for g in groups.values()) == len(groups) - 1

    model, x = calibrated("lenet5")
    conv2 = next(g for g in coupled_groups(model, x) if g.producers == ("conv2",))
    (fc1,) = conv2.consumers
    assert fc1.name == "fc1" and fc1.index == tuple(range(400)) and fc1.channel == tuple(k // 25 for k in range(400))

    model, x = calibrated("mobilenetv2")
    block = next(g for g in coupled_groups(model, x) if "features.2.conv.1.0" in g.depthwise)
    assert block.producers == ("features.2.conv.0.0",)
    assert set(block.norms) == {"features.2.conv.0.1", "features.2.conv.1.1"}
    assert [c.name for c in block.consumers] == ["features.2.conv.2"]


def test_project_coupled_zeroes_whole_groups_ranked_by_summed_energy():
    model, x = calibrated("resnet20")
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = project_coupled(model, Plan.uniform(model, 0.25, "filter"), x)
    # the exact projection of the stacked parameters: conv weights and the BatchNorms' gamma and beta
    energy = sum(dense[f"{n}.{p}"].reshape(16, -1).square().sum(1)
                 for n, p in [(c, "weight") for c in STAGE1] + [(b, q) for b in STAGE1_BN for q in ("weight", "bias")])
    expected_pruned = set(torch.argsort(energy)[: num_pruned(0.25, 16)].tolist())
    for n in STAGE1 + STAGE1_BN:
        p = model.get_submodule(n).weight
        zero = {i for i in range(16) if not bool((p[i] != 0).any())}
        assert zero == expected_pruned, n  # the stem is pruned with the stage it is added into
        assert torch.equal(masks[f"{n}.weight"].reshape(16, -1).any(1),
                           torch.tensor([i not in zero for i in range(16)]))
    assert all(not bool(model.get_submodule(n).bias[sorted(expected_pruned)].any()) for n in STAGE1_BN)
    # the masks fit MaskKeeper, and everything pruned is physically removable
    MaskKeeper(model, masks)
    report = remove_pruned_channels(model, x)
    assert report.blocked == 0 and report.model.conv1.out_channels == 16 - num_pruned(0.25, 16)


def test_project_coupled_rejects_impossible_plans():
    model, x = calibrated("resnet20")
    recipe = {"prune": {"layer1.0.conv1.weight": {"structure": "unstructured", "ratio": 0.5},
                        "layer1.0.conv2.weight": {"structure": "filter", "ratio": 0.5},
                        "layer1.1.conv2.weight": {"structure": "filter", "ratio": 0.25}}}
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ConfigError, match="share their output channels"):
        project_coupled(model, Plan.from_dict(recipe), x)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items()), "a rejected plan changed the model"
    with pytest.raises(ConfigError, match="model's output"):
        project_coupled(model, Plan.from_dict({"prune": {"fc.weight": {"structure": "filter", "ratio": 0.5}}}), x)
    # other structures are projected per tensor, as hard_prune does
    masks = project_coupled(
        model, Plan.from_dict({"prune": {"layer1.0.conv1.weight": {"structure": "unstructured", "ratio": 0.5}}}), x)
    assert (int((model.layer1[0].conv1.weight == 0).sum()) == num_pruned(0.5, 16 * 16 * 9)
            == int((~masks["layer1.0.conv1.weight"]).sum()))


# -- checkpoints record the pruned architecture ----------------------------------------------------------------------


def _record(name: str) -> dict:
    options, _ = ZOO[name]
    return {"name": name, "in_channels": 1, "num_classes": 10, "options": options}


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_pruned_checkpoint_loads_without_guessing(tmp_path, name):
    model, x = calibrated(name)
    project_coupled(model, Plan.uniform(model, 0.5, "filter"), x)
    small = remove_pruned_channels(model, x).model
    record = {**_record(name), "layers": layer_shapes(small)}
    json.dumps(record)  # plain JSON
    save_checkpoint(tmp_path / "ck", small.state_dict(), {}, {"model": record, "epoch": 0})
    loaded, _ = load_model(tmp_path / "ck")
    inputs = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs), small.eval()(inputs))
    assert layer_shapes(loaded) == record["layers"]


def test_bad_layer_records_are_one_clear_error(tmp_path):
    model, x = calibrated("lenet5")
    shapes = layer_shapes(model)
    with pytest.raises(CheckpointError, match="'conv9'"):
        apply_layer_shapes(build_model("lenet5"), {**shapes, "conv9": {"num_features": 3}})
    with pytest.raises(CheckpointError, match="positive integers"):
        apply_layer_shapes(build_model("lenet5"),
                           {**shapes, "conv2": {"in_channels": 6, "out_channels": 0, "groups": 1}})
    # shapes that do not fit the stored tensors are caught by load_state_dict, also as one CheckpointError
    bad = {**shapes, "conv2": {"in_channels": 6, "out_channels": 7, "groups": 1}}
    save_checkpoint(tmp_path / "ck", model.state_dict(), {},
                    {"model": {**_record("lenet5"), "layers": bad}, "epoch": 0})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path / "ck")


def test_weights_bytes_is_the_checkpoint_file_size(tmp_path):
    model, x = calibrated("lenet5")
    save_checkpoint(tmp_path / "ck", model.state_dict(), {}, {"epoch": 0})
    assert weights_bytes(model) == (tmp_path / "ck" / "model.safetensors").stat().st_size
    fp = measure_footprint(model, x, latency_batches=(1, 2), repeats=2, warmup=1)
    assert fp.parameters == 61706 and fp.macs == 416520 and sorted(fp.latency) == [1, 2]
    table = comparison_table(fp, fp)
    assert table.row_count == 5


# -- the command line ------------------------------------------------------------------------------------------------


def _masked_checkpoint(path: Path, name: str) -> Path:
    model, x = calibrated(name)
    masks = project_coupled(model, Plan.uniform(model, 0.5, "filter"), torch.randn(1, 1, 28, 28))
    meta = {"model": _record(name), "dataset": {"name": "digits", "image_size": 28}, "epoch": 0}
    return save_checkpoint(path, model.state_dict(), {"masks": {"masks": masks}}, meta)


@pytest.fixture(scope="module")
def masked_lenet(tmp_path_factory) -> Path:
    return _masked_checkpoint(tmp_path_factory.mktemp("masked") / "lenet5", "lenet5")


def test_surgery_cli_writes_a_smaller_checkpoint_that_evaluates_the_same(capsys, tmp_path, masked_lenet):
    out = tmp_path / "small"
    code, stdout, _ = run_cli(capsys, "surgery", str(masked_lenet), "--out", str(out), "--repeats", "2",
                              "--warmup", "1")
    assert code == 0, stdout
    assert "removed 110 channels: parameters 61,706 -> 16,416" in stdout
    assert "latency batch 64" in stdout and "weights file (bytes)" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["layers"]["fc1"] == {"in_features": 200, "out_features": 60}
    assert meta["surgery"]["after"]["weights_bytes"] == (out / "model.safetensors").stat().st_size
    assert meta["surgery"]["before"]["weights_bytes"] == (masked_lenet / "model.safetensors").stat().st_size
    assert meta["surgery"]["after"]["latency"]["64"]["median_ms"] > 0

    results = []
    for ck in (masked_lenet, out):
        code, stdout, _ = run_cli(capsys, "eval", str(ck), "--json")
        assert code == 0
        results.append(json.loads(stdout))
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], abs=1e-6)


def test_prune_then_surgery_then_eval(capsys, tmp_path):
    """The whole path: prunus train -> prunus prune (filter) -> prunus surgery -> prunus eval, same accuracy."""
    from prunus.train.config import TrainConfig
    from prunus.train.run import train

    train(TrainConfig(model="lenet5", dataset="digits", epochs=1, batch_size=32), tmp_path / "dense")
    code, _, _ = run_cli(capsys, "prune", "--method", "magnitude", "--init", str(tmp_path / "dense"), "--ratio", "0.5",
                         "--structure", "filter", "--epochs", "0", "--retrain-epochs", "0",
                         "--out", str(tmp_path / "p"))
    assert code == 0
    code, stdout, _ = run_cli(capsys, "surgery", str(tmp_path / "p" / "hard-pruned"), "--out", str(tmp_path / "small"),
                              "--no-latency")
    assert code == 0 and "removed 110 channels" in stdout
    accuracy = []
    for ck in (tmp_path / "p" / "hard-pruned", tmp_path / "small"):
        code, stdout, _ = run_cli(capsys, "eval", str(ck), "--json")
        accuracy.append(json.loads(stdout)["accuracy"])
    assert accuracy[0] == accuracy[1] > 30  # well above chance (10%): a real model, evaluated the same


def test_prune_filter_on_a_batchnorm_resnet_gives_removable_channels(capsys, tmp_path):
    """prunus prune --structure filter on ResNet-20 (BN + residual adds) hard-prunes per coupled group,
    so every pruned channel is removable and the structural MACs shrink; surgery then removes them all."""
    from prunus.train.config import TrainConfig
    from prunus.train.run import train

    train(TrainConfig(model="resnet20", dataset="digits", epochs=1, batch_size=64), tmp_path / "dense")
    code, _, _ = run_cli(capsys, "prune", "--method", "reweighted", "--init", str(tmp_path / "dense"), "--ratio", "0.5",
                         "--structure", "filter", "--epochs", "1", "--retrain-epochs", "0", "--batch-size", "64",
                         "--out", str(tmp_path / "p"))
    assert code == 0
    report = json.loads((tmp_path / "p" / "results.json").read_text())["report"]
    assert report["macs_structural"] < 0.5 * report["macs_dense"]
    code, stdout, _ = run_cli(capsys, "surgery", str(tmp_path / "p" / "hard-pruned"), "--out", str(tmp_path / "small"),
                              "--no-latency", "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["channels_blocked"] == 0 and summary["channels_removed"] > 0
    small, _ = load_model(tmp_path / "small")
    from prunus.data import load_dataset

    probe = load_dataset("digits", "test").images[:1]
    assert count_macs(small, probe).dense == report["macs_structural"]  # the count was of what surgery leaves


def test_surgery_cli_json_for_a_residual_model(capsys, tmp_path):
    ck = _masked_checkpoint(tmp_path / "r20", "resnet20")
    code, stdout, _ = run_cli(capsys, "surgery", str(ck), "--out", str(tmp_path / "small"), "--no-latency", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert (summary["params_after"], summary["channels_removed"], summary["channels_blocked"]) == (68642, 224, 0)
    assert summary["max_abs_diff"] <= 1e-5 and summary["after"]["latency"] == {}
    model, _ = load_model(tmp_path / "small")
    assert sum(p.numel() for p in model.parameters()) == 68642


def test_surgery_cli_user_errors(capsys, tmp_path, masked_lenet):
    code, _, err = run_cli(capsys, "surgery", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert_user_error(code, err, "nowhere", "does not exist")
    code, _, err = run_cli(capsys, "surgery", str(masked_lenet))
    assert_user_error(code, err, "--out")
    code, _, err = run_cli(capsys, "surgery", str(masked_lenet), "--out", str(masked_lenet))
    assert_user_error(code, err, "already exists")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(capsys, "surgery", str(masked_lenet), "--out", str(blocker / "small"), "--no-latency")
    assert_user_error(code, err, str(blocker), "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_export_cli_checks_onnx_against_pytorch(capsys, tmp_path, masked_lenet):
    import onnxruntime

    small = tmp_path / "small"
    assert run_cli(capsys, "surgery", str(masked_lenet), "--out", str(small), "--no-latency")[0] == 0
    target = tmp_path / "onnx" / "lenet5.onnx"
    code, stdout, _ = run_cli(capsys, "export", str(small), "--onnx", str(target))
    assert code == 0 and "onnxruntime matches PyTorch" in stdout
    assert sorted(p.name for p in target.parent.iterdir()) == ["lenet5.onnx"]  # no temporary file left
    model, _ = load_model(small)
    x = torch.randn(7, 1, 28, 28)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert float((torch.from_numpy(got) - model.eval()(x)).abs().max()) <= 1e-4


class CallCounter(nn.Module):
    """Its output depends on how often it was called: the traced ONNX graph freezes the count, PyTorch does not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * self.calls


def test_export_mismatch_and_unexportable_models_are_errors_and_write_nothing(capsys, tmp_path):
    from prunus.deploy.export import export_onnx
    from prunus.errors import ExportError

    with pytest.raises(ExportError, match="differ from PyTorch's"):
        export_onnx(CallCounter(), torch.randn(1, 4), tmp_path / "counter.onnx")
    # LeNet-5 on 32x32 inputs pools 6x6 -> 5x5, which the ONNX exporter cannot express
    ck = save_checkpoint(tmp_path / "ck", build_model("lenet5").state_dict(), {},
                         {"model": _record("lenet5"), "dataset": {"name": "cifar10", "image_size": 32}, "epoch": 0})
    code, _, err = run_cli(capsys, "export", str(ck), "--onnx", str(tmp_path / "out" / "lenet.onnx"))
    assert_user_error(code, err, "cannot be exported to ONNX", "adaptive_avg_pool2d")
    assert list(tmp_path.glob("*.onnx")) == [] and list((tmp_path / "out").iterdir()) == []
    code, _, err = run_cli(capsys, "export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "x.onnx"))
    assert_user_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "export", str(ck), "--onnx", str(tmp_path))
    assert_user_error(code, err, "is a directory")


def test_missing_optional_packages_are_named(capsys, tmp_path, monkeypatch, masked_lenet):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    model, x = calibrated("lenet5")
    with pytest.raises(MissingDependencyError, match=r"torch-pruning.*pip install 'prunus\[surgery\]'"):
        remove_pruned_channels(model, x)
    code, _, err = run_cli(capsys, "surgery", str(masked_lenet), "--out", str(tmp_path / "o"), "--no-latency")
    assert_user_error(code, err, "torch-pruning")
    code, _, err = run_cli(capsys, "export", str(masked_lenet), "--onnx", str(tmp_path / "m.onnx"))
    assert_user_error(code, err, "onnx")
    assert list(tmp_path.iterdir()) == []


def test_methods_project_coupled_filters_jointly_during_training():
    """With couple_plan, SLR's Z-step zeroes the same channels in every conv added into one residual stream
    and in their BatchNorms (the stem the plan skips included), and those are the channels the final
    coupled hard-prune removes."""
    from prunus.methods import SLR
    from prunus.plan.coupling import couple_plan

    torch.manual_seed(0)
    model = build_model("resnet20", 1, 10)
    x = torch.randn(2, 1, 32, 32)
    plan = couple_plan(model, Plan.uniform(model, 0.5, "filter"), x)
    stream = next(c for c in plan.coupled if "layer1.0.conv2.weight" in c.params)
    # one residual stream: the unplanned stem, every conv2 added into it, their BatchNorms' gamma and beta
    assert {"conv1.weight", "bn1.weight", "bn1.bias", "layer1.1.conv2.weight", "layer1.2.conv2.weight",
            "layer1.2.bn2.weight", "layer1.2.bn2.bias"} <= set(stream.params)
    assert "conv1.weight" not in {t.name for t in plan.resolve(model)} and stream.ratio == 0.5
    pruner = SLR(model, plan)
    assert set(pruner.params) == set(plan.layout(model).names) and "bn1.weight" in pruner.state
    for c in plan.coupled:
        alive = [pruner.state[n]["Z"].reshape(pruner.state[n]["Z"].shape[0], -1).abs().sum(1) != 0
                 for n in c.params if n.endswith("weight")]  # BN beta starts at 0 everywhere
        assert all(torch.equal(alive[0], a) for a in alive[1:]), c
        assert int((~alive[0]).sum()) == num_pruned(0.5, alive[0].numel())
    masks = pruner.hard_prune()
    for n in stream.params:
        assert torch.equal(masks[n].reshape(16, -1).any(1), alive_of(pruner, "conv1.weight")), n
    uncoupled = Plan.uniform(model, 0.5, "filter")
    per_tensor = SLR(build_model("resnet20", 1, 10), uncoupled)
    assert "bn1.weight" not in per_tensor.state and "conv1.weight" not in per_tensor.state


def alive_of(pruner, name: str) -> torch.Tensor:
    z = pruner.state[name]["Z"]
    return z.reshape(z.shape[0], -1).abs().sum(1) != 0
