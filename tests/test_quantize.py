"""Quantization sets, least-squares projections, SLR/ADMM onto levels, straight-through fine-tuning, export."""

import math
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import Denoiser, _data

from prunus.constraints.levels import QuantScheme, nearest_codes, quantize
from prunus.deploy.compressed import dense_fp32_bytes, export_compressed, load_compressed, round_rest
from prunus.jobs.quantize import QuantizeConfig
from prunus.deploy.entropy import StreamReader, StreamWriter
from prunus.errors import CheckpointError, ConfigError
from prunus.harden.keepers import MaskKeeper, QuantKeeper
from prunus.methods import ADMM, SLR, batch_closure
from prunus.models import build_model
from prunus.plan.quant import QuantPlan


def test_level_sets_and_parsing():
    assert QuantScheme.parse("binary").levels().tolist() == [-1, 1]
    assert QuantScheme.parse("ternary").levels().tolist() == [-1, 0, 1]
    assert QuantScheme.parse(4).levels().tolist() == list(range(-7, 8))
    assert QuantScheme.parse("int3") == QuantScheme("fixed", 3)
    assert QuantScheme.parse("pow2:3").levels().tolist() == [-1, -0.5, -0.25, 0, 0.25, 0.5, 1]
    assert len(QuantScheme.parse("pow2:4").levels()) == 15
    for bad, msg in (("fixed:9", "2 to 8 bits"), ("1", "2 to 8 bits"), ("int", "cannot parse"),
                     ("log", "cannot parse")):
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


def test_entropy_coder_round_trips_and_costs_close_to_the_entropy():
    rng = np.random.default_rng(0)
    mask = rng.random(61_706) < 0.03  # a LeNet-5-sized bitmap at 33x
    probs = np.array([8, 6, 4, 2, 1, 0.5, 0.2, 0.1, 0.2, 0.5, 1, 2, 4, 6, 8], dtype=float)
    codes = rng.choice(15, size=int(mask.sum()), p=probs / probs.sum())  # skewed 4-bit codes
    ones = np.zeros(1000, dtype=int)  # a one-symbol stream and an empty one cost nothing
    w = StreamWriter()
    for symbols, alphabet in ((mask, 2), (codes, 15), (ones, 1), (ones[:0], 7), (rng.integers(0, 256, 70_000), 256)):
        w.write(symbols, alphabet)
    data = w.getvalue()
    r = StreamReader(data)
    assert np.array_equal(r.read(mask.size, 2), mask)
    assert np.array_equal(r.read(codes.size, 15), codes)
    assert np.array_equal(r.read(1000, 1), ones) and r.read(0, 7).size == 0
    r.read(70_000, 256)
    assert r.exhausted()

    def entropy_bytes(x, k):  # empirical entropy of a stream, in bytes
        p = np.bincount(x, minlength=k) / x.size
        return -(x.size * p[p > 0] * np.log2(p[p > 0])).sum() / 8

    alone = StreamWriter()
    alone.write(mask, 2)
    alone.write(codes, 15)
    ideal = entropy_bytes(mask.astype(int), 2) + entropy_bytes(codes, 15)
    assert ideal < len(alone.getvalue()) < ideal + 40  # the adaptive model's learning cost: a few dozen bytes
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 15\)"):
        StreamWriter().write(np.array([15]), 15)


@pytest.mark.parametrize("scheme,per_channel,rest", [("4", False, "float16"), ("ternary", True, "int8"),
                                                     ("binary", False, "float32"), ("pow2:3", True, "int8")])
def test_export_reloads_bit_exactly_and_is_small(tmp_path, scheme, per_channel, rest):
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 10)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("weight"):
                keep = torch.rand_like(p) < 0.05  # 20x pruned
                p.mul_(keep)
    plan = QuantPlan.for_pruned(model, scheme, per_channel)
    keeper = QuantKeeper(model, plan)
    round_rest(model, skip=set(keeper.state), rest=rest)
    rounded = {n: t.clone() for n, t in model.state_dict().items()}
    round_rest(model, skip=set(keeper.state), rest=rest)  # rounding again changes nothing
    assert all(torch.equal(rounded[n], t) for n, t in model.state_dict().items())
    meta = {"model": {"name": "lenet5", "in_channels": 1, "num_classes": 10, "options": {}},
            "dataset": {"name": "fashion-mnist"}}
    size = export_compressed(model, keeper, meta, tmp_path / "m.pcz", rest=rest)
    assert size.file_bytes == (tmp_path / "m.pcz").stat().st_size
    assert size.raw["floats"] == {"float32": 4 * 236, "float16": 2 * 236, "int8": 236 + 5}[rest]  # LeNet-5's 5 biases
    assert size.raw["scales"] == 4 * (236 if per_channel else 5)
    assert size.dense_fp32_bytes == dense_fp32_bytes(model) == 4 * 61706
    assert size.file_bytes == 14 + sum(size.raw.values())  # signature, 2 checksums, header length, the parts
    # the positions cost what their i.i.d. entropy says, plus the coder's learning cost (a few bytes per tensor)
    weights = [t for n, t in model.state_dict().items() if n in keeper.state]  # positions stored: the nonzeros
    kept = [float((w != 0).float().mean()) for w in weights]
    sizes = [w.numel() for w in weights]
    entropy = sum(n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8 for n, p in zip(sizes, kept))
    assert entropy < size.raw["masks"] < entropy + 40
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
        export_compressed(model, keeper, meta, tmp_path / "m.pcz", rest="float32")
    assert not (tmp_path / "m.pcz").exists()
    with torch.no_grad():
        model.fc1.weight[0, 0] -= 1e-3
    keeper.apply()
    with pytest.raises(CheckpointError, match="not representable in float16"):
        export_compressed(model, keeper, meta, tmp_path / "m.pcz")
    with pytest.raises(CheckpointError, match=r"\.bias is not representable in 8 bits"):
        export_compressed(model, keeper, meta, tmp_path / "m.pcz", rest="int8")
    export_compressed(model, keeper, meta, tmp_path / "m.pcz", rest="float32")
    data = (tmp_path / "m.pcz").read_bytes()
    (tmp_path / "bad.pcz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="bad.pcz: cannot read the compressed model .checksum mismatch"):
        load_compressed(tmp_path / "bad.pcz")
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    (tmp_path / "bad.pcz").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_compressed(tmp_path / "bad.pcz")
    # a coded stream that decodes to other symbols (file checksum recomputed): caught by the symbols' checksum
    body = bytearray(data[8:])
    body[-6] ^= 0x01
    (tmp_path / "bad.pcz").write_bytes(data[:4] + struct.pack("<I", zlib.crc32(bytes(body))) + bytes(body))
    with pytest.raises(CheckpointError, match="bad.pcz: cannot decode the compressed model"):
        load_compressed(tmp_path / "bad.pcz")
    (tmp_path / "old.pcz").write_bytes(b"\xfd7zXZ\x00" + bytes(40))
    with pytest.raises(CheckpointError, match="old.pcz: .*prunus 0.1's LZMA format; export it again"):
        load_compressed(tmp_path / "old.pcz")


def test_quantize_precision_reaches_the_method_and_fine_tuning_recipes():
    config = QuantizeConfig(precision="bf16").validate()
    method = config.method_config()
    assert method.precision == "bf16"
    assert method.train_config(2, 1e-4, "constant").precision == "bf16"  # the fine-tuning's recipe is built from it
    assert QuantizeConfig().method_config().train_config(2, 1e-4, "constant").precision == "fp32"
