"""Complex layers, binarization and the BCNN models: values against torch complex references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunus.bcnn import (
    ComplexAvgPool2d,
    ComplexBatchNorm2d,
    ComplexConv2d,
    ComplexInput,
    ComplexLinear,
    ComplexMaxPool2d,
    CReLU,
    binarize,
    channel_scale,
    sign,
    stack,
    unstack,
)
from prunus.bcnn.layers import _ComplexBatch, _RealPartInput, is_zero_view, zeros_like_view
from prunus.bcnn.pruning import prune_to_live_compression
from prunus.errors import ConfigError
from prunus.models import build_model
from prunus.plan.recipe import Plan


def _complex(shape, gen):
    return torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


# -- convolution and linear against torch complex64 --------------------------------------------------------------


@pytest.mark.parametrize(("k", "stride", "padding"), [(1, 1, 0), (3, 1, 1), (3, 2, 1), (5, 1, 2), (2, 2, 0)])
def test_complex_conv_matches_torch_complex(k, stride, padding):
    gen = torch.Generator().manual_seed(k * 10 + stride)
    conv = ComplexConv2d(3, 5, k, stride=stride, padding=padding, bias=True)
    with torch.no_grad():
        conv.bias.normal_(generator=gen)
    x = _complex((2, 3, 9, 9), gen)
    w = torch.complex(conv.weight_real.detach(), conv.weight_imag.detach())
    b = torch.complex(conv.bias[0].detach(), conv.bias[1].detach())
    expected = F.conv2d(x, w, b, stride=stride, padding=padding)
    out = conv(x)  # a complex tensor in, a complex tensor out
    assert out.dtype == torch.complex64 and out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    yr, yi = conv((x.real, x.imag))  # the same as a pair
    torch.testing.assert_close(torch.complex(yr, yi), expected, atol=1e-5, rtol=1e-5)
    # explicitly (Wr*xr - Wi*xi) + i(Wr*xi + Wi*xr)
    wr, wi = conv.weight_real.detach(), conv.weight_imag.detach()
    c = lambda a, ww: F.conv2d(a, ww, stride=stride, padding=padding)  # noqa: E731
    torch.testing.assert_close(yr, c(x.real, wr) - c(x.imag, wi) + conv.bias[0].view(1, -1, 1, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(yi, c(x.imag, wr) + c(x.real, wi) + conv.bias[1].view(1, -1, 1, 1), atol=1e-5, rtol=1e-5)


def test_complex_linear_matches_torch_complex_and_real_output():
    gen = torch.Generator().manual_seed(1)
    lin = ComplexLinear(6, 4, bias=True)
    with torch.no_grad():
        lin.bias.normal_(generator=gen)
    x = _complex((3, 6), gen)
    w = torch.complex(lin.weight_real.detach(), lin.weight_imag.detach())
    expected = F.linear(x, w, torch.complex(lin.bias[0].detach(), lin.bias[1].detach()))
    torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)
    head = ComplexLinear(6, 4, bias=True, real_output=True)
    with torch.no_grad():
        head.linear.weight.copy_(lin.linear.weight)
        head.bias.copy_(lin.bias[0])
    torch.testing.assert_close(head((x.real, x.imag)), expected.real, atol=1e-5, rtol=1e-5)


def test_real_input_fast_path_equals_general_path_and_trains():
    gen = torch.Generator().manual_seed(2)
    conv = ComplexConv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 7, 7, generator=gen, requires_grad=True)
    zero = zeros_like_view(x)
    assert is_zero_view(zero) and not is_zero_view(torch.zeros(2, 2, 7, 7)) and not is_zero_view(None)
    fast = conv((x, zero))
    general = conv((x, torch.zeros_like(x)))
    for a, b in zip(fast, general):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    (fast[0].sum() + 2 * fast[1].sum()).backward()
    g_fast = conv.conv.weight.grad.clone()
    conv.conv.weight.grad = None
    (general[0].sum() + 2 * general[1].sum()).backward()
    torch.testing.assert_close(g_fast, conv.conv.weight.grad, atol=1e-4, rtol=1e-4)


def test_single_node_input_shuffles_have_correct_gradients():
    xr = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    xi = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ComplexBatch.apply, (xr, xi))
    assert torch.autograd.gradcheck(_RealPartInput.apply, (xr[:, :, 0, 0], xi[:, :, 0, 0]))


def test_stack_unstack_round_trip():
    x = _complex((2, 3, 4, 4), torch.Generator().manual_seed(3))
    s = stack(x)
    assert s.shape == (2, 6, 4, 4) and torch.equal(s[:, :3], x.real)
    r, i = unstack(s)
    assert torch.equal(torch.complex(r, i), x)


# -- batch norm --------------------------------------------------------------------------------------------------


def test_naive_batch_norm_normalises_each_part_and_eval_is_the_fold():
    gen = torch.Generator().manual_seed(4)
    bn = ComplexBatchNorm2d(3, "naive")
    xr, xi = 3 + 2 * torch.randn(64, 3, 5, 5, generator=gen), -1 + 0.5 * torch.randn(64, 3, 5, 5, generator=gen)
    zr, zi = bn((xr, xi))
    for z in (zr, zi):
        torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(z.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    bn.eval()
    with torch.no_grad():
        bn.bn_real.weight.copy_(torch.tensor([1.5, -0.7, 0.0]))
    out = bn((xr, xi))[0]
    s = bn.bn_real.weight / torch.sqrt(bn.bn_real.running_var + bn.bn_real.eps)
    expected = (xr * s.view(1, -1, 1, 1)) + (bn.bn_real.bias - bn.bn_real.running_mean * s).view(1, -1, 1, 1)
    assert torch.equal(out, expected)
    torch.testing.assert_close(out, F.batch_norm(xr, bn.bn_real.running_mean, bn.bn_real.running_var,
                                                 bn.bn_real.weight, bn.bn_real.bias, eps=bn.bn_real.eps))


def test_whitening_batch_norm_gives_identity_covariance_on_training_data():
    gen = torch.Generator().manual_seed(5)
    bn = ComplexBatchNorm2d(4, "whiten")
    with torch.no_grad():  # Gamma = I, beta = 0: the output is the whitened input
        bn.whiten.weight.copy_(torch.tensor([1.0, 0.0, 1.0]).repeat_interleave(4).view(3, 4))
    a = torch.randn(128, 4, 6, 6, generator=gen)
    b = torch.randn(128, 4, 6, 6, generator=gen)
    xr, xi = 2.0 + 3.0 * a, -1.0 + 1.5 * a + 0.4 * b  # strongly correlated parts
    zr, zi = bn((xr, xi))
    dims = (0, 2, 3)
    cov = torch.stack([(zr * zr).mean(dims), (zr * zi).mean(dims), (zi * zi).mean(dims)])
    torch.testing.assert_close(zr.mean(dims), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(zi.mean(dims), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(cov, torch.tensor([[1.0] * 4, [0.0] * 4, [1.0] * 4]), atol=2e-3, rtol=0)
    # naive BN would leave the parts correlated
    nr, ni = ComplexBatchNorm2d(4, "naive")((xr, xi))
    assert float((nr * ni).detach().mean(dims).abs().min()) > 0.5
    # eval mode uses the running statistics: after many batches of this data, close to white too
    for _ in range(60):
        bn((xr, xi))
    bn.eval()
    er, ei = bn((xr, xi))
    assert float((er * ei).detach().mean(dims).abs().max()) < 0.05


def test_batch_norm_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="naive, whiten"):
        ComplexBatchNorm2d(3, "batch")


# -- activations and pooling ----------------------------------------------------------------------------------------


def test_crelu_and_pooling_shapes_and_values():
    x = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])
    y = torch.tensor([[[[-1.0, 5.0], [-0.5, 0.25]]]])
    r, i = CReLU()((x, y))
    assert torch.equal(r, torch.tensor([[[[1.0, 0.0], [3.0, 0.0]]]]))
    assert torch.equal(i, torch.tensor([[[[0.0, 5.0], [0.0, 0.25]]]]))
    pr, pi = ComplexMaxPool2d(2)((x, y))
    assert pr.shape == (1, 1, 1, 1) and float(pr) == 3.0 and float(pi) == 5.0  # parts pooled separately
    mr, mi = ComplexMaxPool2d(2, mode="magnitude")((x, y))  # |-2 + 5i| is the largest modulus
    assert (float(mr), float(mi)) == (-2.0, 5.0)
    ar, ai = ComplexAvgPool2d()((x, y))
    assert (float(ar), float(ai)) == (-0.5, 0.9375)
    big = _complex((2, 3, 9, 9), torch.Generator().manual_seed(6))
    out = ComplexMaxPool2d(3, 2, ceil_mode=True)(big)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.complex64
    assert ComplexAvgPool2d(3, 3)(big).shape == (2, 3, 3, 3)


# -- binarization -----------------------------------------------------------------------------------------------------


def test_sign_of_zero_is_plus_one_and_values_are_pm1():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]
    assert set(binarize(torch.randn(1000)).unique().tolist()) == {-1.0, 1.0}


def test_ste_gradient_is_clipped_for_activations_and_weights():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.9, 1.0, 1.01, 4.0], requires_grad=True)
    binarize(x).backward(torch.arange(1.0, 9.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]
    lin = ComplexLinear(4, 2, bias=False, binary=True, scale=False)
    with torch.no_grad():
        lin.linear.weight.copy_(torch.tensor([[2.0, 0.5, -0.5, -1.5, 0.1, 1.0, -1.0, 3.0],
                                              [0.3, -0.3, 0.2, -0.2, 1.2, -1.2, 0.7, -0.7]]))
    gen = torch.Generator().manual_seed(8)
    xr = (3 * torch.randn(5, 4, generator=gen)).requires_grad_()
    xi = (3 * torch.randn(5, 4, generator=gen)).requires_grad_()
    yr, yi = lin((xr, xi))
    (yr.sum() + yi.sum()).backward()
    # d(sum)/d(sign(W)) = sum over the batch of the inputs [sxr, -sxi] (real rows) + [sxi, sxr] (imaginary rows)
    sxr, sxi = sign(xr.detach()), sign(xi.detach())
    d_wb = (torch.cat([sxr, -sxi], 1) + torch.cat([sxi, sxr], 1)).sum(0).expand(2, 8)
    w = lin.linear.weight.detach()
    assert torch.equal(lin.linear.weight.grad, d_wb * (w.abs() <= 1))
    # d(sum)/d(sign(xr)) = sum of the real-input columns: Wr (real rows) + Wi (imaginary rows); clipped at |x| > 1
    wb = sign(w)
    d_xr = (wb[:, :4] + wb[:, 4:]).sum(0).expand(5, 4)
    assert torch.equal(xr.grad, d_xr * (xr.detach().abs() <= 1))
    assert torch.all(xr.grad[xr.detach().abs() > 1] == 0) and bool((xr.detach().abs() > 1).any())


@pytest.mark.parametrize("scale", [True, False])
def test_binary_layer_outputs_are_alpha_times_integers(scale):
    gen = torch.Generator().manual_seed(7)
    conv = ComplexConv2d(5, 4, 3, padding=1, binary=True, scale=scale)
    with torch.no_grad():
        conv.conv.weight[2] = 0  # a pruned filter: real and imaginary rows zero
    x = _complex((2, 5, 6, 6), gen)
    yr, yi = conv((x.real, x.imag))
    alpha = channel_scale(conv.conv.weight, scale)
    w = conv.conv.weight.detach()
    expected_alpha = w.abs().flatten(1).mean(1) if scale else (w.flatten(1) != 0).any(1).float()
    assert torch.equal(alpha, expected_alpha) and float(alpha[2]) == 0.0
    # the reference: a complex conv of the signs (torch complex), times alpha per output channel
    ws = torch.complex(sign(w[:, :5]), sign(w[:, 5:]))
    ints = F.conv2d(torch.complex(sign(x.real), sign(x.imag)), ws, padding=1)
    assert torch.equal(ints.real, ints.real.round()) and torch.equal(ints.imag, ints.imag.round())
    a = alpha.view(1, -1, 1, 1)
    assert torch.equal(yr, ints.real * a) and torch.equal(yi, ints.imag * a)
    assert torch.all(yr[:, 2] == 0) and torch.all(yi[:, 2] == 0)
    assert float(ints.real.abs().max()) <= 2 * 5 * 9  # |Wr xr - Wi xi| <= 2 * Cin * k * k


# -- models ----------------------------------------------------------------------------------------------------------

BCNN_NAMES = ["cnin", "cnin_fp", "cnin_small", "cresnet18", "cresnet18_fp", "cresnet_small"]


@pytest.mark.parametrize("name", BCNN_NAMES)
def test_models_take_real_stacked_and_complex_inputs(name):
    torch.manual_seed(0)
    options = {"width": 0.25} if name in ("cnin", "cnin_fp", "cresnet18", "cresnet18_fp") else {}
    model = build_model(name, in_channels=1, num_classes=7, **options).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
        stacked = build_model(name, in_channels=2, num_classes=11, **options).eval()
        x = torch.randn(2, 2, 32, 32)
        out = stacked(x)
        assert out.shape == (2, 11)
        assert torch.equal(stacked(torch.complex(x[:, :1], x[:, 1:])), out)  # complex tensor == [real; imag]


@pytest.mark.parametrize("mode", ["zero", "fft", "learned"])
def test_complex_input_modes(mode):
    x = torch.randn(2, 3, 8, 8)
    r, i = ComplexInput(3, mode)(x)
    assert r.shape == i.shape == x.shape
    if mode == "zero":
        assert torch.equal(r, x) and not i.any()
    elif mode == "fft":
        f = torch.fft.fft2(x, norm="ortho")
        assert torch.equal(r, f.real) and torch.equal(i, f.imag)
        torch.testing.assert_close((r ** 2 + i ** 2).sum(), (x ** 2).sum())  # energy kept
    else:
        assert torch.equal(r, x) and i.abs().sum() > 0
    model = build_model("cnin_small", in_channels=3, complex_input=mode).eval()
    assert model(x.new_zeros(2, 3, 28, 28).normal_()).shape == (2, 10)


@pytest.mark.parametrize(("options", "field"), [
    ({"width": 0}, "width"), ({"binary": "yes"}, "binary"), ({"norm": "layer"}, "norm"),
    ({"complex_input": "polar"}, "complex_input"), ({"fp_first": 1}, "fp_first"),
])
def test_model_option_errors(options, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        build_model("cnin", in_channels=3, **options)
    with pytest.raises(ConfigError, match="even number"):
        build_model("cnin_small", in_channels=3, complex_input="stacked")


def test_filter_plan_prunes_real_and_imaginary_rows_together():
    from prunus.plan.coupling import couple_plan, project_coupled
    from prunus.plan.recipe import Plan

    torch.manual_seed(0)
    model = build_model("cresnet_small", in_channels=1)
    x = torch.randn(2, 1, 28, 28)
    plan = Plan.uniform(model, 0.5, "filter")
    names = [r.pattern for r in plan.rules]
    assert names[0] == "body.0.conv1.conv.weight" and all(n.endswith(".conv.weight") for n in names)
    coupled = couple_plan(model, plan, x).coupled  # the residual adds: conv2 and the projection of a stage
    residual = [c for c in coupled if "body.1.conv2.conv.weight" in c.params]
    assert len(residual) == 1 and "body.1.shortcut_conv.conv.weight" in residual[0].params
    bn_names = [f"body.1.bn2.bn_{part}.{leaf}" for part in ("real", "imag") for leaf in ("weight", "bias")]
    assert [n for n in bn_names if n in residual[0].params] == bn_names[0::2]  # gamma goes with the filter, beta stays
    beta = {part: getattr(model.body[1].bn2, f"bn_{part}").bias.detach().clone() for part in ("real", "imag")}
    masks = project_coupled(model, plan, x)
    conv = model.body[1].conv2
    dead = (conv.conv.weight.flatten(1) == 0).all(1)
    assert int(dead.sum()) == 16  # half of 32 complex channels
    assert torch.all(conv.weight_real[dead] == 0) and torch.all(conv.weight_imag[dead] == 0)
    assert torch.all(conv.weight_real[~dead].flatten(1).abs().sum(1) > 0)
    shortcut = model.body[1].shortcut_conv.conv.weight
    assert torch.equal((shortcut.flatten(1) == 0).all(1), dead)  # the same residual channels
    for part in ("real", "imag"):  # a pruned channel emits its beta: a constant bit plane the engine folds
        bn = getattr(model.body[1].bn2, f"bn_{part}")
        assert torch.all(bn.weight[dead] == 0) and torch.equal(bn.bias.detach(), beta[part])
    assert "body.1.bn2.bn_imag.weight" in masks and "body.1.bn2.bn_imag.bias" not in masks


def test_prune_to_live_compression_takes_the_smallest_grid_ratio_that_reaches_the_target():
    torch.manual_seed(0)
    model = build_model("cnin_small", in_channels=1, num_classes=10)
    example = torch.randn(2, 1, 16, 16)
    grid = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.3 .. 0.9

    def plan_at(ratio):
        return Plan.uniform(model, ratio, "filter")

    pruned, counts = prune_to_live_compression(model, plan_at, 4.0, example, grid=grid)
    assert (counts["compression"] >= 4.0
            and counts["live_weights"] < counts["nonzero_weights"] <= counts["dense_weights"])
    before = grid[grid.index(counts["ratio"]) - 1]
    _, smaller = prune_to_live_compression(model, plan_at, 1.0, example, grid=(before,))
    assert smaller["compression"] < 4.0  # the grid ratio below does not reach the target
    untouched = [p for p in model.parameters() if p.dim() > 1]
    assert all(bool((p.flatten(1).abs().sum(1) > 0).all()) for p in untouched)  # the input model keeps every filter
