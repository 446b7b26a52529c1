"""SLR/ADMM's penalty as a proximal step (penalty_step="proximal"): the exact map, and why it exists (Adam)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunus.errors import ConfigError
from prunus.methods import ADMM, SLR, batch_closure
from prunus.methods.registry import build_method
from prunus.plan.recipe import Plan

PLAN = {"prune": {"0.weight": {"structure": "unstructured", "ratio": 0.5}}}


def _linear():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 13.0).view(3, 4) * torch.tensor([1.0, -1.0, 1.0, -1.0]))
    return model


def test_proximal_step_is_the_exact_proximal_map_on_the_removed_entries():
    model = _linear()
    pruner = ADMM(model, Plan.from_dict(PLAN), rho=2.0, penalty_step="proximal")
    w = model[0].weight.detach().clone()
    removed = w.abs() <= 6  # the Z-step keeps the 6 largest of 12; ADMM's anchor Z - U is 0 there
    assert pruner.penalty() is None  # the loss is left alone
    pruner.proximal_step(0.1)
    # argmin_V rho/2 ||V - 0||^2 + ||V - W||^2 / (2 lr) = W / (1 + lr rho) on the removed entries
    expected = torch.where(removed, w / 1.2, w)
    assert torch.allclose(model[0].weight.detach(), expected, rtol=1e-6, atol=0)
    assert torch.equal(model[0].weight.detach()[~removed], w[~removed])  # kept entries untouched, exactly
    assert (pruner.prox_steps, pruner.prox_lr_sum) == (1, 0.1)


def test_trainer_hook_takes_the_optimizers_learning_rate():
    model = _linear()
    pruner = SLR(model, Plan.from_dict(PLAN), rho=1.0, penalty_step="proximal")
    with pytest.raises(RuntimeError, match="call proximal_step"):
        pruner.after_optimizer_step()  # outside the Trainer nothing says which lr
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    pruner.setup(SimpleNamespace(optimizer=opt))
    w = model[0].weight.detach().clone()
    pruner.after_optimizer_step()
    removed = w.abs() <= 6
    assert torch.allclose(model[0].weight.detach()[removed], w[removed] / 1.5, rtol=1e-6, atol=0)


class _Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


def _distance_after(penalty_step, rounds=6, batches=5):
    """SLR under Adam at lr 1e-3 for 30 steps on weights of size ~1: Adam alone moves a weight ~0.03."""
    torch.manual_seed(0)
    model = _Wide()
    with torch.no_grad():
        model.b.weight.mul_(6.0)  # |w| ~ 1: far from 0 for 30 Adam steps of 1e-3
    x = torch.randn(160, 16)
    y = (x[:, :4].argmax(1))
    plan = Plan.from_dict({"prune": {"b.weight": {"structure": "unstructured", "ratio": 0.8}}})
    pruner = SLR(model, plan, rounds=rounds, penalty_step=penalty_step,
                 closure=batch_closure(model, x, y, F.cross_entropy))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.setup(SimpleNamespace(optimizer=opt))
    for _ in range(rounds):
        for i in range(batches):
            loss = F.cross_entropy(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32])
            penalty = pruner.penalty()
            opt.zero_grad()
            (loss if penalty is None else loss + penalty).backward()
            opt.step()
            pruner.after_optimizer_step()
        pruner.step()
    return pruner.history[-1]["distance"], pruner.rho


def test_under_adam_only_the_proximal_step_reaches_the_set_in_a_short_budget():
    loss_distance, loss_rho = _distance_after("loss")
    prox_distance, _ = _distance_after("proximal")
    assert loss_distance > 0.5 and loss_rho > 1e3  # rho grew a thousandfold, the weights barely moved
    assert prox_distance < 0.01


def test_penalty_step_is_a_method_option_checked_like_the_others():
    model = _linear()
    assert build_method("slr", model, Plan.from_dict(PLAN), {"penalty_step": "proximal"}).penalty_step == "proximal"
    with pytest.raises(ConfigError, match="penalty_step must be one of loss, proximal"):
        build_method("admm", model, Plan.from_dict(PLAN), {"penalty_step": "prox"})


def test_a_resumed_run_keeps_the_rounds_proximal_steps():
    model = _linear()
    pruner = SLR(model, Plan.from_dict(PLAN), rho=1.0, penalty_step="proximal", rounds=4)
    pruner.proximal_step(0.01)
    pruner.proximal_step(0.02)
    state = pruner.state_dict()
    other = SLR(_linear(), Plan.from_dict(PLAN), rho=1.0, penalty_step="proximal", rounds=4)
    other.load_state_dict(state)
    assert (other.prox_steps, other.prox_lr_sum) == (2, pytest.approx(0.03))


def test_the_trainer_hook_uses_the_base_lr_not_the_scheduled_one():
    """A cosine schedule's last rounds have lr near 0: the pull must not fade with it."""
    model = _linear()
    pruner = SLR(model, Plan.from_dict(PLAN), rho=1.0, penalty_step="proximal")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.01)  # lr now 0.005, initial_lr 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005) and schedule.base_lrs == [0.5]
    pruner.setup(SimpleNamespace(optimizer=opt))
    w = model[0].weight.detach().clone()
    pruner.after_optimizer_step()
    removed = w.abs() <= 6
    assert torch.allclose(model[0].weight.detach()[removed], w[removed] / 1.5, rtol=1e-6, atol=0)


def test_budget_rho_for_the_proximal_step_by_hand():
    from prunus.methods.schedule import BudgetSchedule

    s = BudgetSchedule(rounds=3, tol=0.01, max_growth=10.0)
    # round 1 measured 1.0: the path is 1.0 -> 0.1 -> 0.01; behind it by 5x at round 1 (0.5 vs d*_2 = 0.1)
    s.first = 1.0
    shrink = (5.0 ** (1 / 10) - 1) / 0.01  # 10 steps of lr 0.01 must shrink by 5x: 17.46
    assert s.proximal_rho(1, 0.5, 2.0, steps=10, lr=0.01) == pytest.approx(shrink)
    assert s.proximal_rho(1, 0.5, 20.0, steps=10, lr=0.01) == pytest.approx(20.0 * 5)  # pushed back: rho x 5
    assert s.proximal_rho(1, 0.05, 20.0, steps=10, lr=0.01) == 20.0  # ahead of the path: unchanged
