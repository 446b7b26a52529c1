"""The reference training loop: batching, schedules, resume after SIGKILL, DDP equivalence."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_user_error, run_cli
from rich.console import Console
from safetensors.torch import load_file

from prunus.data import load_dataset
from prunus.data.loader import Batches, global_mean_scale
from prunus.errors import ConfigError, TrainingDiverged
from prunus.hooks import TrainingHook
from prunus.models import build_model
from prunus.models.loading import load_model
from prunus.train.config import TrainConfig, lr_factor
from prunus.train.run import train
from prunus.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def _fake_dataset(n: int):
    return SimpleNamespace(images=torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1), labels=torch.arange(n))


def test_rank_shards_partition_each_global_batch():
    ds = _fake_dataset(103)
    single = Batches(ds, 10, seed=5)
    ranks = [Batches(ds, 10, seed=5, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        for b in [single, *ranks]:
            b.set_epoch(epoch)
        whole = [y for _, y, _ in single]
        parts = [list(r) for r in ranks]
        # the final global batch of 3 still has one element per rank; every batch is kept
        assert len(whole) == 11 and all(len(p) == 11 for p in parts)
        for i, batch in enumerate(whole):
            joined = torch.cat([p[i][1] for p in parts])
            assert sorted(joined.tolist()) == sorted(batch.tolist())
            assert all(p[i][2] == len(batch) for p in parts)
    # shuffling depends on the epoch and is the same for the same (seed, epoch)
    single.set_epoch(0)
    e0 = torch.cat([y for _, y, _ in single])
    single.set_epoch(1)
    e1 = torch.cat([y for _, y, _ in single])
    single.set_epoch(0)
    assert torch.equal(e0, torch.cat([y for _, y, _ in single])) and not torch.equal(e0, e1)
    assert sorted(e0.tolist()) == list(range(103))


def test_global_mean_scale_recovers_global_mean():
    losses = torch.rand(7)
    shards = [losses[r::2] for r in range(2)]
    averaged = sum(s.mean() * global_mean_scale(len(s), 7, 2) for s in shards) / 2
    assert torch.allclose(averaged, losses.mean())


def test_lr_schedules():
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert [lr_factor("step", e, 8) for e in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor("constant", 7, 8) == 1.0


def test_cosine_step_decays_every_step_to_almost_zero_and_continues_across_epochs():
    """cosine-step: the cosine curve per optimizer step, so the last epoch of a short retraining does not keep
    stepping at 9.5% of the lr (cosine's last epoch of 5; benchmarks/bcnn_bn_statistics.py)."""
    steps, epochs = 86, 5
    factors = [lr_factor("cosine-step", e, epochs, s, steps) for e in range(epochs) for s in range(steps)]
    assert factors[0] == 1.0 and all(a > b for a, b in zip(factors, factors[1:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 429 / 430))) and factors[-1] < 2e-5
    assert lr_factor("cosine-step", 2, epochs, 43, steps) == pytest.approx(lr_factor("cosine", 2.5, epochs))
    assert lr_factor("cosine", 4, epochs) == pytest.approx(0.0955, abs=1e-4)


def test_trainer_sets_the_lr_of_every_step_under_cosine_step(tmp_path):
    seen = []

    class LrProbe(TrainingHook):
        def bind(self, trainer):
            self.trainer = trainer

        def after_optimizer_step(self):
            seen.append(self.trainer.optimizer.param_groups[0]["lr"])

    probe = LrProbe()
    cfg = TrainConfig(model="lenet5", dataset="digits", epochs=2, batch_size=256, lr=0.01, schedule="cosine-step")
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    trainer = Trainer(build_model("lenet5", in_channels=1, num_classes=10), train_set, test_set, cfg,
                      tmp_path / "run", hooks=[probe])
    probe.bind(trainer)
    trainer.fit()
    steps = len(seen) // 2
    assert seen == pytest.approx([0.01 * lr_factor("cosine-step", e, 2, s, steps) for e in (0, 1)
                                  for s in range(steps)])


@pytest.mark.parametrize(
    "field,value,match",
    [("epochs", 0, "--epochs"), ("lr", -1.0, "--lr"), ("optimizer", "rmsprop", "--optimizer"),
     ("momentum", 1.5, "--momentum")],
)
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{field: value}).validate()


