"""The command line: help, and every user mistake as one line with exit code 2."""

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, run_cli

from prunus.io import save_checkpoint

REPO = Path(__file__).resolve().parents[1]






@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"]])
def test_help_works_both_ways(argv):
    for cmd in (["prunus"], [sys.executable, "-m", "prunus"]):
        exe = [str(Path(sys.executable).parent / "prunus")] if cmd == ["prunus"] else cmd
        r = subprocess.run([*exe, *argv], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert "usage: prunus" in r.stdout


def test_subprocess_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "prunus", "train", "--model", "alexnet", "--dataset", "digits", "--out",
         str(tmp_path / "r")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "alexnet" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists(), "a failed command must not leave a run directory"


def test_listings(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "lenet5" in out and "resnet56" in out
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0 and "fashion-mnist" in out and "cifar10" in out


def test_unknown_model_and_dataset(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--model", "alexnet", "--dataset", "digits", "--out", str(tmp_path / "a"))
    assert_user_error(code, err, "alexnet", "lenet5")
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "imagenet21k", "--out",
                           str(tmp_path / "b"))
    assert_user_error(code, err, "imagenet21k", "fashion-mnist")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "three"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--width", "0"], "width"),
        (["--momentum", "2"], "--momentum"),
    ],
)
def test_bad_values(capsys, tmp_path, args, fragment):
    code, _, err = run_cli(capsys, "train", "--model", "vgg11" if "--width" in args else "lenet5", "--dataset",
                           "digits", "--out", str(tmp_path / "r"), *args)
    assert_user_error(code, err, fragment)
    assert not (tmp_path / "r").exists()


def test_missing_arguments(capsys):
    code, _, err = run_cli(capsys, "train", "--model", "lenet5")
    assert_user_error(code, err, "--dataset", "--out")


def test_missing_data_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNUS_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "mnist", "--out", str(tmp_path / "r"))
    assert_user_error(code, err, "MNIST", "--download")
    assert not (tmp_path / "r").exists()


def test_corrupt_data_names_the_file(capsys, tmp_path):
    src = Path("/usr/share/datasets/fashion-mnist")
    data = tmp_path / "fmnist"
    data.mkdir()
    for f in src.glob("*.gz"):
        (data / f.name).write_bytes(f.read_bytes())
    raw = gzip.decompress((data / "train-images-idx3-ubyte.gz").read_bytes())
    (data / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) - 1000]))
    code, _, err = run_cli(
        capsys, "train", "--model", "lenet5", "--dataset", "fashion-mnist", "--data-dir", str(data), "--out",
        str(tmp_path / "r")
    )
    assert_user_error(code, err, "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "r").exists()


def test_existing_run_is_never_overwritten(capsys, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "digits", "--out", str(run))
    assert_user_error(code, err, "--resume", str(run))
    assert (run / "precious.txt").read_text() == "keep me"


def test_eval_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nowhere"))
    assert_user_error(code, err, "nowhere", "does not exist")
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "nowhere"))
    assert_user_error(code, err, "config.json")

    ck = save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, meta={"epoch": 0})
    code, _, err = run_cli(capsys, "eval", str(ck))
    assert_user_error(code, err, "does not record its model")

    ck = save_checkpoint(
        tmp_path / "ck2", {"w": torch.ones(3)},
        meta={"epoch": 0, "model": {"name": "lenet5", "in_channels": 1, "num_classes": 10, "options": {}}},
    )
    code, _, err = run_cli(capsys, "eval", str(ck))
    assert_user_error(code, err, "does not fit model lenet5")

    (ck / "model.safetensors").write_bytes(b"\x00" * 10)
    code, _, err = run_cli(capsys, "eval", str(ck))
    assert_user_error(code, err, "model.safetensors is corrupt")


def test_train_then_eval_agree(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "train", "--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--out",
                           str(tmp_path / "r"))
    assert code == 0
    trained = float(out.strip().splitlines()[-1].split("test accuracy ")[1].split("%")[0])
    code, out, _ = run_cli(capsys, "eval", str(tmp_path / "r"), "--json")
    assert code == 0
    import json

    result = json.loads(out)
    assert result["accuracy"] == pytest.approx(trained, abs=0.01) and result["images"] == 359
