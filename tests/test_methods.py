"""SLR, ADMM and magnitude pruning through the shared interface, on a model defined here."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunus.constraints.structures import num_pruned
from prunus.harden.keepers import MaskKeeper
from prunus.harden.stats import CompressionReport
from prunus.io import flatten_state, unflatten_state
from prunus.methods import ADMM, SLR, Magnitude, batch_closure
from prunus.methods.magnitude import cubic_ratio
from prunus.methods.slr import alpha
from prunus.models import build_model
from prunus.plan.projection import hard_prune
from prunus.plan.recipe import Plan


class Denoiser(nn.Module):
    """Not a classifier: maps a noisy 8x8 signal to a clean one (regression, MSE loss)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.dec = nn.Linear(8 * 8 * 8, 64)

    def forward(self, x):
        h = F.relu(self.mid(F.relu(self.enc(x))))
        return self.dec(h.flatten(1)).view(-1, 1, 8, 8)


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.sin(torch.linspace(0, 6, 64)).view(1, 1, 8, 8) * torch.rand(n, 1, 1, 1, generator=g)
    return clean + 0.1 * torch.randn(n, 1, 8, 8, generator=g), clean


PLAN = {"prune": {"mid.weight": {"structure": "filter", "ratio": 0.5},
                  "dec.weight": {"structure": "unstructured", "ratio": 0.9}}}