def test_trains_on_digits_and_checkpoint_reloads(tmp_path):
    cfg = TrainConfig(model="lenet5", dataset="digits", epochs=3, batch_size=32, lr=0.05)
    trainer = train(cfg, tmp_path / "run")
    final = trainer.history[-1]["test_accuracy"]
    assert final >= 90.0, f"LeNet-5 on digits reached only {final:.1f}%"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # only the newest keep_checkpoints (2) are kept
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003"]
    model, ckpt = load_model(tmp_path / "run")
    assert ckpt.meta["epoch"] == 2
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def _prunus(*args, env=None, **kw):
    cmd = [sys.executable, "-m", "prunus", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _final_state(run: Path):
    model, ckpt = load_model(run)
    return model.state_dict(), ckpt.meta["history"]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = ["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "6", "--batch-size", "16", "--seed", "3"]
    full = _prunus(*args, "--out", str(tmp_path / "full"))
    killed = _prunus(*args, "--out", str(tmp_path / "killed"))
    first = tmp_path / "killed" / "checkpoints" / "epoch-0001"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("epoch-*"))
    assert done and done[-1] < "epoch-0006", f"kill came too late: {done}"

    resumed = _prunus("train", "--resume", str(tmp_path / "killed"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed" in out
    full.communicate(timeout=300)
    assert full.returncode == 0

    state_a, hist_a = _final_state(tmp_path / "full")
    state_b, hist_b = _final_state(tmp_path / "killed")
    assert [h["test_accuracy"] for h in hist_a] == [h["test_accuracy"] for h in hist_b]
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    metrics = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6]


def test_two_process_ddp_matches_single_process(tmp_path):
    args = ["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--batch-size", "32", "--seed", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = _prunus(*args, "--out", str(tmp_path / "single"), env=env)
    out, err = single.communicate(timeout=300)
    assert single.returncode == 0, err
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "prunus", *args,
         "--out", str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    state_1, hist_1 = _final_state(tmp_path / "single")
    state_2, hist_2 = _final_state(tmp_path / "ddp")
    for k in state_1:
        assert torch.allclose(state_1[k], state_2[k], atol=2e-4, rtol=1e-3), (k, (state_1[k] - state_2[k]).abs().max())
    for h1, h2 in zip(hist_1, hist_2):
        assert abs(h1["test_accuracy"] - h2["test_accuracy"]) <= 0.6
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-3)


def test_environment_names_the_cpus_vector_extension(monkeypatch, tmp_path):
    import prunus.environment as training

    cpuinfo = tmp_path / "cpuinfo"
    real = training.Path

    def fake_path(p, *a):
        return cpuinfo if str(p) == "/proc/cpuinfo" else real(p, *a)

    monkeypatch.setattr(training, "Path", fake_path)
    for flags, expected in [("fpu sse4_2 avx avx2 fma", "AMD EPYC (AVX2)"),
                            ("avx2 avx512f avx512_vpopcntdq", "AMD EPYC (AVX-512 VPOPCNTDQ)"),
                            ("avx2 avx512f", "AMD EPYC (AVX-512)"), ("fpu", "AMD EPYC")]:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\n")
        assert training.environment_info()["cpu"] == expected
    # bfloat16 in hardware: AVX-512 BF16 or AMX; an AVX-512 CPU without either emulates it
    for flags, native in [("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16 amx_tile", True),
                          ("avx2 avx512f avx512_vpopcntdq", False), ("fpu avx2", False)]:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: fpu\n")
        assert training.cpu_has_native_bf16() is native, flags
    cpuinfo.unlink()
    assert training.cpu_has_native_bf16() is None and training.environment_info()["cpu"]


@pytest.mark.parametrize("native", [True, False, None])
def test_bf16_on_a_cpu_without_bf16_hardware_warns(monkeypatch, tmp_path, native):
    """Emulated bf16 autocast trains ~13x slower than float32 (AMD EPYC, AVX2): the Trainer says so, once."""
    import prunus.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: native)
    digits = load_dataset("digits", "train")
    for precision in ("bf16", "fp32"):
        out = io.StringIO()
        Trainer(build_model("lenet5", 1, 10), digits, digits, TrainConfig(precision=precision), tmp_path / precision,
                device=torch.device("cpu"), console=Console(file=out, width=400))
        warned = "warning: --precision bf16 on a CPU without bfloat16 hardware" in out.getvalue()
        assert warned == (precision == "bf16" and native is False), out.getvalue()
        if warned:
            assert out.getvalue().count("warning") == 1 and "--precision fp32 trains faster here" in out.getvalue()


class _NaNAtEpoch(TrainingHook):
    """A penalty that turns NaN at one epoch: a method or a learning rate blowing up mid-run."""

    name = "nan"

    def __init__(self, epoch: int):
        self.epoch, self.now = epoch, 0

    def penalty(self):
        return torch.tensor(float("nan")) if self.now == self.epoch else None

    def end_of_epoch(self, epoch: int) -> None:
        self.now = epoch + 1


def test_divergence_stops_within_one_step_and_keeps_the_last_good_checkpoint(tmp_path):
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 10)
    run = tmp_path / "run"
    trainer = Trainer(model, train_set, test_set, TrainConfig(epochs=3, batch_size=64), run, hooks=[_NaNAtEpoch(1)],
                      console=Console(file=io.StringIO()))
    with pytest.raises(TrainingDiverged, match=r"^epoch 2, step 1: the training loss is nan \(diverged\); "
                                               r"the last good checkpoint is .*epoch-0001; lower the learning rate"):
        trainer.fit()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch-0001"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_diverging_cli_run_is_one_line_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--lr", "1000",
                           "--out", tmp_path / "run")
    assert_user_error(code, err, "epoch 1, step", "diverged", "no checkpoint was written yet")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_autocast_trains_with_other_numbers(tmp_path):
    recipe = dict(model="lenet5", dataset="digits", epochs=3, batch_size=32, optimizer="adam", lr=0.003)
    fp32 = train(TrainConfig(**recipe), tmp_path / "fp32")
    bf16 = train(TrainConfig(**recipe, precision="bf16"), tmp_path / "bf16")
    acc32, acc16 = fp32.history[-1]["test_accuracy"], bf16.history[-1]["test_accuracy"]
    assert acc16 >= 85.0 and abs(acc32 - acc16) <= 5.0
    # the forward pass really ran in bfloat16: the trained weights differ from the float32 run's
    assert any(not torch.equal(a, b)
               for a, b in zip(fp32.model.state_dict().values(), bf16.model.state_dict().values()))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["config"]["precision"] == "bf16"
    with pytest.raises(ConfigError, match="--precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16").validate()


