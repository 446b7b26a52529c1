"""Defenses on small real data: the min-max game, MCMIA (exact sparsity, same split), DP-SGD (epsilon, BN)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from prunus.cli import main
from prunus.data import load_dataset
from prunus.errors import ConfigError, MissingDependencyError
from prunus.io import load_checkpoint
from prunus.privacy.defenses import DefenseConfig, RelaxLoss, load_defended, run_defense
from prunus.privacy.splits import split_of_checkpoint

QUIET = Console(quiet=True)
REPO = Path(__file__).resolve().parents[1]


def game_gain(results, last=5):
    gains = [h["h_gain"] for h in results["game"] if h["game"]][-last:]
    return float(np.mean(gains))


def test_min_max_game_lowers_the_inference_gain(tmp_path):
    """Same seeds, same split: with lambda = 0 the inference model h only watches (the classifier is the
    undefended one); with lambda = 3 the classifier plays against it and h's gain drops toward chance."""
    common = dict(defense="advreg", model="lenet5", dataset="fashion-mnist", members=200, epochs=20, batch_size=16,
                  lr=2e-3, warmup_epochs=2, eval_examples=200)
    watch = run_defense(DefenseConfig(**common, adv_lambda=0.0), tmp_path / "watch", console=QUIET)
    game = run_defense(DefenseConfig(**common, adv_lambda=3.0), tmp_path / "game", console=QUIET)
    assert [h["game"] for h in game["game"]] == [False, False] + [True] * 18  # warm-up epochs first
    assert game["game"][0]["attack_steps"] == 0 and game["game"][2]["attack_steps"] == 13  # k = 1 per batch
    chance = 2 * np.log(0.5)
    assert game_gain(watch) > chance + 0.1  # h does find the undefended members
    assert game_gain(game) < game_gain(watch) - 0.05, (game_gain(game), game_gain(watch))
    # Not asserted, because it does not hold at this size: with 200 members the game costs ~8 points of test
    # accuracy and the member/non-member accuracy gap stays ~17-20 points (measured: lambda 3 -> 81.0/61.5%,
    # lambda 0 -> 90.0/73.0%), so a loss attack's AUC does not drop.
    # Whether it does at 10k members is for the benchmark.
    # h never saw the evaluation non-members: its reference set is a prefix of the attacker pool
    split = split_of_checkpoint(load_checkpoint(tmp_path / "game" / "final"))
    assert game["split"]["pool"] == len(split.pool) and len(np.intersect1d(split.pool[:200], split.nonmembers)) == 0