def _run(method_cls, train_rounds=4, **kw):
    torch.manual_seed(0)
    model = Denoiser()
    x, y = _data()
    plan = Plan.from_dict(PLAN)
    pruner = method_cls(model, plan, closure=batch_closure(model, x, y, F.mse_loss), **kw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(train_rounds):
        for i in range(0, 256, 32):
            loss = F.mse_loss(model(x[i : i + 32]), y[i : i + 32])
            penalty = pruner.penalty()
            if penalty is not None:
                loss = loss + penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.after_optimizer_step()
        pruner.step()
    return model, pruner, opt, (x, y)


def _distance_to_set(model):
    m = copy.deepcopy(model)
    before = [p.detach().clone() for p in m.parameters()]
    hard_prune(m, Plan.from_dict(PLAN).layout(m))
    return sum(float(((a - b.detach()) ** 2).sum()) for a, b in zip(before, m.parameters())) ** 0.5


@pytest.mark.parametrize("method_cls", [SLR, ADMM])
def test_any_module_any_loss_reaches_exact_sparsity(method_cls):
    model, pruner, _, (x, y) = _run(method_cls, train_rounds=6, rho=1.0)
    plain, _, _, _ = _run(method_cls, train_rounds=6, rho=1e-9)  # same training, penalty negligible
    # the method pulls W toward the constraint set: hard-pruning removes much less
    assert _distance_to_set(model) < 0.5 * _distance_to_set(plain)
    masks = pruner.hard_prune()
    mid, dec = model.mid.weight, model.dec.weight
    assert int((mid.flatten(1).abs().sum(1) == 0).sum()) == 4  # 4 of 8 filters
    assert int((dec == 0).sum()) == num_pruned(0.9, dec.numel()) == 29491
    assert int((~masks["dec.weight"]).sum()) == 29491
    assert F.mse_loss(model(x), y) < 0.05  # still denoises after hard-pruning


def test_slr_alpha_and_step_size_rule():
    assert alpha(1, 300, 0.1) == pytest.approx(1 - 1 / 300)
    assert alpha(4, 300, 0.1) == pytest.approx(1 - 1 / (300 * 4 ** (1 - 1 / 4**0.1)))
    _, pruner, _, _ = _run(SLR, train_rounds=3)
    steps = [h for h in pruner.history]
    assert all(h["z_condition"] for h in steps)  # the Z-step is an exact minimiser: L never rises
    assert pruner.j == sum(h["w_condition"] + h["z_condition"] for h in steps)
    # s_j = alpha_j * s_{j-1} * ||W^{k-1} - Z^{k-1}|| / ||W^k - Z^k||, by hand on a known residual
    pruner.j, pruner.s, pruner.prev_residual = 3, 0.01, 2.0
    w = {n: torch.zeros_like(s["Z"]) for n, s in pruner.state.items()}
    z = {n: torch.zeros_like(s["Z"]) for n, s in pruner.state.items()}
    z["mid.weight"].view(-1)[0] = 0.3
    z["mid.weight"].view(-1)[1] = -0.4  # ||W - Z|| = 0.5
    before = pruner.state["mid.weight"]["Lambda"].clone()
    s_j = pruner._multiplier_step(w, z)
    expected = alpha(4, 300, 0.1) * 0.01 * 2.0 / 0.5
    assert s_j == pytest.approx(expected) and pruner.s == pytest.approx(expected) and pruner.j == 4
    assert pruner.prev_residual == pytest.approx(0.5)
    assert torch.allclose(pruner.state["mid.weight"]["Lambda"], before + expected * (w["mid.weight"] - z["mid.weight"]))


def test_slr_keeps_real_copies_and_restores_rejected_multipliers():
    torch.manual_seed(0)
    model = Denoiser()
    x, y = _data()
    calls = []

    def rising_loss():  # f(W_prev) small, f(W) large: the W-step condition must fail
        calls.append(1)
        return torch.tensor(0.0 if len(calls) % 2 == 0 else 1e6)

    pruner = SLR(model, Plan.from_dict(PLAN), closure=rising_loss)
    w_prev = pruner.state["mid.weight"]["W_prev"]
    assert w_prev.data_ptr() != model.mid.weight.data_ptr()
    with torch.no_grad():
        model.mid.weight.add_(1.0)  # a W-step moved the weights
    assert not torch.equal(w_prev, model.mid.weight)  # W^{k-1} is a copy, not an alias
    before = {n: s["Lambda"].clone() for n, s in pruner.state.items()}
    r0 = pruner.prev_residual
    record = pruner.step()
    assert record["w_condition"] is False and len(calls) == 2  # both sides evaluated
    # the accepted Z-step is step j = 1: s_1 = alpha_1 * s_0 * ||W^0 - Z^0|| / ||W^1 - Z^1||, fed the round's residuals
    assert record["z_condition"] is True and pruner.j == 1
    assert record["s"] == pytest.approx(alpha(1, 300.0, 0.1) * 0.01 * r0 / record["residual"])
    # the rejected W-step update left Lambda alone; only the accepted Z-step moved it, by s*(W - Z)
    for n, s in pruner.state.items():
        w = dict(model.named_parameters())[n].detach()
        expected = before[n] + pruner.s * (w - s["Z"])
        assert torch.allclose(s["Lambda"], expected)
    # the live weights are untouched by evaluating f at W_prev
    assert torch.equal(model.mid.weight, w_prev + 1.0)


def test_slr_needs_a_closure():
    model = Denoiser()
    pruner = SLR(model, Plan.from_dict(PLAN))
    with pytest.raises(ValueError, match="closure"):
        pruner.step()


@pytest.mark.parametrize("method_cls", [SLR, ADMM, Magnitude])
def test_state_dict_resumes_exactly(method_cls):
    model, pruner, opt, (x, y) = _run(method_cls, train_rounds=2)
    tensors = {}
    skeleton = flatten_state(pruner.state_dict(), "pruner", tensors)
    model2 = copy.deepcopy(model)
    plan = Plan.from_dict(PLAN)
    clone = method_cls(model2, plan, closure=batch_closure(model2, x, y, F.mse_loss))
    clone.load_state_dict(unflatten_state(skeleton, tensors))
    r1, r2 = pruner.step(), clone.step()
    assert r1 == r2
    for n in pruner.state:
        for k in pruner.state[n]:
            assert torch.equal(pruner.state[n][k], clone.state[n][k]), (n, k)


def test_admm_rho_schedule_keeps_unscaled_multiplier():
    model, pruner, _, _ = _run(ADMM, train_rounds=1, rho=0.1, rho_factor=2.0, rho_max=0.3, penalize="all")
    rho0 = pruner.rho
    u0 = {n: s["U"].clone() for n, s in pruner.state.items()}
    w = {n: p.detach().clone() for n, p in pruner.params.items()}
    pruner.step()
    assert (rho0, pruner.rho) == pytest.approx((0.2, 0.3))  # 0.1 -> 0.2 -> min(0.4, 0.3)
    assert [h["rho"] for h in pruner.history] == pytest.approx([0.1, 0.2])
    for n, s in pruner.state.items():
        # the U-step U + W - Z at the old rho, then U rescaled: the unscaled multiplier rho*U is unchanged
        lam = rho0 * (u0[n] + w[n] - s["Z"])
        assert torch.allclose(pruner.rho * s["U"], lam, atol=1e-7), n
        assert not torch.allclose(s["U"], u0[n] + w[n] - s["Z"])  # and U itself was rescaled


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
])
def test_masked_retraining_keeps_zeros_exactly(make_opt):
    torch.manual_seed(0)
    model = Denoiser()
    masks = hard_prune(model, Plan.from_dict(PLAN).layout(model))
    opt = make_opt(model.parameters())
    MaskKeeper(model, masks).attach(opt)
    x, y = _data()
    zeros_before = {n: int((p == 0).sum()) for n, p in model.named_parameters() if n in masks}
    for _ in range(30):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert torch.all(params[n][~m] == 0.0)
        assert int((params[n] == 0).sum()) == zeros_before[n]
    assert int((~masks["dec.weight"]).sum()) == 29491