def test_compiled_training_keeps_masks_and_saves_the_plain_model(tmp_path):
    """--compile: the steps run through torch.compile (gradient hooks and in-place weight updates included); the
    checkpoint holds the model's own parameter names; accuracy as eager (the last bits differ); the same run again
    gives the same bits."""
    from prunus.harden.keepers import MaskKeeper

    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True), ("again", True)):
        torch.manual_seed(0)
        model = build_model("lenet5", 1, 10)
        mask = torch.rand_like(model.fc1.weight) > 0.5
        config = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=0.003, compile=compiled)
        runs[name] = Trainer(model, train_set, test_set, config, tmp_path / name,
                             hooks=[MaskKeeper(model, {"fc1.weight": mask})], console=Console(file=io.StringIO()))
        runs[name].fit()
    eager, compiled = runs["eager"], runs["compiled"]
    assert all(torch.equal(a, b) for a, b in zip(compiled.model.state_dict().values(),
                                                 runs["again"].model.state_dict().values()))  # deterministic
    assert type(compiled.net).__name__ == "OptimizedModule" and eager.net is eager.model
    assert int((compiled.model.fc1.weight[~mask] != 0).sum()) == 0
    assert int((compiled.model.fc1.weight[mask] != 0).sum()) == int(mask.sum())
    saved = load_file(tmp_path / "compiled" / "checkpoints" / "epoch-0002" / "model.safetensors")
    assert saved.keys() == eager.model.state_dict().keys()
    acc, acc_compiled = eager.history[-1]["test_accuracy"], compiled.history[-1]["test_accuracy"]
    assert acc_compiled >= 85.0 and abs(acc - acc_compiled) <= 3.0