@pytest.fixture(scope="module")
def digits_target(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("def") / "target"
    run_defense(DefenseConfig(defense="none", model="lenet5", dataset="digits", members=300, epochs=6, batch_size=32),
                run, console=QUIET)
    return run


def test_mcmia_prunes_exactly_under_the_game_on_the_same_split(digits_target, tmp_path, capsys):
    out = tmp_path / "mcmia"
    code = main(["defend", "--defense", "mcmia", "--init", str(digits_target / "final"), "--method", "slr",
                 "--compression", "10", "--prune-epochs", "3", "--retrain-epochs", "2", "--warmup-epochs", "1",
                 "--adv-lambda", "1", "--update-every", "5", "--batch-size", "32", "--out", str(out)])
    assert code == 0
    assert "compression 10.0x" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    # the game ran in the pruning epochs after warm-up and throughout masked fine-tuning
    assert [h["game"] for h in results["game"]] == [False, True, True, True, True]
    layers = {e["name"]: e for e in results["report"]["layers"]}
    assert [layers[n]["zeros"] for n in ("conv2.weight", "fc1.weight", "fc2.weight")] == [2160, 43200, 9072]
    model, ckpt = load_defended(out)
    params = dict(model.named_parameters())
    assert int((params["fc1.weight"] == 0).sum()) == 43200  # the zeros survived fine-tuning with the game
    assert ckpt.meta["privacy"]["defense"] == "mcmia"
    target_split = split_of_checkpoint(load_checkpoint(digits_target / "final"))
    assert split_of_checkpoint(ckpt).digest == target_split.digest
    assert ckpt.meta["privacy"]["reference_training"]["epochs"] == 6  # audits train references like the target


def test_prune_defense_on_the_budget_schedule_makes_its_planned_rounds(digits_target, tmp_path):
    """--prune-recipe budget: SLR rounds every 2 batches (3 epochs of 10 batches make 12 or more rounds), rho grown
    round by round; the paper's recipe makes one round per epoch at a fixed rho."""
    runs = {}
    for recipe in ("budget", "paper"):
        out = tmp_path / recipe
        assert main(["defend", "--defense", "prune", "--init", str(digits_target / "final"), "--method", "slr",
                     "--compression", "10", "--prune-epochs", "3", "--retrain-epochs", "1", "--batch-size", "32",
                     "--prune-recipe", recipe, "--out", str(out)]) == 0
        runs[recipe] = json.loads((out / "results.json").read_text())["method_history"]
    assert len(runs["budget"]) == 15 and len(runs["paper"]) == 3
    rho = [h["rho"] for h in runs["budget"]]
    assert all(b > a for a, b in zip(rho, rho[1:]))
    assert {h["rho"] for h in runs["paper"]} == {runs["paper"][0]["rho"]}


def test_bf16_channels_last_target_and_its_mcmia_record_the_recipe_references_train_with(tmp_path, capsys):
    """The privacy benchmark's ResNet-20 target trains in bf16 autocast with NHWC tensors (~2.6x faster on the
    CPU): its pruning and game run so too, the zeros are still exact, and the recipe an audit trains its
    reference models with is the bf16 one."""
    target = tmp_path / "target"
    run_defense(DefenseConfig(defense="none", model="lenet5", dataset="digits", members=300, epochs=2, batch_size=32,
                              precision="bf16", channels_last=True), target, console=QUIET)
    recipe = load_checkpoint(target / "final").meta["privacy"]["reference_training"]
    assert (recipe["precision"], recipe["channels_last"]) == ("bf16", True)
    out = tmp_path / "mcmia"
    assert main(["defend", "--defense", "mcmia", "--init", str(target / "final"), "--method", "slr",
                 "--compression", "10", "--prune-epochs", "2", "--retrain-epochs", "1", "--warmup-epochs", "1",
                 "--update-every", "5", "--batch-size", "32", "--precision", "bf16", "--channels-last",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["config"]["precision"], results["config"]["channels_last"]) == ("bf16", True)
    model, ckpt = load_defended(out)
    assert int((dict(model.named_parameters())["fc1.weight"] == 0).sum()) == 43200
    recipe = ckpt.meta["privacy"]["reference_training"]
    assert (recipe["precision"], recipe["channels_last"]) == ("bf16", True)


def test_dpsgd_reaches_its_epsilon(digits_target, tmp_path, capsys):
    out = tmp_path / "dp"
    code = main(["defend", "--defense", "dpsgd", "--init", str(digits_target / "final"), "--epsilon", "4",
                 "--delta", "1e-4", "--epochs", "3", "--batch-size", "32", "--lr", "0.5", "--optimizer", "sgd",
                 "--out", str(out)])
    assert code == 0
    assert "(epsilon, delta) = (" in capsys.readouterr().out
    dp = json.loads((out / "results.json").read_text())["dp"]
    assert dp["delta"] == 1e-4 and dp["target_epsilon"] == 4.0
    assert 3.6 <= dp["epsilon"] <= 4.0 + 0.05, dp["epsilon"]
    assert dp["noise_multiplier"] > 0.3 and dp["groupnorm"] is False
    assert [h["epoch"] for h in dp["history"]] == [1, 2, 3]
    assert dp["history"][-1]["epsilon"] == pytest.approx(dp["epsilon"])
    # progress before the last epoch is RDP's cheap upper bound, the last epoch the run's own (PRV) accountant
    assert [h["epsilon_accountant"] for h in dp["history"]] == ["rdp", "rdp", "prv"]
    assert 0 < dp["history"][0]["epsilon"] < dp["history"][1]["epsilon"]
    results = json.loads((out / "results.json").read_text())
    assert results["device"] == "cpu" and results["environment"]["torch"] == torch.__version__
    # a LeNet-5 needs no replacement: prunus eval loads the DP model as it is
    assert main(["eval", str(out / "final"), "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert acc == pytest.approx(json.loads((out / "results.json").read_text())["test_accuracy"], abs=1e-6)
    assert acc > 20.0  # learnt something under noise (chance is 10%)
    # it was trained from scratch, not from the non-private weights of --init
    assert dp["history"][0]["test_accuracy"] < json.loads((digits_target / "results.json").read_text())["test_accuracy"]


def test_dpsgd_replaces_batchnorm(tmp_path):
    config = DefenseConfig(defense="dpsgd", model="vgg11", model_options={"width": 0.125}, dataset="digits",
                           members=64, epochs=1, batch_size=16, optimizer="sgd", lr=0.1, epsilon=8.0, delta=1e-3)
    results = run_defense(config, tmp_path / "dp-bn", console=QUIET)
    assert results["dp"]["groupnorm"] is True
    model, ckpt = load_defended(tmp_path / "dp-bn")
    assert ckpt.meta["model"]["norm"] == "groupnorm"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert results["dp"]["epsilon"] <= 8.0 + 0.05
    assert ckpt.meta["model"]["options"] == {"width": 0.125}
    # the reloaded GroupNorm model gives the accuracy the run reported
    from prunus.data import load_dataset
    from prunus.train.trainer import evaluate

    assert evaluate(model, load_dataset("digits", "test"))["accuracy"] == pytest.approx(results["test_accuracy"])
    # and so does prunus eval, which goes through training.load_model
    from prunus.cli import main

    assert main(["eval", str(tmp_path / "dp-bn" / "final")]) == 0


def test_relaxloss_modes_and_their_gradients():
    """Above alpha plain descent; below it ascent in even epochs and posterior flattening in odd ones, each with
    the gradient of its own objective (the Trainer adds the penalty to the cross-entropy it logs)."""
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 3
    y = logits.argmax(1).clone()
    y[0] = (y[0] + 1) % 4  # one misclassified example
    relax = RelaxLoss(alpha=50.0, num_classes=4)

    def step(alpha: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        relax.alpha = alpha
        out = logits.clone().requires_grad_(True)
        ce = relax.loss_fn(out, y)
        pen = relax.penalty()
        (ce + (pen if pen is not None else 0)).backward()
        return out.grad, pen

    ce = F.cross_entropy(logits, y)
    grad, pen = step(alpha=float(ce) / 2)  # loss above alpha: descent, no penalty
    assert pen is None and relax.mode(float(ce)) == "descent"
    plain = logits.clone().requires_grad_(True)
    F.cross_entropy(plain, y).backward()
    assert torch.allclose(grad, plain.grad)
    grad, _ = step(alpha=50.0)  # epoch 0, below alpha: ascent on alpha - CE
    assert torch.allclose(grad, -plain.grad, atol=1e-7)
    relax.end_of_epoch(0)
    grad, _ = step(alpha=50.0)  # epoch 1: posterior flattening
    p = torch.softmax(logits, 1)
    target = ((1 - p[range(6), y]) / 3)[:, None].expand(-1, 4).clone()
    target[range(6), y] = p[range(6), y]
    flat = logits.clone().requires_grad_(True)
    per_example = -(target * torch.log_softmax(flat, 1)).sum(1)
    per_example[0] = F.cross_entropy(flat[:1], y[:1])  # the misclassified one keeps plain cross-entropy
    per_example.mean().backward()
    assert torch.allclose(grad, flat.grad, atol=1e-6)
    relax.end_of_epoch(1)
    assert relax.history == [{"epoch": 1, "descent": 1, "ascent": 1, "flatten": 0},
                             {"epoch": 2, "descent": 0, "ascent": 0, "flatten": 1}]
    with pytest.raises(ConfigError, match="--relax-alpha must be a positive number"):
        RelaxLoss(alpha=0.0, num_classes=4)


def test_relaxloss_keeps_the_members_loss_near_alpha(digits_target, tmp_path, capsys):
    """Same split, seed and recipe: undefended, the members' loss falls far below alpha; with RelaxLoss it stays
    near alpha (ascent and flattening alternate by epoch once batches go below it)."""
    recipe = ["--epochs", "12", "--lr", "3e-3", "--batch-size", "32"]
    for defense, extra in (("none", []), ("relaxloss", ["--relax-alpha", "0.3"])):
        code = main(["defend", "--defense", defense, "--init", str(digits_target / "final"), *recipe, *extra,
                     "--out", str(tmp_path / defense)])
        assert code == 0 and f"{defense}: test accuracy" in capsys.readouterr().out
    history = json.loads((tmp_path / "relaxloss" / "results.json").read_text())["relaxloss"]
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert sum(h["ascent"] for h in history) > 0 and sum(h["flatten"] for h in history) > 0
    assert all(h["flatten"] == 0 for h in history[0::2]) and all(h["ascent"] == 0 for h in history[1::2])

    def member_loss(defense: str) -> float:
        model, ckpt = load_defended(tmp_path / defense)
        members = split_of_checkpoint(ckpt).subset(load_dataset("digits", "train"), "members")
        with torch.no_grad():
            return float(F.cross_entropy(model.eval()(members.images), members.labels))

    assert member_loss("none") < 0.15, member_loss("none")
    assert 0.2 < member_loss("relaxloss") < 0.45, member_loss("relaxloss")
    _, ckpt = load_defended(tmp_path / "relaxloss")
    assert ckpt.meta["privacy"]["defense"] == "relaxloss"
    assert split_of_checkpoint(ckpt).digest == split_of_checkpoint(load_checkpoint(digits_target / "final")).digest


def test_prune_recipes_paper_and_budget():
    """paper: fixed rho, a round per epoch, the penalty on every entry (what the LeNet-5 privacy rows ran);
    budget: prunus prune's schedule (rho grown to reach the set by the last round, the method's round spacing)."""
    paper = DefenseConfig(defense="prune", compression=10).prune_config()
    assert (paper.rho_schedule, paper.update_every, paper.options) == ("fixed", 0, {"penalize": "all"})
    budget = DefenseConfig(defense="prune", compression=10, prune_recipe="budget").prune_config()
    assert (budget.rho_schedule, budget.update_every, budget.options) == ("budget", None, {})
    assert budget.planned_rounds(40) == 12  # 10 epochs of 40 batches: a round every 33 batches, not every 100
    chosen = DefenseConfig(defense="prune", compression=10, prune_recipe="budget", update_every=7).prune_config()
    assert chosen.update_every == 7


def test_defense_errors(digits_target, tmp_path):
    with pytest.raises(ConfigError, match="--delta"):
        run_defense(DefenseConfig(defense="dpsgd", dataset="digits", members=300, delta=0.01), tmp_path / "a",
                    console=QUIET)
    with pytest.raises(ConfigError, match="exactly one of --compression"):
        DefenseConfig(defense="mcmia").validate()
    with pytest.raises(ConfigError, match="--relax-alpha must be a positive number"):
        DefenseConfig(defense="relaxloss", relax_alpha=-1.0).validate()
    with pytest.raises(ConfigError, match="--precision bf16 does not go with --defense dpsgd"):
        DefenseConfig(defense="dpsgd", precision="bf16").validate()
    with pytest.raises(ConfigError, match="slr or admm"):
        DefenseConfig(defense="mcmia", method="magnitude", compression=10).validate()
    with pytest.raises(ConfigError, match="--retrain-schedule must be one of cosine, cosine-step, step, constant"):
        DefenseConfig(defense="prune", compression=10, retrain_schedule="linear").validate()
    with pytest.raises(ConfigError, match="--prune-recipe must be one of paper, budget, got 'fast'"):
        DefenseConfig(defense="mcmia", compression=10, prune_recipe="fast").validate()
    assert not (tmp_path / "a").exists()


def test_dpsgd_without_opacus_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "opacus", None)
    with pytest.raises(MissingDependencyError, match=r"prunus\[privacy\]"):
        run_defense(DefenseConfig(defense="dpsgd", dataset="digits", members=300), tmp_path / "x", console=QUIET)
    assert not (tmp_path / "x").exists()


def test_library_imports_without_opacus_and_matplotlib(tmp_path):
    code = ("import sys; sys.modules['opacus'] = None; sys.modules['matplotlib'] = None\n"
            "import prunus.privacy, prunus.privacy.attacks, "
            "prunus.privacy.defenses.run, prunus.privacy.audit, prunus.cli\n"
            "prunus.cli.build_parser()\n"
            "from prunus.errors import MissingDependencyError\n"
            "from prunus.privacy.defenses import DefenseConfig, run_defense\n"
            "try:\n"
            "    run_defense(DefenseConfig(defense='dpsgd', dataset='digits', members=300), sys.argv[1])\n"
            "except MissingDependencyError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dp")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "opacus" in r.stdout and "prunus[privacy]" in r.stdout, r.stdout  # the feature says what to install
    assert not (tmp_path / "dp").exists()


def test_dpsgd_accountant_out_of_memory_is_one_clear_error(monkeypatch, tmp_path):
    """opacus' PRV accountant allocates a grid that grows with epsilon (30 GiB at epsilon 1000): the user
    gets told to switch accountants, not a numpy traceback."""
    import opacus.accountants.utils

    def huge(*args, **kwargs):
        raise MemoryError("Unable to allocate 29.6 GiB")

    monkeypatch.setattr(opacus.accountants.utils, "get_noise_multiplier", huge)
    config = DefenseConfig(defense="dpsgd", dataset="digits", members=64, epochs=1, batch_size=16, epsilon=1000.0,
                           delta=1e-3)
    with pytest.raises(ConfigError, match=r"PRV accountant ran out of memory .* --epsilon 1000; use --accountant rdp"):
        run_defense(config, tmp_path / "dp", console=QUIET)
    assert not (tmp_path / "dp" / "final").exists()
