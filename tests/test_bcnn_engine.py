"""The BCNN engine is bit-exact with the PyTorch forward: kernels, thresholds, pooling, pruning, whole models.

What is exact: the integer accumulators of every binary layer equal the +-1 convolution of the
reference (``F.conv2d`` of signs), every packed activation bit equals ``sign`` of the reference
activation, and the engine's logits equal ``model.eval()(x)`` under ``torch.equal`` (no tolerance).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunus.bcnn import sign
from prunus.bcnn.engine import compile_engine
from prunus.bcnn.engine.backends import TorchBackend, popcount_int64
from prunus.bcnn.engine.program import ALWAYS, NEVER, BConv, BitPool, _thresholds, pack_weight_bits
from prunus.bcnn.norms import apply_fold
from prunus.models import build_model

HAS_NUMBA = True
try:
    import numba  # noqa: F401
except ImportError:  # pragma: no cover
    HAS_NUMBA = False

BACKENDS = [pytest.param("numba", marks=pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")), "torch"]
REPO = Path(__file__).resolve().parents[1]


def backend_of(name: str):
    if name == "numba":
        from prunus.bcnn.engine.backends import NumbaBackend

        return NumbaBackend()
    return TorchBackend("cpu", budget=1 << 16)  # small chunks: exercise the chunked path


def unpack(bits, channels: int) -> np.ndarray:
    """uint64 words (B, H, W, nw) -> bool (B, channels, H, W)."""
    words = np.ascontiguousarray(bits).view(np.uint8)
    flat = np.unpackbits(words, axis=-1, bitorder="little")[..., :channels]
    return flat.transpose(0, 3, 1, 2).astype(bool)


def conv_op(signs: torch.Tensor, k: int, stride: int, padding: int, size: tuple[int, int]) -> BConv:
    """A bare binary conv op for +-1 weights ``signs`` (P, L, k, k), no corrections, accumulate mode."""
    P, L = signs.shape[:2]
    ho = (size[0] + 2 * padding - k) // stride + 1
    wo = (size[1] + 2 * padding - k) // stride + 1
    return BConv("t", [0], 1, mode="float", weights=pack_weight_bits((signs > 0).numpy()), nbits=L, stride=stride,
                 padding=padding, kernel=(k, k), out_size=(ho, wo), corr_int=np.zeros(P, np.int32),
                 corr_border=np.zeros((0, 0, 0), np.int32), flip=np.ones(P, np.int64), thr=np.zeros(P, np.int64))


# -- kernels ----------------------------------------------------------------------------------------------------


def test_swar_popcount_on_all_64_bits():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 500, dtype=np.int64),
                             np.array([0, -1, 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max], np.int64)])
    expected = [bin(int(v) & (2**64 - 1)).count("1") for v in values]
    assert popcount_int64(torch.from_numpy(values)).tolist() == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_signs_matches_sign(backend):
    x = torch.randn(2, 70, 3, 5)
    x[0, 0, 0, 0], x[0, 1, 0, 0], x[1, 69, 2, 4] = 0.0, -0.0, float("nan")
    bits = backend_of(backend).pack(x)
    b = bits if backend == "numba" else TorchBackend.to_numpy(bits)
    assert b.shape == (2, 3, 5, 2)
    expected = (x >= 0).numpy()
    assert np.array_equal(unpack(b, 70), expected) and expected[0, 1, 0, 0] and not expected[1, 69, 2, 4]
    assert not np.any(b[..., 1] >> np.uint64(6))  # bits past channel 70 stay 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("channels", "out", "k", "stride", "padding"), [
    (6, 5, 1, 1, 0), (64, 3, 3, 1, 1), (70, 9, 3, 2, 1), (130, 4, 5, 1, 2), (10, 66, 3, 2, 0), (2, 1, 2, 2, 0),
])
def test_binary_conv_accumulators_equal_pm1_convolution(backend, channels, out, k, stride, padding):
    gen = torch.Generator().manual_seed(channels + k)
    x = torch.randn(2, channels, 7, 6, generator=gen)
    w = sign(torch.randn(out, channels, k, k, generator=gen))
    be = backend_of(backend)
    op = conv_op(w, k, stride, padding, (7, 6))
    be.prepare(op)
    acc = be.bconv_acc(op, be.pack(x))
    expected = F.conv2d(sign(x), w, stride=stride, padding=padding)  # zero padding of the +-1 input
    assert acc.dtype == torch.int32 and torch.equal(acc.to(torch.float32), expected)


def test_thresholds_reproduce_bn_and_sign_for_every_accumulator():
    alpha = torch.tensor([0.3, 0.3, 0.3, 0.0, 1.7, 0.02, 0.5])
    s = torch.tensor([1.2, -0.8, 0.0, 1.0, 1e-3, -50.0, 2.0])  # negative gamma, gamma 0, alpha 0
    t = torch.tensor([0.45, -0.1, -0.2, 0.3, 0.0, 0.0, -1e6])
    n = 40
    flip, thr = _thresholds(alpha, s, t, n)
    acc = torch.arange(-n, n + 1, dtype=torch.float32)
    reference = (apply_fold((acc.view(1, 1, -1) * alpha.view(1, -1, 1)), s, t) >= 0)[0].numpy()
    got = flip[:, None] * np.arange(-n, n + 1)[None, :] >= thr[:, None]
    assert np.array_equal(got, reference)
    assert flip[1] == -1 and flip[5] == -1 and flip[0] == 1  # negative gamma flips the comparison
    assert thr[2] == NEVER and thr[3] == ALWAYS and thr[6] == NEVER  # constant outputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("k", "stride", "padding", "ceil"), [(2, 2, 0, False), (3, 2, 0, True), (3, 2, 1, False),
                                                              (3, 1, 1, True), (2, 2, 0, True)])
def test_bit_maxpool_is_sign_of_maxpool(backend, k, stride, padding, ceil):
    from prunus.bcnn.engine.program import _pool_out

    x = torch.randn(2, 67, 9, 7, generator=torch.Generator().manual_seed(k + stride))
    ref = F.max_pool2d(x, k, stride, padding, 1, ceil) >= 0
    size = (_pool_out(9, k, stride, padding, ceil), _pool_out(7, k, stride, padding, ceil))
    assert size == tuple(ref.shape[2:])
    be = backend_of(backend)
    out = be.bit_maxpool(BitPool("p", [0], 1, k, stride, padding, size), be.pack(x))
    bits = out if backend == "numba" else TorchBackend.to_numpy(out)
    assert np.array_equal(unpack(bits, 67), ref.numpy())


# -- whole models --------------------------------------------------------------------------------------------------

MODELS = [
    ("cnin_small", {}, 28, 1),
    ("cnin_small", {"norm": "whiten"}, 28, 1),
    ("cnin_small", {"fp_last": False, "scale": False}, 28, 2),  # binary linear head, stacked complex input
    ("cnin", {"width": 0.125}, 32, 3),  # 5x5 padding 2, 3/2 ceil-mode pools
    ("cresnet_small", {}, 28, 1),
    ("cresnet_small", {"fp_first": False, "fp_last": False, "complex_input": "fft"}, 28, 1),
    ("cresnet18", {"width": 0.125}, 32, 3),  # stride-2 3x3 and 1x1 projection shortcuts
    ("cnin", {"width": 0.125, "int8_first": True}, 32, 2),  # int8 stem (prunus.bcnn.int8), stacked complex input
    ("cresnet_small", {"int8_first": True}, 28, 1),  # int8 stem on a real input, feeding the residual stream
]


def random_bcnn(name: str, options: dict, size: int, cin: int, prune: str, seed: int = 0):
    """A model with random weights and BN statistics (negative gammas included), optionally pruned."""
    torch.manual_seed(seed)
    model = build_model(name, in_channels=cin, num_classes=10, **options)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if model.int8_first:  # randn inputs beyond 2.5 are clipped to +-127
            model.stem.conv.input_scale.fill_(2.5 / 127)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-2, 2, generator=gen)
                m.running_var.uniform_(0.3, 3, generator=gen)
                m.weight.uniform_(-1.5, 1.5, generator=gen)
                m.bias.uniform_(-1, 1, generator=gen)
            if hasattr(m, "running_cov"):
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.running_cov[0].uniform_(0.5, 2, generator=gen)
                m.running_cov[2].uniform_(0.5, 2, generator=gen)
                m.running_cov[1].uniform_(-0.3, 0.3, generator=gen)
                m.weight.uniform_(-1, 1, generator=gen)
                m.bias.uniform_(-1, 1, generator=gen)
    x = torch.randn(5, cin, size, size, generator=gen)
    if prune == "coupled":  # what prunus prune --structure filter does at its hard-prune
        from prunus.plan.coupling import project_coupled
        from prunus.plan.recipe import Plan

        project_coupled(model, Plan.uniform(model, 0.6, "filter"), x[:1])
    elif prune == "random":  # uncoupled zero filters anywhere (residual producers disagree)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.startswith("body") and p.dim() == 4:
                    p[torch.rand(p.shape[0], generator=gen) < 0.4] = 0
    return model.eval(), x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prune", ["none", "coupled", "random"])
@pytest.mark.parametrize(("name", "options", "size", "cin"), MODELS)
def test_engine_logits_equal_pytorch_exactly(backend, prune, name, options, size, cin):
    model, x = random_bcnn(name, options, size, cin, prune)
    with torch.no_grad():
        expected = model(x)
    engine = compile_engine(model, size, backend=backend, device="cpu")
    out = engine(x)
    assert torch.equal(out, expected), (out - expected).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_packed_activation_is_the_sign_of_the_reference(backend):
    from prunus.bcnn.engine.program import BConv as Op

    model, x = random_bcnn("cnin_small", {}, 28, 1, "random", seed=3)
    engine = compile_engine(model, 28, backend=backend, device="cpu")
    values = engine.trace(x)
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: outputs.__setitem__(n, torch.cat(out, 1)))
             for n, m in model.body.named_children()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    checked = 0
    for op in engine.program.ops:
        if isinstance(op, Op) and op.mode == "threshold":
            unit = op.name.split(".")[1]
            pooled = next((o for o in engine.program.ops if isinstance(o, BitPool) and o.src == [op.dst]), None)
            edge = engine.program.edges[pooled.dst if pooled else op.dst]
            bits = values[edge.id]
            bits = bits if backend == "numba" else TorchBackend.to_numpy(bits)
            ref = (outputs[unit] >= 0)[:, torch.from_numpy(edge.live)].numpy()
            assert np.array_equal(unpack(bits, len(edge.live)), ref), op.name
            dead = (outputs[unit] >= 0)[:, torch.from_numpy(edge.dead)]
            signs = torch.from_numpy(edge.const[edge.dead] >= 0)
            assert torch.equal(dead, signs.view(1, -1, 1, 1).expand_as(dead))  # removed channels are constants
            checked += 1
    assert checked == 3


def test_pruned_channels_are_physically_removed():
    model, x = random_bcnn("cnin_small", {}, 28, 1, "coupled", seed=4)
    engine = compile_engine(model, 28, backend="torch", device="cpu")
    convs = [model.body[i].conv for i in range(4)]
    live = [torch.nonzero((c.conv.weight.flatten(1) != 0).any(1)).flatten() for c in convs]
    assert [len(v) for v in live] == [13, 26, 26, 26]  # 60% of 32 / 64 / 64 / 64 complex filters pruned
    ops = engine.program.bconvs()
    assert [op.name for op in ops] == ["body.0", "body.1", "body.2", "body.3"]
    for i, op in enumerate(ops):
        kept = torch.cat([live[i], live[i] + convs[i].out_channels]).numpy()
        assert np.array_equal(op.out_live, kept)  # output rows: exactly the kept real and imaginary channels
        assert op.weights.shape[3] == 2 * len(live[i]) == op.out_channels
        inputs = 2 * (32 if i == 0 else len(live[i - 1]))  # the stem is not pruned (first layer)
        assert op.nbits == inputs and op.weights.shape[2] == -(-inputs // 64)
        if i:
            prev = torch.cat([live[i - 1], live[i - 1] + convs[i - 1].out_channels]).numpy()
            assert np.array_equal(op.in_live, prev)
    info = engine.layers()
    layer = info[1]
    assert (layer.in_channels, layer.in_channels_dense) == (26, 64)
    assert (layer.out_channels, layer.out_channels_dense) == (52, 128)
    dense = compile_engine(random_bcnn("cnin_small", {}, 28, 1, "none", seed=4)[0], 28, backend="torch", device="cpu")
    assert engine.bit_macs < dense.bit_macs / 5
    assert torch.equal(engine(x), model(x))


def test_engine_rejects_models_it_cannot_run():
    from prunus.errors import ConfigError

    with pytest.raises(ConfigError, match="full precision"):
        compile_engine(build_model("cnin_fp", in_channels=1), 28, backend="torch")
    with pytest.raises(ConfigError, match="not a LeNet5"):
        compile_engine(build_model("lenet5", in_channels=1), 28, backend="torch")
    engine = compile_engine(build_model("cnin_small", in_channels=1).eval(), 28, backend="torch")
    with pytest.raises(ValueError, match="28x28"):
        engine(torch.randn(1, 1, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "options", "size", "cin"), MODELS)
def test_cuda_path_is_bit_exact(name, options, size, cin):  # pragma: no cover - no GPU on the CI machine
    model, x = random_bcnn(name, options, size, cin, "coupled")
    engine = compile_engine(model, size, backend="torch", device="cuda")
    assert torch.equal(engine(x), model(x))


# -- the numba backend's chunked, threaded path ---------------------------------------------------------------------

needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")


@needs_numba
@pytest.mark.parametrize(("name", "options", "size", "cin", "prune"), [
    ("cnin", {"width": 0.125}, 32, 3, "coupled"),  # fp stem (live filters, channels-last) feeding bits
    ("cresnet18", {"width": 0.125}, 32, 3, "random"),  # fp stem feeding the residual stream; uncoupled adds
    ("cnin_small", {"norm": "whiten"}, 28, 1, "coupled"),  # whitening BN: PyTorch epilogues inside the chunks
    ("cresnet_small", {"fp_first": False, "fp_last": False}, 28, 2, "none"),  # binary stem and head
    ("cnin", {"width": 0.125, "int8_first": True}, 32, 2, "coupled"),  # int8 stem on the int8 kernel
])
def test_chunked_threaded_path_is_exact_for_any_batch(name, options, size, cin, prune):
    model, _ = random_bcnn(name, options, size, cin, prune, seed=7)
    engine = compile_engine(model, size, threads=2, chunk=4)
    gen = torch.Generator().manual_seed(8)
    for batch in (1, 2, 3, 9):  # one chunk of 1, one chunk, chunks of 4/5 on two threads
        if not engine.runner.supports(batch):
            pytest.skip(f"PyTorch's first layer/head is not batch-invariant here (batch {batch})")
        x = torch.randn(batch, cin, size, size, generator=gen)
        with torch.no_grad():
            assert torch.equal(engine(x), model(x)), batch


@needs_numba
def test_engine_worker_threads_run_pytorch_on_one_thread():
    """The engine's threads are its parallelism: PyTorch ops inside a chunk must not start threads of their own."""
    model, _ = random_bcnn("cnin_small", {}, 28, 1, "none")
    engine = compile_engine(model, 28, threads=2)
    assert engine.runner._executor(2).submit(torch.get_num_threads).result() == 1


