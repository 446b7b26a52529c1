"""Latency measurement: structure and sanity of the numbers, on a tiny model with few runs (no timing thresholds)."""

import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from prunus.deploy.latency import (Latency, _quantile, compare_latency, denormals_flushed, for_inference,
                                   measure_latency)


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_latency_structure_and_ordering():
    model = tiny().train()
    result = measure_latency(model, torch.randn(1, 1, 6, 6), (1, 4), repeats=3, warmup=1)
    assert list(result) == [1, 4]
    for b, lat in result.items():
        assert isinstance(lat, Latency) and lat.batch_size == b
        assert (lat.repeats, lat.warmup, lat.threads, lat.device) == (3, 1, torch.get_num_threads(), "cpu")
        assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms <= lat.max_ms
        assert lat.per_sample_ms == pytest.approx(lat.median_ms / b)
        assert set(lat.to_dict()) == {"batch_size", "median_ms", "min_ms", "p90_ms", "max_ms", "repeats", "warmup",
                                      "threads", "device", "denormals_flushed"}
    assert model.training, "the train flag must be restored"
    assert all(p.grad is None for p in model.parameters())
    assert int(model[1].num_batches_tracked) == 0, "timing runs must not update BatchNorm statistics"


def test_quantile_matches_linear_interpolation():
    values = sorted([5.0, 1.0, 3.0, 2.0, 4.0])
    assert _quantile(values, 0.5) == statistics.median(values) == 3.0
    assert _quantile(values, 0.9) == pytest.approx(4.6)
    assert _quantile([7.0], 0.9) == 7.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(tiny(), torch.randn(1, 1, 6, 6), (1,), repeats=0)
    with pytest.raises(ValueError, match="batch sizes"):
        measure_latency(tiny(), torch.randn(1, 1, 6, 6), (0,))


def test_compare_latency_times_every_model_at_every_batch_size():
    a, b = tiny().train(), tiny().eval()
    result = compare_latency({"dense": a, "small": b}, torch.randn(1, 1, 6, 6), (1, 2), repeats=2, warmup=0)
    assert set(result) == {"dense", "small"} and all(list(r) == [1, 2] for r in result.values())
    assert result["dense"][2].repeats == 2 and result["small"][1].batch_size == 1
    assert a.training and not b.training, "each model's train flag must be restored"


class SeesDenormals(nn.Module):
    """Records, on each forward, whether a denormal float32 survives multiplication by one."""

    def __init__(self):
        super().__init__()
        self.flushed: list[bool] = []

    def forward(self, x):
        self.flushed.append(denormals_flushed())
        if getattr(self, "fail", False):
            raise ValueError("forward failed")
        return x


def test_timing_flushes_denormals_and_restores_the_setting():
    # a denormal operand costs x86 a microcode assist; the timed runs measure the shape, not the values
    m = SeesDenormals()
    assert not denormals_flushed()
    compare_latency({"m": m}, torch.randn(1, 3), (1,), repeats=2, warmup=1)
    assert m.flushed == [True, True, True]
    assert not denormals_flushed(), "the process's setting must be restored"
    torch.set_flush_denormal(True)
    try:
        compare_latency({"m": m}, torch.randn(1, 3), (1,), repeats=1, warmup=0)
        assert denormals_flushed(), "a process that flushed before still flushes after"
    finally:
        torch.set_flush_denormal(False)
    m.fail = True
    with pytest.raises(ValueError, match="forward failed"):  # a failure half-way restores the setting too
        compare_latency({"m": m}, torch.randn(1, 3), (1,), repeats=1, warmup=0)
    assert m.flushed[-1] and not denormals_flushed()


_FLUSH_PROBE = """
import sys, torch
from prunus.deploy.latency import flush_denormals_for_timing, measure_latency
torch.set_num_threads(2)
if sys.argv[1] == "first":
    print(flush_denormals_for_timing())
torch.ones(1 << 18).mul(2.0)  # the first parallel operation: the intra-op workers start here
model, x = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), torch.randn(1, 1, 6, 6)
print(measure_latency(model, x, (1,), repeats=1, warmup=0)[1].denormals_flushed)
torch.set_num_threads(1)
print(measure_latency(model, x, (1,), repeats=1, warmup=0)[1].denormals_flushed)
"""


@pytest.mark.parametrize("when, expected", [("first", ["True", "True", "True"]), ("never", ["False", "True"])])
def test_the_flush_is_claimed_only_where_every_thread_has_it(when, expected):
    # torch.set_flush_denormal sets the calling thread; the intra-op workers copy it only when they start, so a
    # process that flushes first flushes on every thread, and timing flushes later on one thread only
    out = subprocess.run([sys.executable, "-c", _FLUSH_PROBE, when], capture_output=True, text=True, check=True)
    assert out.stdout.split() == expected


def test_for_inference_folds_batchnorm_and_keeps_outputs():
    torch.manual_seed(0)
    model = tiny()
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    deployed = for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules()), "BatchNorm should be folded away"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original model is left alone"
    x = torch.randn(5, 1, 6, 6)
    torch.testing.assert_close(deployed(x.to(memory_format=torch.channels_last)), model(x), atol=1e-5, rtol=1e-5)


def test_steady_allocator_sets_glibc_and_declines_elsewhere(monkeypatch):
    """On glibc (these machines) both mallopt calls succeed; without a loadable C library it changes nothing
    and says so."""
    import ctypes

    from prunus.deploy import latency

    assert latency.steady_allocator() is True

    def no_libc(*args, **kwargs):
        raise OSError("no C library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert latency.steady_allocator() is False