def test_compile_is_refused_with_dp_sgd(tmp_path):
    pytest.importorskip("opacus")
    from prunus.privacy.defenses.dpsgd import DPSGD

    train_set = load_dataset("digits", "train")
    with pytest.raises(ConfigError, match=r"^DP-SGD cannot be compiled .*drop --compile$"):
        Trainer(build_model("lenet5", 1, 10), train_set, train_set, TrainConfig(compile=True), tmp_path / "run",
                hooks=[DPSGD(epsilon=8.0, delta=1e-5)], console=Console(file=io.StringIO()))


def test_compile_reaches_every_phase_and_the_loss_closure(dense_digits, monkeypatch):
    """--compile of prunus prune / quantize: each phase's training steps and SLR's closure (same loss up to the
    last bits); without it, both stay eager."""
    from prunus.jobs.common import JobInput
    from prunus.jobs.prune import PruneConfig
    from prunus.jobs.quantize import QuantizeConfig

    config = PruneConfig(compile=True)
    assert config.train_config(1, 0.1, "cosine").compile and config.retrain_config().compile
    assert QuantizeConfig(compile=True).method_config().compile and not PruneConfig().retrain_config().compile
    job = JobInput.load(dense_digits)
    compiled_modules = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled_modules.append(m) or real_compile(m, **kw))
    eager = job.closure(512, 0)
    assert compiled_modules == []
    compiled = job.closure(512, 0, compiled=True)
    assert compiled_modules == [job.model]
    assert abs(float(compiled()) - float(eager())) <= 1e-5 * float(eager())


def test_train_cli_compile_flag_is_recorded(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--compile",
                             "--out", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["compile"] is True
    assert (tmp_path / "run" / "checkpoints" / "epoch-0001" / "model.safetensors").exists()


def test_prune_compiles_the_closure_and_every_phase(dense_digits, monkeypatch, tmp_path):
    """run_pruning with compile=True: the method's closure and both phases' training steps go through compile_model
    (recorded here instead of compiled); without it, nothing does."""
    import prunus.jobs.common as job_common
    import prunus.train.trainer as trainer_module
    from prunus.jobs.prune import PruneConfig, run_pruning
    from prunus.plan.recipe import Plan

    seen = []
    monkeypatch.setattr(job_common, "compile_model", lambda m: seen.append("closure") or m)
    monkeypatch.setattr(trainer_module, "compile_model", lambda m: seen.append("steps") or m)
    plan = Plan.from_dict({"prune": {"conv2.weight": {"structure": "filter", "ratio": 0.5}}})
    for compiled in (False, True):
        seen.clear()
        config = PruneConfig(method="slr", epochs=1, retrain_epochs=1, compile=compiled)
        run_pruning(dense_digits, plan, config, tmp_path / str(compiled), console=Console(file=io.StringIO()))
        assert seen == (["closure", "steps", "steps"] if compiled else [])