def test_chunks_have_one_image_only_when_the_batch_has():
    """PyTorch runs some first layers differently on a single image, so the probe checks batch 1 separately."""
    from prunus.bcnn.engine.runner import chunk_sizes

    for batch in (1, 2, 3, 5, 9, 17, 64, 1023, 1024):
        for chunk in (2, 4, 16):
            sizes = chunk_sizes(batch, chunk)
            assert sum(sizes) == batch and (batch == 1 or min(sizes) >= 2) and max(sizes) - min(sizes) <= 1
            assert max(sizes) <= max(chunk, 3)
    assert chunk_sizes(1024, 16) == [16] * 64


@needs_numba
def test_probe_refuses_a_first_layer_that_changes_with_the_batch(monkeypatch):
    """If PyTorch computed the pruned first layer differently per chunk, the engine runs the whole-batch way."""
    from prunus.bcnn.engine import runner

    real = runner.fp_stem_conv

    def drifting(stem, x, channels_last=False, integer_kernel=False):
        y = real(stem, x, channels_last, integer_kernel)
        return y if x.shape[0] == 1 else torch.nextafter(y, torch.full_like(y, float("inf")))

    monkeypatch.setattr(runner, "fp_stem_conv", drifting)
    model, x = random_bcnn("cnin", {"width": 0.125}, 32, 3, "coupled")
    engine = compile_engine(model, 32, chunk=2)
    assert engine.runner.ok == {1: True, 2: False}
    assert torch.equal(engine(x), model(x))  # 5 images: the exact whole-batch path


