"""The int8 first layer: exact integer arithmetic in the model, its input scale, the engine's int8 kernel, and
``prunus bcnn train --int8-stem`` / ``prunus bcnn int8-stem`` end to end."""

from __future__ import annotations

import json
import platform

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_user_error, run_cli

from prunus.bcnn.engine.int8_conv import Int8Conv
from prunus.bcnn.int8 import INPUT_SCALE_MOMENTUM, MAX_EXACT_TAPS, int8_weight, weight_scales
from prunus.bcnn.layers import ComplexConv2d
from prunus.environment import cpu_flags
from prunus.errors import ConfigError
from prunus.models import build_model
from prunus.models.loading import load_model


def test_int8_layer_is_integer_convolution_times_one_factor_per_channel():
    torch.manual_seed(0)
    conv = ComplexConv2d(1, 6, 5, padding=2, bias=True, int8=True)
    with torch.no_grad():
        conv.conv.weight[2] = 0  # a pruned filter
        conv.bias.uniform_(-1, 1)
    xr, xi = torch.randn(3, 1, 12, 12), torch.randn(3, 1, 12, 12)
    conv.train()
    conv((xr, xi))  # the first batch sets the input scale
    scale = conv.input_scale.clone()
    assert float(scale) == pytest.approx(float(torch.cat([xr, xi]).abs().max()) / 127)
    conv.eval()
    yr, yi = conv((xr, xi))

    w = conv.conv.weight.detach()
    wq = int8_weight(w)
    assert torch.equal(wq, wq.round()) and float(wq.abs().max()) == 127 and not wq[2].any()
    qr, qi = ((t / scale).round().clamp(-127, 127) for t in (xr, xi))
    real = F.conv2d(qr, wq[:, :1], padding=2) - F.conv2d(qi, wq[:, 1:], padding=2)
    imag = F.conv2d(qi, wq[:, :1], padding=2) + F.conv2d(qr, wq[:, 1:], padding=2)
    factor = (scale * weight_scales(w)).view(1, -1, 1, 1)
    assert torch.equal(yr, real * factor + conv.bias[0].view(1, -1, 1, 1))
    assert torch.equal(yi, imag * factor + conv.bias[1].view(1, -1, 1, 1))
    assert not (yr[:, 2] - conv.bias[0, 2]).any()  # the pruned filter outputs its bias only


def test_input_scale_follows_training_batches_and_is_frozen_in_eval():
    conv = ComplexConv2d(1, 2, 3, int8=True)
    x1, x2 = torch.full((1, 1, 4, 4), 2.54), torch.full((1, 1, 4, 4), 5.08)
    conv.eval()
    with pytest.raises(ConfigError, match="no input scale yet"):
        conv((x1, torch.zeros_like(x1)))
    conv.train()
    conv((x1, torch.zeros_like(x1)))
    assert float(conv.input_scale) == pytest.approx(0.02)
    conv((x2, torch.zeros_like(x2)))
    assert float(conv.input_scale) == pytest.approx(0.02 * (1 - INPUT_SCALE_MOMENTUM) + 0.04 * INPUT_SCALE_MOMENTUM)
    conv.eval()
    frozen = conv.input_scale.clone()
    conv((10 * x2, torch.zeros_like(x2)))
    assert torch.equal(conv.input_scale, frozen)
    assert "input_scale" in conv.state_dict()
    conv.train()
    with torch.no_grad():  # a train-mode pass without a training step (BatchNorm recalibration) keeps a set scale
        conv((10 * x2, torch.zeros_like(x2)))
    assert torch.equal(conv.input_scale, frozen)
    fresh = ComplexConv2d(1, 2, 3, int8=True).train()
    with torch.no_grad():  # ... and sets an unset one
        fresh((x1, torch.zeros_like(x1)))
    assert float(fresh.input_scale) == pytest.approx(0.02)


def test_gradients_reach_the_latent_weights_through_the_rounding():
    conv = ComplexConv2d(1, 4, 3, padding=1, int8=True).train()
    yr, yi = conv((torch.randn(2, 1, 6, 6), torch.randn(2, 1, 6, 6)))
    (yr.square().sum() + yi.square().sum()).backward()
    assert conv.conv.weight.grad is not None and conv.conv.weight.grad.abs().sum() > 0


