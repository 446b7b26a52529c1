"""The reweighted method: group sums per structure, the bounded penalty, exact hard-prune, resume."""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_methods import PLAN, Denoiser, _distance_to_set, _run

from prunus.constraints.sparsity import group_scores, group_sums, project
from prunus.constraints.structures import num_pruned
from prunus.io import flatten_state, unflatten_state
from prunus.methods import Reweighted
from prunus.plan.recipe import Plan


@pytest.mark.parametrize("structure", ["unstructured", "filter", "channel", "column", "block:2x3", "pattern", "nm:2:4"])
def test_group_sums_match_the_projection_groups(structure):
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    sums = group_sums(w.square(), structure)
    assert sums.shape == w.shape
    if structure in ("filter", "channel", "column", "block:2x3"):  # the groups the projection ranks
        groups = group_scores(w, structure).numel()
        assert torch.allclose(sums.sum(), w.square().sum() * (w.numel() // groups))  # each entry carries its group
    # every entry of a group carries the same sum, and the sum is the group's energy
    if structure == "filter":
        assert torch.allclose(sums[3], w[3].square().sum().expand(4, 3, 3))
    if structure == "channel":
        assert torch.allclose(sums[:, 2], w[:, 2].square().sum().expand(8, 3, 3))
    if structure == "column":
        g = w.reshape(8, -1).square().sum(0)
        assert torch.allclose(sums.reshape(8, -1), g.expand(8, -1))
    if structure == "block:2x3":
        assert torch.allclose(sums.reshape(8, -1)[0:2, 3:6], w.reshape(8, -1)[0:2, 3:6].square().sum().expand(2, 3))
    if structure == "pattern":
        assert torch.allclose(sums[5, 1], w[5, 1].square().sum().expand(3, 3))
    if structure in ("unstructured", "nm:2:4"):
        assert torch.equal(sums, w.square())


def test_penalty_weighs_exactly_the_entries_the_plan_removes():
    torch.manual_seed(0)
    model = Denoiser()
    pruner = Reweighted(model, Plan.from_dict(PLAN), lam=0.5, eps=0.01)
    mid = model.mid.weight.detach()
    _, keep = project(mid, "filter", 0.5)
    P = pruner.state["mid.weight"]["P"]
    assert torch.equal(P != 0, ~keep)  # kept filters are free, removed ones penalised
    dropped = (~keep).flatten(1).all(1).nonzero().flatten()
    eps = 0.01 * float(mid.square().sum()) / 8  # relative eps: 8 filters
    for f in dropped.tolist():
        assert torch.allclose(P[f], torch.full_like(P[f], 1 / (float(mid[f].square().sum()) + eps)))
    # right after reweighting each penalised group contributes ~lam (the count of nonzero groups it approximates)
    dec_groups = num_pruned(0.9, model.dec.weight.numel())
    value = float(pruner.penalty().detach())
    assert 0.5 * (4 + dec_groups) * 0.5 < value <= 0.5 * (4 + dec_groups)


def test_reweighted_drives_removed_groups_to_zero_and_prunes_exactly():
    model, pruner, _, (x, y) = _run(Reweighted, train_rounds=6, lam=1e-2)
    plain, _, _, _ = _run(Reweighted, train_rounds=6, lam=1e-9)
    assert _distance_to_set(model) < 0.1 * _distance_to_set(plain)
    masks = pruner.hard_prune()
    assert int((model.mid.weight.flatten(1).abs().sum(1) == 0).sum()) == 4
    assert int((~masks["dec.weight"]).sum()) == num_pruned(0.9, model.dec.weight.numel())
    assert F.mse_loss(model(x), y) < 0.05
    assert pruner.history[-1]["residual"] < pruner.history[0]["residual"]


def test_global_plan_selects_one_threshold_across_tensors():
    torch.manual_seed(0)
    model = Denoiser()
    plan = Plan.from_dict({"global": True, "prune": {"mid.weight": {"structure": "unstructured", "ratio": 0.8},
                                                      "dec.weight": {"structure": "unstructured", "ratio": 0.8}}})
    pruner = Reweighted(model, plan)
    total = model.mid.weight.numel() + model.dec.weight.numel()
    dropped = sum(int(s["drop"].sum()) for s in pruner.state.values())
    assert dropped == num_pruned(0.8, total)
    largest_dropped = max(float(p.detach().abs()[pruner.state[n]["drop"]].max()) for n, p in pruner.params.items())
    smallest_kept = min(float(p.detach().abs()[~pruner.state[n]["drop"]].min()) for n, p in pruner.params.items())
    assert largest_dropped <= smallest_kept


def test_reweighted_state_dict_resumes_exactly():
    model, pruner, _, (x, y) = _run(Reweighted, train_rounds=2)
    tensors = {}
    skeleton = flatten_state(pruner.state_dict(), "pruner", tensors)
    model2 = copy.deepcopy(model)
    clone = Reweighted(model2, Plan.from_dict(PLAN), lam=0.5)  # other lam: the state must restore it
    clone.load_state_dict(unflatten_state(skeleton, tensors))
    assert clone.lam == pruner.lam
    assert torch.equal(clone.penalty(), pruner.penalty())
    assert pruner.step() == clone.step()


@pytest.mark.parametrize("kw", [{"lam": 0.0}, {"eps": -1.0}])
def test_reweighted_rejects_bad_options(kw):
    with pytest.raises(ValueError, match="lam > 0 and eps > 0"):
        Reweighted(Denoiser(), Plan.from_dict(PLAN), **kw)


def test_budget_grows_lambda_only_while_behind_its_path_and_closes_the_gap():
    """With rounds (as prunus prune gives it) lambda grows by the budget schedule; the run ends nearer the set
    than the same run with lambda fixed, and lambda never shrinks."""
    fixed_model, fixed, _, _ = _run(Reweighted, train_rounds=6, lam=1e-3)
    model, pruner, _, _ = _run(Reweighted, train_rounds=6, lam=1e-3, rounds=6)
    lams = [h["lam"] for h in pruner.history]
    assert lams[0] == 1e-3 and all(b >= a for a, b in zip(lams, lams[1:])) and pruner.lam > 1e-3
    assert all(h["lam"] == 1e-3 for h in fixed.history)
    assert pruner.history[-1]["distance"] < 0.5 * fixed.history[-1]["distance"]
    grown = [k for k in range(1, len(lams)) if lams[k] > lams[k - 1]]
    for k in grown:  # it grew after round k only when that round was behind the geometric path
        assert pruner.history[k - 1]["distance"] > pruner.schedule.planned(k + 1)