def test_magnitude_one_shot_and_gradual_schedule():
    assert [round(cubic_ratio(0.9, k, 4), 4) for k in range(6)] == [0.0, 0.5203, 0.7875, 0.8859, 0.9, 0.9]
    torch.manual_seed(0)
    model = Denoiser()
    Magnitude(model, Plan.from_dict(PLAN))  # one-shot: prunes at construction
    assert int((model.dec.weight == 0).sum()) == 29491  # pruned at construction
    model = Denoiser()
    gradual = Magnitude(model, Plan.from_dict(PLAN), gradual=True, rounds=4)
    assert int((model.dec.weight == 0).sum()) == 0
    gradual.step()
    assert int((model.dec.weight == 0).sum()) == num_pruned(cubic_ratio(0.9, 1, 4), 32768)
    for _ in range(3):
        gradual.step()
    assert int((model.dec.weight == 0).sum()) == 29491
    assert int((model.mid.weight.flatten(1).abs().sum(1) == 0).sum()) == 4


def test_compression_report_counts_lenet5():
    torch.manual_seed(0)
    model = build_model("lenet5")
    plan = Plan.uniform(model, 0.95)
    dense = CompressionReport.of(model, plan, torch.zeros(1, 1, 28, 28))
    assert dense.macs_dense == 117600 + 240000 + 48000 + 10080 + 840
    assert dense.params_total == 61706 and dense.compression == pytest.approx(1.0)
    hard_prune(model, plan.layout(model))
    rep = CompressionReport.of(model, plan, torch.zeros(1, 1, 28, 28))
    assert [(s.name, s.zeros) for s in rep.layers] == [
        ("conv2.weight", num_pruned(0.95, 2400)), ("fc1.weight", num_pruned(0.95, 48000)),
        ("fc2.weight", num_pruned(0.95, 10080))
    ]
    assert rep.compression == pytest.approx(60480 / (120 + 2400 + 504))
    conv_biases = 6 + 16  # zero-initialised conv biases count as zero parameters too
    assert rep.params_nonzero == 61706 - sum(s.zeros for s in rep.layers) - conv_biases
    assert rep.macs_nonzero == 117600 + 240000 * 120 // 2400 + 48000 * 2400 // 48000 + 10080 * 504 // 10080 + 840
    assert math.isclose(rep.to_dict()["compression"], rep.compression)