def test_layers_too_wide_for_exact_float32_sums_are_refused():
    cin = MAX_EXACT_TAPS // 50 + 1  # 2 * cin * 25 taps > 1040
    with pytest.raises(ConfigError, match=f"sums {2 * cin * 25} products per output"):
        ComplexConv2d(cin, 4, 5, int8=True)
    with pytest.raises(ConfigError, match="binary or int8"):
        ComplexConv2d(1, 4, 3, binary=True, int8=True)
    with pytest.raises(ConfigError, match="'int8_first' needs a full-precision first layer"):
        build_model("cnin", in_channels=1, width=0.125, fp_first=False, int8_first=True)


def expected_kernels() -> set[str]:
    """oneDNN's int8 convolution on an x86 CPU with VNNI. Without VNNI it depends on the shape: where oneDNN sums
    pairs of products in 16 bits they saturate (2 x 255 x 127 > 32767) and the probe at construction must choose
    the float32 convolution (an AMD EPYC with AVX2: 2 input channels), elsewhere its int8 kernel is exact (1)."""
    if platform.machine() not in ("x86_64", "AMD64") or not torch.backends.mkldnn.is_available():
        return {"float32"}
    if {"avx512_vnni", "avx_vnni"} & (cpu_flags() or set()):
        return {"onednn-int8"}
    return {"onednn-int8", "float32"}


@pytest.mark.parametrize(("stride", "padding", "cin"), [(1, 2, 2), (2, 1, 1), (1, 0, 6)])
def test_int8_kernel_equals_the_float_convolution_of_the_integers_times_the_factors(stride, padding, cin):
    gen = torch.Generator().manual_seed(stride + cin)
    weight = torch.randint(-127, 128, (24, cin, 5, 5), generator=gen).float()
    weight[0] = 127  # the largest sums (cin x 25 taps x 127 x 127) stay exact
    factor = torch.rand(24, generator=gen) * 1e-3
    factor[1] = 0.0  # a channel whose weights all round to 0 has factor 0 too
    conv = Int8Conv(weight, factor, stride, padding)
    assert conv.kernel in expected_kernels()  # and whichever runs, its values are the float convolution's:
    x = torch.randint(-127, 128, (3, cin, 17, 17), generator=gen).float()
    x[0] = 127
    sums = F.conv2d(x, weight, None, stride, padding)
    assert torch.equal(sums, sums.round()) and float(sums.max()) == cin * 25 * 127 * 127
    expected = sums * factor.view(1, -1, 1, 1)
    assert torch.equal(conv(x), expected)
    assert torch.equal(conv(x, integer_kernel=False), expected)


def test_engine_says_how_its_first_layer_runs():
    pytest.importorskip("numba")
    from prunus.bcnn.engine import compile_engine

    kernels = {f"int8 ({k})" for k in expected_kernels()}
    for options, numba_says, torch_says in (({"int8_first": True}, kernels, "int8 (float32)"),
                                            ({}, {"float32"}, "float32"), ({"fp_first": False}, {"binary"}, "binary")):
        model = build_model("cnin_small", in_channels=1, width=0.25, **options).train()
        model(torch.randn(4, 1, 28, 28))
        model.eval()
        assert compile_engine(model, 28).first_layer in numba_says
        assert compile_engine(model, 28, backend="torch", device="cpu").first_layer == torch_says


def test_post_training_calibration_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = build_model("cnin_small", in_channels=1, width=0.25, complex_input="learned").train()
    norms = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.quantize_first_layer([torch.randn(8, 1, 28, 28) * 3])
    assert model.training and model.input.training and model.int8_first
    assert all(torch.equal(model.state_dict()[k], v) for k, v in norms.items())
    assert float(model.stem.conv.input_scale) > 0
    with pytest.raises(ConfigError, match="int8 already"):
        model.quantize_first_layer([torch.randn(2, 1, 28, 28)])