@needs_numba
def test_profile_times_every_step_and_keeps_the_logits():
    model, x = random_bcnn("cresnet18", {"width": 0.125}, 32, 3, "coupled")
    engine = compile_engine(model, 32, chunk=2)
    logits, times = engine.profile(x)
    assert torch.equal(logits, model(x))
    assert {"stem", "body.0.conv1", "body.0.conv2+add", "body.2.shortcut", "head"} <= set(times)
    assert all(t >= 0 for t in times.values())


@needs_numba
@pytest.mark.parametrize(("channels", "out", "k", "stride", "padding"), [
    (10, 7, 3, 1, 1), (20, 40, 5, 1, 2), (70, 9, 3, 2, 1), (14, 66, 3, 2, 1), (40, 12, 1, 1, 0),
])
def test_threshold_kernel_with_corrections_matches_the_torch_backend(channels, out, k, stride, padding):
    """Fused threshold epilogue, padding restored at border pixels, removed-channel corrections, ALWAYS/NEVER."""
    from prunus.bcnn.engine.backends import NumbaBackend

    gen = torch.Generator().manual_seed(channels + out)
    x = torch.randn(3, channels, 9, 8, generator=gen)
    op = conv_op(sign(torch.randn(out, channels, k, k, generator=gen)), k, stride, padding, (9, 8))
    rng = np.random.default_rng(channels)
    op.mode = "threshold"
    op.corr_int = rng.integers(-6, 7, out).astype(np.int32)
    border = rng.integers(-4, 5, (*op.out_size, out)).astype(np.int32)
    inner = np.zeros(op.out_size, bool)
    inner[(padding + stride - 1) // stride: (9 + padding - k) // stride + 1,
          (padding + stride - 1) // stride: (8 + padding - k) // stride + 1] = True
    border[inner] = 0  # removed channels change the dot only where a tap falls outside the image
    op.corr_border = border
    op.flip = np.where(rng.random(out) < 0.4, -1, 1).astype(np.int64)
    op.thr = rng.integers(-k * k * channels // 3, k * k * channels // 3, out).astype(np.int64)
    op.flip[0], op.thr[0] = 1, ALWAYS
    op.flip[1], op.thr[1] = 1, NEVER
    nb, tb = NumbaBackend(), TorchBackend("cpu")
    nb.prepare(op)
    tb.prepare(op)
    got = nb.bconv_bits(op, nb.pack(x))
    expected = TorchBackend.to_numpy(tb.bconv_bits(op, tb.pack(x)))
    assert np.array_equal(got, expected)
    assert unpack(got, out)[:, 0].all() and not unpack(got, out)[:, 1].any()


@needs_numba
def test_fp32_backend_is_the_physically_pruned_model_in_pytorch():
    """The timing baseline: PyTorch float32 on live channels only, logits equal to the masked model's."""
    model, x = random_bcnn("cresnet18", {"width": 0.125}, 32, 3, "coupled")
    engine = compile_engine(model, 32, backend="fp32")
    assert engine.runner is None
    with torch.no_grad():
        assert torch.equal(engine(x), model(x))
    stem = next(op for op in engine.program.ops if op.name == "stem").stem
    live = int((model.stem.conv.conv.weight.flatten(1) != 0).any(1).sum())
    assert stem.weight.shape[0] == 2 * live < 2 * model.stem.conv.out_channels


# -- numba specifics -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_popcount_compiles_to_the_cpus_instruction():
    from prunus.bcnn.engine.kernels import popcount_instructions

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    counts = popcount_instructions("ceiling")
    if " avx512_vpopcntdq" in flags:  # on 512-bit registers where LLVM's tuning for the CPU prefers them (AMD Zen 4;
        # Intel Xeons that prefer 256-bit vectors get the same instruction on ymm registers)
        assert counts["vpopcntq"] > 0, counts
    elif " popcnt" in flags:  # scalar popcnt, and on AVX2 LLVM's vector popcount by nibble look-ups
        assert counts["popcnt"] > 0 and counts["vpopcntq"] == counts["zmm_vpopcnt"] == 0, counts
        if " avx2" in flags:
            assert counts["vpshufb"] > 0, counts
    else:  # pragma: no cover
        pytest.skip("not an x86 CPU with a popcount instruction")


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_popcount_ceiling_is_measured():
    from prunus.bcnn.engine.bench import popcount_ceiling

    result = popcount_ceiling(threads=1, seconds=0.01)
    # one thread on L1-resident words: 1-2000 Gbit-MAC/s on x86-64 (235 measured with AVX-512 VPOPCNTDQ); it ran
    # about as long as asked
    assert result["threads"] == 1 and 1e9 < result["bit_macs_per_s"] < 2e12
    assert 0.002 < result["seconds"] < 1.0


def test_library_imports_and_torch_engine_runs_without_numba():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch, prunus.cli, prunus.bcnn, prunus.bcnn.engine\n"
        "from prunus.models import build_model\n"
        "from prunus.errors import MissingDependencyError\n"
        "m = build_model('cnin_small', in_channels=1).eval()\n"
        "x = torch.randn(2, 1, 28, 28)\n"
        "assert torch.equal(prunus.bcnn.engine.compile_engine(m, 28, backend='torch')(x), m(x))\n"
        "try:\n"
        "    prunus.bcnn.engine.compile_engine(m, 28)\n"
        "except MissingDependencyError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "needs the optional package numba" in r.stdout and "pip install 'prunus[bcnn]'" in r.stdout