def test_filter_pruning_zeroes_bias_and_structural_macs_count_removed_channels():
    torch.manual_seed(0)
    model = build_model("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # no accidental zeros
    plan = Plan.from_dict({"prune": {"conv1.weight": {"structure": "filter", "ratio": 0.5}}})
    masks = hard_prune(model, plan.layout(model))
    assert int((~masks["conv1.bias"]).sum()) == 3 and int((model.conv1.bias == 0).sum()) == 3
    probe = torch.zeros(1, 1, 28, 28)
    rep = CompressionReport.of(model, plan, probe)
    # conv1 keeps 3 of 6 filters; conv2 then reads only 3 of its 6 input channels
    assert rep.macs_structural == 784 * 3 * 25 + 100 * 16 * 3 * 25 + 48000 + 10080 + 840
    assert rep.macs_nonzero == 784 * 6 * 25 // 2 + 240000 + 48000 + 10080 + 840
    assert rep.macs_dense == 416520


@pytest.mark.parametrize("penalize", ["all", "removed"])
def test_penalty_is_the_augmented_lagrangian_term(penalize):
    """The fused penalty equals <Lambda, W - Z> + rho/2 ||W - Z||^2 (SLR) and rho/2 ||W - Z + U||^2 (ADMM);
    with penalize="removed" only over the entries the Z-step removed (Z minimised out on the kept ones:
    -Lambda^2/(2 rho) each for SLR, 0 for ADMM, whose kept U is 0 after a U-step)."""
    for method_cls in (SLR, ADMM):
        model, pruner, _, _ = _run(method_cls, train_rounds=2, rho=0.3, penalize=penalize)
        params = dict(model.named_parameters())
        expected = 0.0
        for n, s in pruner.state.items():
            d = params[n] - s["Z"]
            on = ~s["keep"] if penalize == "removed" else torch.ones_like(s["keep"])
            if method_cls is SLR:
                assert s["Lambda"].abs().sum() > 0
                expected = expected + ((s["Lambda"] * d + 0.5 * pruner.rho * d**2) * on).sum()
                expected = expected - (s["Lambda"] ** 2 * ~on).sum() / (2 * pruner.rho)
            else:
                expected = expected + 0.5 * pruner.rho * (((d + s["U"]) ** 2) * on).sum()
        got = pruner.penalty()
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-4, abs=1e-6)
        g1 = torch.autograd.grad(got, [params[n] for n in pruner.state])
        g2 = torch.autograd.grad(expected, [params[n] for n in pruner.state])
        for (n, s), a, b in zip(pruner.state.items(), g1, g2):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
            if penalize == "removed":
                assert torch.count_nonzero(a[s["keep"]]) == 0, n  # kept weights feel no pull at all


def test_magnitude_l1_norm_ranks_filters_by_l1_not_energy():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 0, 0, 0], [1.0, 1, 1, 1]]))  # L1 3 vs 4; energy 9 vs 4
    plan = Plan.from_dict({"prune": {"0.weight": {"structure": "filter", "ratio": 0.5}}})
    l1 = copy.deepcopy(model)
    Magnitude(l1, plan, norm="l1")
    Magnitude(model, plan)
    assert l1[0].weight[0].abs().sum() == 0 and l1[0].weight[1].abs().sum() == 4  # L1 drops the [3,0,0,0] filter
    assert model[0].weight[1].abs().sum() == 0 and model[0].weight[0].abs().sum() == 3  # energy drops [1,1,1,1]
    with pytest.raises(ValueError, match="norm must be 'l1' or 'l2'"):
        Magnitude(copy.deepcopy(model), plan, norm="l3")


