"""Filter widths by measured latency: exact widths, the MAC target, the greedy rule, errors."""

import pytest
import torch
from test_surgery import calibrated

from prunus.deploy import allocation
from prunus.deploy.allocation import latency_aware_plan, plan_from_widths, shrink_to_widths
from prunus.deploy.latency import Latency
from prunus.deploy.surgery import remove_pruned_channels
from prunus.errors import ConfigError
from prunus.harden.stats import count_macs
from prunus.plan.coupling import project_coupled

PROBE = torch.zeros(1, 1, 8, 8)


def out_channels(model) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_widths_become_a_plan_that_prunes_each_group_to_exactly_its_width():
    model, _ = calibrated("resnet20")
    kept = {"conv1": 8, "layer2.1.conv1": 16, "layer3.0.shortcut.0": 40}
    plan = plan_from_widths(model, PROBE, kept)
    pruned = model
    project_coupled(pruned, plan, PROBE)
    small = remove_pruned_channels(pruned, PROBE).model
    widths = out_channels(small)
    # the stem's group is the whole first residual stream; the shortcut's group is the third stream
    assert [widths[n] for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")] == [8] * 4
    assert widths["layer1.0.conv1"] == 16 and widths["layer2.1.conv1"] == 16 and widths["layer2.2.conv1"] == 32
    assert [widths[n] for n in ("layer3.0.shortcut.0", "layer3.0.conv2", "layer3.2.conv2")] == [40] * 3
    # the copy built for timing has the same shapes as the pruned-and-removed model
    quick = shrink_to_widths(calibrated("resnet20")[0], PROBE, kept)
    assert out_channels(quick) == widths
    assert sum(p.numel() for p in quick.parameters()) == sum(p.numel() for p in small.parameters())


def test_latency_aware_plan_meets_the_mac_target_in_multiples():
    model, x = calibrated("lenet5")
    dense = count_macs(model, x).dense
    found = latency_aware_plan(model, x, 1.5, round_to=4, min_keep=0.5, batch_size=2, repeats=1)
    assert found.fewer_macs >= 1.5 and found.macs_dense == dense
    for root, k in found.kept.items():
        c = found.channels[root]
        assert k == c or (k % 4 == 0 and k >= c // 2), (root, k, c)
    assert [s.macs for s in found.steps] == sorted({s.macs for s in found.steps}, reverse=True)
    assert found.steps[-1].macs == found.macs and len(found.steps) >= 1
    # the plan, applied by the ordinary coupled projection and surgery, gives the allocation's MACs
    project_coupled(model, found.plan, x)
    assert count_macs(remove_pruned_channels(model, x).model, x).dense == found.macs


def test_the_greedy_step_takes_the_largest_time_saving_per_mac(monkeypatch):
    """With a latency that only LeNet-5's conv2 width decides, every step removes from conv2 until its floor."""

    def fake_compare(models, probe, batch_sizes, **_):
        out = {}
        for name, m in models.items():
            ms = float(dict(m.named_modules())["conv2"].out_channels)
            out[name] = {b: Latency(b, ms, ms, ms, ms, 1, 0, 1, "cpu") for b in batch_sizes}
        return out

    monkeypatch.setattr(allocation, "compare_latency", fake_compare)
    model, x = calibrated("lenet5")
    # conv2 at its floor (4 of 16) gives 2.08x fewer MACs: a 2.1x target needs one step more, elsewhere
    found = latency_aware_plan(model, x, 2.1, round_to=4, min_keep=0.25, deploy=False)
    assert [(s.group, s.kept) for s in found.steps[:3]] == [("conv2", 12), ("conv2", 8), ("conv2", 4)]
    assert len(found.steps) == 4 and found.steps[3].group != "conv2" and found.fewer_macs >= 2.1
    assert found.kept["conv2"] == 4 and found.latency_ms == 4.0 and found.latency_dense_ms == 16.0


def test_allocation_errors_are_one_clear_sentence():
    model, _ = calibrated("resnet20")
    with pytest.raises(ConfigError, match="target must be a MAC reduction above 1"):
        latency_aware_plan(model, PROBE, 1.0)
    with pytest.raises(ConfigError, match="out of reach keeping at least 1 of every group"):
        latency_aware_plan(model, PROBE, 2.0, min_keep=1.0, batch_size=1, repeats=1)
    with pytest.raises(ConfigError, match="no prunable coupled group has root fc"):
        plan_from_widths(model, PROBE, {"fc": 5})
    with pytest.raises(ConfigError, match="group conv1 has 16 channels; cannot keep 17"):
        plan_from_widths(model, PROBE, {"conv1": 17})
    with pytest.raises(ConfigError, match="prune nothing"):
        plan_from_widths(model, PROBE, {"conv1": 16})
