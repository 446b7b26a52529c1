"""Every command's bad input is one clear line, exit code 2, and nothing written at --out.

Out-of-range numbers (0, negative, NaN, huge), unknown names, wrong types in a YAML recipe,
missing or truncated checkpoint files, a corrupt .pcz, an --out that cannot be created.
"""

import shutil
from pathlib import Path

import pytest
from helpers import assert_user_error, run_cli

from prunus.io import latest_checkpoint


@pytest.fixture(scope="module")
def broken(dense_digits, tmp_path_factory) -> Path:
    """A folder of damaged inputs beside a good checkpoint (``ck``) and a plain file (``afile``)."""
    root = tmp_path_factory.mktemp("broken")
    good = latest_checkpoint(dense_digits)
    shutil.copytree(good, root / "ck")
    for name in ("ck_trunc", "ck_nometa", "ck_badmeta"):
        shutil.copytree(good, root / name)
    blob = (root / "ck" / "model.safetensors").read_bytes()
    (root / "ck_trunc" / "model.safetensors").write_bytes(blob[:100])
    (root / "ck_nometa" / "meta.json").unlink()
    (root / "ck_badmeta" / "meta.json").write_text("{not json")
    (root / "bad.pcz").write_bytes(b"PRZ2garbage")
    (root / "afile").write_text("a file, not a directory")
    (root / "r_type.yaml").write_text('prune:\n  conv2.weight: {structure: filter, ratio: "half"}\n')
    (root / "r_list.yaml").write_text("prune:\n  conv2.weight: [1, 2]\n")
    (root / "r_method.yaml").write_text("method: {name: slr, rho: [1]}\nprune:\n"
                                        "  conv2.weight: {structure: filter, ratio: 0.5}\n")
    (root / "r_key.yaml").write_text("prune:\n  conv2.weight: {structure: filter, ratio: 0.5}\nepochs: 3\n")
    return root