def test_int8_stem_model_saves_and_loads_with_its_input_scale(tmp_path):
    from prunus.io import save_checkpoint

    torch.manual_seed(0)
    model = build_model("cnin_small", in_channels=2, num_classes=10, width=0.25, int8_first=True).train()
    model(torch.randn(8, 2, 28, 28))
    model.eval()
    meta = {"model": {"name": "cnin_small", "in_channels": 2, "num_classes": 10,
                      "options": {"width": 0.25, "int8_first": True}}, "dataset": {"name": "x"}, "epoch": 0}
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), {}, meta)
    loaded, _ = load_model(tmp_path / "ckpt")
    x = torch.randn(4, 2, 28, 28)
    assert loaded.stem.conv.int8 and torch.equal(loaded.stem.conv.input_scale, model.stem.conv.input_scale)
    assert torch.equal(loaded.eval()(x), model(x))


def test_train_int8_stem_then_engine_is_exact(capsys, tmp_path):
    pytest.importorskip("numba")
    run = tmp_path / "int8stem"
    code, out, err = run_cli(capsys, "bcnn", "train", "--model", "nin_small", "--int8-stem", "--width", "0.25",
                             "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--out", run)
    assert code == 0, err
    assert (json.loads((run / "config.json").read_text())["config"]["model_options"]
            == {"width": 0.25, "int8_first": True})
    model, _ = load_model(run)
    assert model.stem.conv.int8 and float(model.stem.conv.input_scale) > 0
    code, out, err = run_cli(capsys, "bcnn", "evaluate", run, "--samples", "100")
    assert code == 0 and "exactly on 100/100" in out


def test_int8_stem_command_quantizes_a_trained_bcnn(capsys, tmp_path):
    pytest.importorskip("numba")
    run = tmp_path / "float"
    code, _, err = run_cli(capsys, "bcnn", "train", "--model", "nin_small", "--width", "0.25", "--dataset", "digits",
                           "--epochs", "2", "--batch-size", "64", "--out", run)
    assert code == 0, err
    code, out, err = run_cli(capsys, "bcnn", "int8-stem", "--init", run, "--out", tmp_path / "int8", "--frames", "500")
    assert code == 0, err
    assert "engine equal to PyTorch on every test frame" in out
    before, after = (float(t.split("%")[0]) for t in out.split("test accuracy ")[1].split(" with the float first "
                                                                                           "layer, "))
    assert before > 20.0 and after >= before - 2.0  # digits, 10 classes; a 2-epoch BCNN of width 0.25
    model, ckpt = load_model(tmp_path / "int8")
    assert model.int8_first and ckpt.meta["int8_first_layer"]["frames"] == 500
    assert ckpt.meta["model"]["options"] == {"width": 0.25, "int8_first": True}
    code, _, err = run_cli(capsys, "bcnn", "int8-stem", "--init", tmp_path / "int8", "--out", tmp_path / "again")
    assert_user_error(code, err, "--init", "is int8 already")
    assert not (tmp_path / "again").exists()
    kept = (tmp_path / "int8" / "model.safetensors").read_bytes()
    for out in (tmp_path / "int8", run):  # an existing checkpoint (its own --init too) is never overwritten
        code, _, err = run_cli(capsys, "bcnn", "int8-stem", "--init", run, "--out", out)
        assert_user_error(code, err, f"--out {out} already exists and is not empty")
    assert (tmp_path / "int8" / "model.safetensors").read_bytes() == kept
    code, _, err = run_cli(capsys, "bcnn", "train", "--resume", run, "--int8-stem")
    assert_user_error(code, err, "--resume takes its settings from the run; drop --int8-stem")


@pytest.mark.parametrize(("options", "args", "fragments"), [
    ({"width": 0.25, "fp_first": False}, [], ["first layer is binary"]),
    (None, ["--frames", "0"], ["--frames", "0"]),
])
def test_int8_stem_user_errors_are_one_line_exit_2(capsys, tmp_path, options, args, fragments):
    from test_bcnn_cli import tiny_checkpoint

    tiny_checkpoint(tmp_path / "ckpt", "cnin_small", options)
    code, _, err = run_cli(capsys, "bcnn", "int8-stem", "--init", tmp_path / "ckpt", "--out", tmp_path / "x", *args)
    assert_user_error(code, err, *fragments)
    assert not (tmp_path / "x").exists()


def test_binary_and_int8_stem_flags_exclude_each_other(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bcnn", "train", "--model", "nin", "--binary-stem", "--int8-stem",
                           "--out", tmp_path / "x")
    assert_user_error(code, err, "--binary-stem", "--int8-stem")
    assert not (tmp_path / "x").exists()