def test_budget_schedule_path_and_factors_by_hand():
    from prunus.methods.schedule import BudgetSchedule

    sched = BudgetSchedule(rounds=5, tol=1e-3, max_growth=10.0)
    assert sched.factor(1, 0.1) == pytest.approx(0.1 / (0.1 * (1e-3 / 0.1) ** 0.25))  # d_1 sets the path
    assert sched.first == 0.1
    assert [sched.planned(k) for k in (1, 3, 5, 7)] == pytest.approx([0.1, 0.01, 1e-3, 1e-3])
    assert sched.factor(2, 0.001) == 1.0  # ahead of the path: rho stays
    assert sched.factor(2, 0.5) == 10.0  # far behind: at most max_growth per round
    assert sched.factor(2, float("nan")) == 1.0
    with pytest.raises(ValueError, match="tol"):
        BudgetSchedule(rounds=5, tol=2.0)


@pytest.mark.parametrize("method_cls", [SLR, ADMM])
def test_budget_schedule_reaches_the_set_by_the_last_round(method_cls):
    fixed_model, fixed, _, _ = _run(method_cls, train_rounds=8, rho=0.1)
    model, pruner, _, _ = _run(method_cls, train_rounds=8, rho=0.1, rounds=8)  # rounds: the method's budget
    rhos = [h["rho"] for h in pruner.history]
    assert all(b >= a for a, b in zip(rhos, rhos[1:])) and rhos[-1] > 10 * rhos[0]  # rho only grows, and a lot
    assert {h["rho"] for h in fixed.history} == {0.1}
    # the recorded distance is ||W - Pi(W)|| / ||W|| over the constrained tensors, computed here by hand
    w = {n: p.detach() for n, p in pruner.params.items()}
    gap = sum(float((w[n] - z).square().sum()) for n, (z, _) in pruner.project(w).items())
    assert pruner.distances()[0] == pytest.approx(math.sqrt(gap / sum(float(t.square().sum()) for t in w.values())))
    assert pruner.history[-1]["distance"] < 0.2 * fixed.history[-1]["distance"]
    assert pruner.history[-1]["distance"] < 0.05
    pruner.hard_prune()
    assert pruner.distances()[0] == 0.0


def test_recalibrated_batchnorm_holds_the_exact_average_of_the_batches():
    from types import SimpleNamespace

    from prunus.harden.batchnorm import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    images = torch.randn(96, 1, 6, 6)
    data = SimpleNamespace(images=images, labels=torch.zeros(96, dtype=torch.long))
    weight = model[0].weight.clone()
    assert recalibrate_batchnorm(model, data, batches=3, batch_size=32, seed=0) == 1
    assert not model.training and torch.equal(model[0].weight, weight) and model[1].momentum == 0.1
    out = model[0](images)  # all 96 images, in the 3 batches of the seed's order
    from prunus.data.loader import epoch_generator

    order = torch.randperm(96, generator=epoch_generator(0, -2))
    batches = [model[0](images[i]) for i in order.split(32)]
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, var, atol=1e-5)
    assert torch.allclose(model[1].running_mean, out.mean((0, 2, 3)), atol=1e-5)  # equal batches: the full mean
    assert recalibrate_batchnorm(nn.Linear(3, 2), data) == 0


def test_reestimate_batchnorm_counts_the_frames_it_used():
    """The deployment re-estimate: batches of at most 512 that cover exactly the frames asked for (or the whole set),
    and the count it reports is the count it used (what OUT/deployed records)."""
    from types import SimpleNamespace

    from prunus.harden import batchnorm

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    data = SimpleNamespace(images=torch.randn(3000, 1, 6, 6), labels=torch.zeros(3000, dtype=torch.long))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    assert batchnorm.reestimate_batchnorm(model, data, frames=1000) == 1000 and seen == [500, 500]
    seen.clear()
    assert batchnorm.reestimate_batchnorm(model, data, frames=5000) == 3000 and sum(seen) == 3000
    assert max(seen) <= 512
    with pytest.raises(ValueError, match="frames >= 1"):
        batchnorm.reestimate_batchnorm(model, data, frames=0)