CASES = [
    # train: numbers out of range, unknown names
    (["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "-1"], ["--epochs", "at least 1"]),
    (["train", "--model", "lenet5", "--dataset", "digits", "--lr", "nan"], ["--lr must be a positive number", "nan"]),
    (["train", "--model", "lenet5", "--dataset", "digits", "--lr", "1e400"], ["--lr", "inf"]),
    (["train", "--model", "lenet5", "--dataset", "digits", "--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["train", "--model", "lenet5", "--dataset", "digits", "--weight-decay", "-1"], ["--weight-decay must be >= 0"]),
    (["train", "--model", "lenet5", "--dataset", "digits", "--image-size", "4"], ["image_size=4", "8x8"]),
    (["train", "--model", "alexnet", "--dataset", "digits"], ["alexnet"]),
    # prune: ratios, options, recipes, damaged checkpoints
    (["prune", "--init", "{ck}", "--ratio", "nan"], ["--ratio", "[0, 1)", "nan"]),
    (["prune", "--init", "{ck}", "--ratio", "-0.1"], ["--ratio", "-0.1"]),
    (["prune", "--init", "{ck}", "--compression", "1e400"], ["--compression must be a number >= 1", "inf"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--lr", "-1"], ["--lr must be a positive number"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--retrain-lr", "0"], ["--retrain-lr must be a positive number"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--distill", "-1"], ["--distill must be a weight >= 0", "-1"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--distill", "1", "--distill-temperature", "nan"],
     ["--distill-temperature must be a positive number"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--tol", "2"], ["0 < tol < 1"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--penalize", "some"], ["--penalize", "invalid choice"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--method", "slr", "--lam", "1"], ["lam do not apply"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--bn-recalibrate", "-3"], ["--bn-recalibrate", ">= 0"]),
    (["prune", "--init", "{ck}", "--recipe", "{root}/r_type.yaml"], ["r_type.yaml", "conv2.weight", "'half'"]),
    (["prune", "--init", "{ck}", "--recipe", "{root}/r_list.yaml"], ["r_list.yaml", "expected {structure"]),
    (["prune", "--init", "{ck}", "--recipe", "{root}/r_method.yaml"], ["r_method.yaml", "rho must be a float"]),
    (["prune", "--init", "{ck}", "--recipe", "{root}/r_key.yaml"], ["r_key.yaml", "unknown top-level field(s) epochs"]),
    (["prune", "--init", "{ck}", "--recipe", "{root}/missing.yaml"], ["missing.yaml cannot be read"]),
    (["prune", "--init", "{root}/ck_trunc", "--ratio", "0.5"], ["ck_trunc/model.safetensors is corrupt"]),
    (["prune", "--init", "{root}/ck_nometa", "--ratio", "0.5"], ["ck_nometa is incomplete: meta.json is missing"]),
    (["prune", "--init", "{root}/ck_badmeta", "--ratio", "0.5"], ["ck_badmeta/meta.json is not valid JSON"]),
    # quantize
    (["quantize", "--init", "{ck}", "--bits", "0"], ["2 to 8 bits, got 0"]),
    (["quantize", "--init", "{ck}", "--bits", "4", "--lr", "nan"], ["--lr must be a positive number"]),
    (["quantize", "--init", "{ck}", "--bits", "4", "--finetune-lr", "-1"], ["--finetune-lr must be a positive number"]),
    (["quantize", "--init", "{ck}", "--bits", "4", "--finetune-epochs", "-1"], ["--finetune-epochs must be >= 0"]),
    (["quantize", "--init", "{root}/ck_trunc", "--bits", "4"], ["ck_trunc/model.safetensors is corrupt"]),
    # defend
    (["defend", "--defense", "none", "--dataset", "digits", "--members", "0"], ["--members", "at least 1"]),
    (["defend", "--defense", "dpsgd", "--dataset", "digits", "--epsilon", "nan"],
     ["--epsilon must be a positive number"]),
    (["defend", "--defense", "dpsgd", "--dataset", "digits", "--epsilon", "-1"],
     ["--epsilon must be a positive number"]),
    (["defend", "--defense", "relaxloss", "--dataset", "digits", "--relax-alpha", "0"], ["--relax-alpha"]),
    (["defend", "--defense", "advreg", "--dataset", "digits", "--adv-lambda", "nan"],
     ["--adv-lambda must be a finite"]),
    (["defend", "--defense", "shield", "--dataset", "digits"], ["--defense", "invalid choice: 'shield'"]),
    # audit, surgery: what they read
    (["audit", "{ck}"], ["records no membership split"]),
    (["audit", "{ck}", "--attack", "banana"], ["'banana' is not an attack"]),
    (["surgery", "{root}/ck_nometa"], ["meta.json is missing"]),
    (["surgery", "{ck}", "--repeats", "0"], ["--repeats", "at least 1"]),
    # --resume takes the run's own settings
    (["train", "--resume", "{ck}", "--compile"], ["--resume takes its settings from the run", "--compile"]),
    (["prune", "--resume", "{ck}", "--compile"], ["--resume takes its settings from the run", "--compile"]),
    (["quantize", "--resume", "{ck}", "--compile"], ["--resume takes its settings from the run", "--compile"]),
    (["bcnn", "train", "--resume", "{ck}", "--compile"], ["--resume takes its settings from the run", "--compile"]),
    # an --out that cannot be created
    (["train", "--model", "lenet5", "--dataset", "digits", "--out", "{root}/afile/run"],
     ["afile/run cannot be created"]),
    (["prune", "--init", "{ck}", "--ratio", "0.5", "--out", "{root}/afile/run"], ["afile/run cannot be created"]),
    (["quantize", "--init", "{ck}", "--bits", "4", "--out", "{root}/afile/run"], ["afile/run cannot be created"]),
]


@pytest.mark.parametrize("argv, fragments", CASES, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, broken, argv, fragments):
    out = tmp_path / "out"
    fill = {"ck": str(broken / "ck"), "root": str(broken)}
    argv = [a.format(**fill) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    code, _, err = run_cli(capsys, *argv)
    assert_user_error(code, err, *fragments)
    assert not out.exists()  # nothing half-written


def test_file_commands_without_out_name_the_damaged_file(capsys, broken):
    for argv, fragment in ((["eval", broken / "bad.pcz"], "bad.pcz: cannot read the compressed model (checksum"),
                           (["eval", broken / "ck_trunc"], "ck_trunc/model.safetensors is corrupt"),
                           (["eval", broken / "ck_badmeta"], "meta.json is not valid JSON"),
                           (["export", broken / "ck_trunc", "--onnx", broken / "x.onnx"],
                            "model.safetensors is corrupt")):
        code, _, err = run_cli(capsys, *argv)
        assert_user_error(code, err, fragment)
    assert not (broken / "x.onnx").exists()
