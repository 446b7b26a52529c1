"""Quantization sets, least-squares projections, SLR/ADMM onto levels, straight-through fine-tuning, export."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunus.compressed import dense_fp32_bytes, export_compressed, load_compressed, pack_codes, round_floats_to_half, unpack_codes
from prunus.errors import CheckpointError, ConfigError
from prunus.masks import MaskKeeper
from prunus.methods import ADMM, SLR, batch_closure
from prunus.models import build_model
from prunus.quantize import QuantKeeper, QuantPlan, QuantScheme, nearest_codes, quantize
from test_methods import Denoiser, _data


def test_level_sets_and_parsing():
    assert QuantScheme.parse("binary").levels().tolist() == [-1, 1]
    assert QuantScheme.parse("ternary").levels().tolist() == [-1, 0, 1]
    assert QuantScheme.parse(4).levels().tolist() == list(range(-7, 8))
    assert QuantScheme.parse("int3") == QuantScheme("fixed", 3)
    assert QuantScheme.parse("pow2:3").levels().tolist() == [-1, -0.5, -0.25, 0, 0.25, 0.5, 1]
    assert len(QuantScheme.parse("pow2:4").levels()) == 15
    for bad, msg in (("fixed:9", "2 to 8 bits"), ("1", "2 to 8 bits"), ("int", "cannot parse"), ("log", "cannot parse")):
        with pytest.raises(ConfigError, match=msg):
            QuantScheme.parse(bad)


def _brute_ternary(w):
    """Best error over every support of the largest-k magnitudes (the optimum keeps the largest)."""
    best = float((w**2).sum())
    order = w.abs().sort(descending=True).values
    for k in range(1, len(w) + 1):
        a = float(order[:k].mean())
        best = min(best, float((w**2).sum()) - a * a * k)
    return best


def test_binary_and_ternary_are_exact_least_squares():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = torch.randn(1, 9, generator=g, dtype=torch.float64)
        q = quantize(w, "binary")
        assert torch.allclose(q.values.abs(), w.abs().mean().expand_as(w))
        assert torch.equal(torch.sign(q.values), torch.sign(w))
        t = quantize(w, "ternary")
        err = float(((w - t.values) ** 2).sum())
        assert err == pytest.approx(_brute_ternary(w[0]), rel=1e-9, abs=1e-12)
        # no scale and no other ternary code does better: check a grid of scales with nearest levels
        for a in torch.linspace(0.05, 3, 60, dtype=torch.float64):
            q_near = torch.clamp(torch.round(w / a), -1, 1) * a
            assert err <= float(((w - q_near) ** 2).sum()) + 1e-12


@pytest.mark.parametrize("scheme", ["3", "4", "8", "pow2:3", "pow2:4"])
def test_lloyd_beats_max_scaling_and_stays_on_levels(scheme):
    torch.manual_seed(1)
    w = torch.randn(16, 8, 3, 3)
    sch = QuantScheme.parse(scheme, per_channel=True)
    q = quantize(w, sch)
    levels = sch.levels()
    ratios = q.values.reshape(16, -1) / q.scale.unsqueeze(1)
    assert torch.allclose(ratios, levels[q.codes.reshape(16, -1)], atol=1e-5)  # every entry is scale * level
    naive_scale = w.reshape(16, -1).abs().amax(1) / levels[-1]
    naive = nearest_codes(w.reshape(16, -1), naive_scale, levels)
    naive_err = ((w.reshape(16, -1) - naive_scale.unsqueeze(1) * levels[naive]) ** 2).sum(1)
    err = ((w - q.values).reshape(16, -1) ** 2).sum(1)
    assert torch.all(err <= naive_err + 1e-6)
    if sch.bits <= 4:  # at few levels least squares clips the tails, max scaling does not
        assert float(err.sum()) < 0.9 * float(naive_err.sum())


def test_mask_keeps_zeros_and_scale_ignores_pruned_entries():
    w = torch.tensor([[0.9, -1.1, 50.0, 0.0, 1.0, -1.0]])
    mask = torch.tensor([[True, True, False, False, True, True]])
    q = quantize(w, "binary", mask)
    assert q.values[0, 2] == 0 and q.values[0, 3] == 0
    assert float(q.scale) == pytest.approx((0.9 + 1.1 + 1.0 + 1.0) / 4)  # 50 was pruned: it does not count


def test_per_channel_scales_are_independent():
    w = torch.cat([torch.randn(1, 20), 100 * torch.randn(1, 20)])
    per_layer = quantize(w, "4")
    per_channel = quantize(w, QuantScheme.parse(4, per_channel=True))
    assert per_layer.scale.shape == (1,) and per_channel.scale.shape == (2,)
    assert per_channel.scale[1] > 50 * per_channel.scale[0]
    assert ((w - per_channel.values) ** 2).sum() < ((w - per_layer.values) ** 2).sum()


def _quantize_with(method_cls, rho):
    torch.manual_seed(0)
    model = Denoiser()
    with torch.no_grad():  # a pruned model: half of dec is zero
        model.dec.weight[:, ::2] = 0
    x, y = _data()
    plan = QuantPlan.for_pruned(model, "ternary")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    keeper = MaskKeeper(model, plan.masks).attach(opt)
    for _ in range(6):  # a trained (pruned) model first
        for i in range(0, 256, 32):
            loss = F.mse_loss(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
    pruner = method_cls(model, plan, rho=rho, closure=batch_closure(model, x, y, F.mse_loss))
    for _ in range(6):
        for i in range(0, 256, 32):
            loss = F.mse_loss(model(x[i:i + 32]), y[i:i + 32]) + pruner.penalty()
            opt.zero_grad(); loss.backward(); opt.step()
        pruner.step()
    keeper.remove()
    before = {n: p.detach().clone() for n, p in pruner.params.items()}
    pruner.hard_prune()
    distance = sum(float(((before[n] - p.detach()) ** 2).sum()) for n, p in pruner.params.items()) ** 0.5
    return model, pruner, distance, float(F.mse_loss(model(x), y).detach())


@pytest.mark.parametrize("method_cls", [SLR, ADMM])
def test_methods_project_onto_levels_and_keep_pruned_zeros(method_cls):
    model, pruner, distance, loss = _quantize_with(method_cls, rho=1.0)
    _, _, plain_distance, plain_loss = _quantize_with(method_cls, rho=1e-9)  # same training, no pull
    assert all(len(torch.unique(s["Z"])) <= 3 for s in pruner.state.values())  # the Z iterates are ternary
    for name, p in pruner.params.items():  # hard quantization: 3 levels per tensor, zeros kept
        assert len(torch.unique(p.detach())) <= 3, name
    assert torch.all(model.dec.weight[:, ::2] == 0)
    assert distance < 0.7 * plain_distance  # the method pulled the weights toward the levels
    assert loss < plain_loss  # so hard quantization costs less


def test_quant_keeper_is_a_straight_through_estimator():
    torch.manual_seed(0)
    model = Denoiser()
    with torch.no_grad():
        model.mid.weight[::2] = 0
    x, y = _data()
    plan = QuantPlan.for_pruned(model, "4")
    keeper = QuantKeeper(model, plan)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    keeper.attach(opt)
    before = F.mse_loss(model(x), y).item()
    latent0 = keeper.state["mid.weight"]["latent"].clone()
    loss = F.mse_loss(model(x), y)
    opt.zero_grad(); loss.backward()
    grad = model.mid.weight.grad.clone()
    opt.step()
    # the latent copy moved by exactly the SGD step taken at the quantized weights (dQ/dW = 1) ...
    kept = keeper.state["mid.weight"]["mask"]
    assert torch.allclose(keeper.state["mid.weight"]["latent"], latent0 - 0.05 * grad * kept, atol=1e-6)
    for _ in range(30):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    # ... and the weights stay on 15 levels times the frozen scale, zeros kept, while the loss goes down
    for name, s in keeper.state.items():
        p = dict(model.named_parameters())[name].detach()
        assert len(torch.unique(p)) <= 15
        assert torch.allclose(p / s["scale"], torch.round(p / s["scale"]), atol=1e-4)
    assert torch.all(model.mid.weight[::2] == 0)
    assert F.mse_loss(model(x), y).item() < before


def test_pack_codes_round_trip():
    rng = np.random.default_rng(0)
    for bits in (1, 2, 3, 4, 7, 8):
        codes = rng.integers(0, 2**bits, size=1001)
        data = pack_codes(codes, bits)
        assert len(data) == math.ceil(1001 * bits / 8)
        assert np.array_equal(unpack_codes(data, 1001, bits), codes)


@pytest.mark.parametrize("scheme,per_channel", [("4", False), ("ternary", True), ("binary", False), ("pow2:3", True)])
def test_export_reloads_bit_exactly_and_is_small(tmp_path, scheme, per_channel):
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 10)
    plan_masks = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("weight"):
                keep = torch.rand_like(p) < 0.05  # 20x pruned
                p.mul_(keep)
    plan = QuantPlan.for_pruned(model, scheme, per_channel)
    keeper = QuantKeeper(model, plan)
    round_floats_to_half(model, skip=set(keeper.state))
    meta = {"model": {"name": "lenet5", "in_channels": 1, "num_classes": 10, "options": {}}, "dataset": {"name": "fashion-mnist"}}
    size = export_compressed(model, keeper, meta, tmp_path / "m.pcz")
    assert size.file_bytes == (tmp_path / "m.pcz").stat().st_size
    assert size.dense_fp32_bytes == dense_fp32_bytes(model) == 4 * 61706
    assert size.ratio > 40  # 20x fewer weights at <= 4 bits, positions and all
    loaded, header = load_compressed(tmp_path / "m.pcz")
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model.eval()(x), loaded(x))
    assert not list(tmp_path.glob(".*tmp"))


def test_export_refuses_off_level_weights_and_corrupt_files(tmp_path):
    model = build_model("lenet5", 1, 10)
    keeper = QuantKeeper(model, QuantPlan.for_pruned(model, "4"))
    meta = {"model": {"name": "lenet5", "in_channels": 1, "num_classes": 10, "options": {}}}
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1e-3
    with pytest.raises(CheckpointError, match="fc1.weight is not on its quantization levels"):
        export_compressed(model, keeper, meta, tmp_path / "m.pcz", float16=False)
    assert not (tmp_path / "m.pcz").exists()
    with torch.no_grad():
        model.fc1.weight[0, 0] -= 1e-3
    keeper.apply()
    with pytest.raises(CheckpointError, match="not representable in float16"):
        export_compressed(model, keeper, meta, tmp_path / "m.pcz")
    export_compressed(model, keeper, meta, tmp_path / "m.pcz", float16=False)
    data = (tmp_path / "m.pcz").read_bytes()
    (tmp_path / "bad.pcz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="bad.pcz: cannot read the compressed model"):
        load_compressed(tmp_path / "bad.pcz")