def test_sequential_recalibration_gives_each_batchnorm_its_inference_inputs():
    """Sequentially, BN 2's statistics are those of what it receives in eval mode (BN 1 with its new statistics);
    re-estimated at once, BN 2 saw inputs normalised by each batch's own statistics, then binarized."""
    from types import SimpleNamespace

    from prunus.bcnn.binarize import sign
    from prunus.harden.batchnorm import recalibrate_batchnorm

    class Sign(nn.Module):
        def forward(self, x):
            return sign(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), Sign(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    images = torch.randn(96, 1, 8, 8) + 2 * torch.randn(96, 1, 1, 1)  # small batches differ in mean
    data = SimpleNamespace(images=images, labels=torch.zeros(96, dtype=torch.long))
    at_once = copy.deepcopy(model)
    assert recalibrate_batchnorm(model, data, batches=12, batch_size=8, sequential=True) == 2
    recalibrate_batchnorm(at_once, data, batches=12, batch_size=8)
    model.eval()
    with torch.no_grad():
        seen = model[3](model[2](model[1](model[0](images))))  # BN 2's input at inference
    assert torch.allclose(model[4].running_mean, seen.mean((0, 2, 3)), atol=1e-5)
    assert torch.equal(model[1].running_mean, at_once[1].running_mean)  # the first BN: the same either way
    assert (at_once[4].running_mean - seen.mean((0, 2, 3))).abs().max() > 1e-3  # 100x the sequential one's error
    assert not model.training and model[4].momentum == 0.1


def test_sequential_recalibration_estimates_a_complex_batchnorms_parts_in_one_pass(monkeypatch):
    """bn_real and bn_imag of one ComplexBatchNorm2d share a pass: the statistics equal those of one pass per
    BatchNorm, in half the forward passes."""
    from types import SimpleNamespace

    from prunus.bcnn.layers import ComplexConv2d
    from prunus.bcnn.norms import ComplexBatchNorm2d
    from prunus.harden.batchnorm import recalibrate_batchnorm

    class Pair(nn.Module):  # a real (B, 2, H, W) batch as a complex pair, so the model takes dataset.images
        def forward(self, x):
            return x[:, :1], x[:, 1:]

    torch.manual_seed(0)
    model = nn.Sequential(Pair(), ComplexConv2d(1, 4, 3, binary=True), ComplexBatchNorm2d(4),
                          ComplexConv2d(4, 4, 3, binary=True), ComplexBatchNorm2d(4))
    data = SimpleNamespace(images=torch.randn(64, 2, 8, 8) + torch.randn(64, 1, 1, 1),
                           labels=torch.zeros(64, dtype=torch.long))
    passes = []
    model[0].register_forward_hook(lambda *_: passes.append(1))
    one_each = copy.deepcopy(model)
    assert recalibrate_batchnorm(model, data, batches=4, batch_size=16, sequential=True) == 4
    assert len(passes) == 2 * 4  # two groups (one per complex BatchNorm) of 4 batches
    monkeypatch.setattr(ComplexBatchNorm2d, "independent_norms", False)
    passes.clear()
    recalibrate_batchnorm(one_each, data, batches=4, batch_size=16, sequential=True)
    assert len(passes) == 4 * 4
    for name, buffer in model.state_dict().items():
        assert torch.equal(buffer, one_each.state_dict()[name]), name


def test_batch_closure_in_chunks_gives_the_one_pass_loss_and_leaves_batchnorm_alone():
    """The fixed batch runs in chunks of CLOSURE_CHUNK (faster on a CPU); in eval mode that is the one-pass loss."""
    from prunus.methods.base import CLOSURE_CHUNK

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).train()
    x, y = torch.randn(2 * CLOSURE_CHUNK + 7, 1, 8, 8), torch.randint(0, 3, (2 * CLOSURE_CHUNK + 7,))
    stats = model[1].running_mean.clone()
    loss = batch_closure(model, x, y, F.cross_entropy)()
    with torch.no_grad():
        one_pass = F.cross_entropy(model.eval()(x), y)
    assert float(loss) == pytest.approx(float(one_pass), rel=1e-6)
    assert torch.equal(model[1].running_mean, stats)
