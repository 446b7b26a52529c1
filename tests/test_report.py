"""`prunus report`: every number checked against the run's own files or a fresh measurement, the page opened in
headless Chromium, and the user errors (one line, exit 2, nothing at --out)."""

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, run_cli

from prunus.data import load_dataset
from prunus.io import load_checkpoint, save_checkpoint
from prunus.models.loading import load_model
from prunus.report import SECTIONS, ReportOptions, build_report
from prunus.train.trainer import evaluate

PNG = b"\x89PNG\r\n\x1a\n"
EXPECTED_SECTIONS = ["summary", "accuracy", "layers", "size", "latency", "sparsity", "curves", "residuals", "privacy"]


@pytest.fixture(scope="module")
def runs(dense_digits, tmp_path_factory) -> dict[str, Path]:
    """The dense digits run, an SLR prune of it, its channels removed (a checkpoint directory), a 4-bit quantization
    of it, and a defended target with its audit."""
    from prunus.cli import main

    root = tmp_path_factory.mktemp("report")
    paths = {"dense": dense_digits, "slr": root / "slr", "q4": root / "q4", "small": root / "slr-small",
             "target": root / "target", "audit": root / "target-audit"}
    for argv in (
        ["prune", "--method", "slr", "--init", dense_digits, "--compression", "5", "--global", "--epochs", "1",
         "--update-every", "8", "--retrain-epochs", "1", "--batch-size", "64", "--out", paths["slr"]],
        ["surgery", paths["slr"] / "retrain", "--no-latency", "--out", paths["small"]],
        ["quantize", "--init", paths["slr"] / "retrain", "--bits", "4", "--method", "none", "--finetune-epochs", "1",
         "--batch-size", "64", "--out", paths["q4"]],
        ["defend", "--defense", "none", "--model", "lenet5", "--dataset", "digits", "--members", "150", "--epochs", "2",
         "--batch-size", "32", "--out", paths["target"]],
        ["audit", paths["target"], "--attack", "loss", "--shadow-models", "1", "--epochs", "1",
         "--out", paths["audit"]],
    ):
        assert main([str(a) for a in argv]) == 0
    return paths


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> tuple[dict, Path]:
    """`prunus report --json` over the runs given out of order (the audit and the 4-bit run first), with latency."""
    from prunus.cli import main

    out = tmp_path_factory.mktemp("page") / "report.html"
    capture = tmp_path_factory.mktemp("stdout") / "report.json"
    argv = [runs["audit"], runs["q4"], runs["slr"], runs["dense"], runs["target"], runs["small"], "--out", out,
            "--json", "--repeats", "2"]
    with open(capture, "w") as f:
        saved, sys.stdout = sys.stdout, f
        try:
            assert main(["report", *map(str, argv)]) == 0
        finally:
            sys.stdout = saved
    return json.loads(capture.read_text()), out


def entry(data: dict, name: str) -> dict:
    return next(r for r in data["runs"] if r["name"] == name)


def test_dense_run_is_the_ancestor_and_every_section_is_listed(report, runs):
    data, out = report
    assert data["sections"] == list(SECTIONS) == EXPECTED_SECTIONS
    assert data["dense"] == runs["dense"].name
    # the dense run is followed back from the first run given (q4 -> slr -> dense); the others keep their order
    assert [r["name"] for r in data["runs"]] == [runs["dense"].name, "q4", "slr", "target", "slr-small"]
    assert [r["kind"] for r in data["runs"]] == ["train", "quantize", "prune", "defend", "surgery"]
    removed = json.loads((runs["small"] / "meta.json").read_text())["surgery"]["channels_removed"]
    assert entry(data, "slr-small")["detail"] == f"{removed} channels removed"
    assert entry(data, "slr-small")["checkpoint"] == str(runs["small"])
    assert entry(data, "slr")["checkpoint"] == str(runs["slr"] / "retrain" / "checkpoints" / "epoch-0001")
    assert entry(data, "q4")["checkpoint"] == str(runs["q4"] / "quantized")
    assert entry(data, "target")["checkpoint"] == str(runs["target"] / "final")
    assert data["out"] == str(out) and out.is_file()


def test_weight_counts_are_those_of_the_checkpoint_tensors(report):
    data, _ = report
    for r in data["runs"]:
        state = load_checkpoint(r["checkpoint"]).model_state
        weights = {n: t for n, t in state.items() if n.endswith(".weight") and t.dim() in (2, 4)}
        assert [layer["name"] for layer in r["layers"]] == list(weights)
        for layer in r["layers"]:
            t = weights[layer["name"]]
            assert layer["parameters"] == t.numel() and layer["shape"] == list(t.shape)
            assert layer["nonzeros"] == int(torch.count_nonzero(t))
            assert layer["live"] == layer["nonzeros"]  # LeNet's biases keep every channel alive here
        assert r["totals"]["nonzeros"] == sum(int(torch.count_nonzero(t)) for t in weights.values())
        assert r["totals"]["parameters_nonzero"] == sum(int(torch.count_nonzero(t)) for t in state.values())
    dense, slr = data["runs"][0], entry(data, "slr")
    assert slr["totals"]["nonzeros"] < dense["totals"]["nonzeros"] / 4  # 5x of the conv2/fc1/fc2 weights pruned
    assert slr["vs_dense"]["compression"] == dense["totals"]["nonzeros"] / slr["totals"]["nonzeros"]


def test_accuracy_is_evaluate_on_the_test_set(report, runs):
    data, _ = report
    test_set = load_dataset("digits", "test")
    for r in data["runs"]:
        model, _ = load_model(r["checkpoint"])
        assert r["accuracy"]["test"] == evaluate(model, test_set)["accuracy"]
        model.eval()
        with torch.no_grad():
            predicted = model(test_set.images).argmax(1)
        for c, acc in enumerate(r["accuracy"]["per_class"]):
            mine = test_set.labels == c
            assert acc == pytest.approx(100.0 * float((predicted[mine] == c).sum()) / float(mine.sum()), abs=1e-9)
        assert r["accuracy"]["class_counts"] == [int((test_set.labels == c).sum()) for c in range(10)]
        assert r["vs_dense"]["accuracy_delta"] == r["accuracy"]["test"] - data["runs"][0]["accuracy"]["test"]
    results = json.loads((runs["slr"] / "results.json").read_text())
    assert entry(data, "slr")["recorded_accuracy"]["hard-pruned"] == results["hard_pruned_accuracy"]


def test_file_sizes_are_the_files_bytes(report, runs):
    data, _ = report
    for r in data["runs"]:
        files = r["files"]
        assert files["safetensors"] == (Path(r["checkpoint"]) / "model.safetensors").stat().st_size
        assert abs(files["onnx"] - files["safetensors_deployed"]) < 0.05 * files["safetensors_deployed"]  # float32 both
    q4 = entry(data, "q4")
    pcz = (runs["q4"] / "model.pcz").stat().st_size
    assert q4["files"]["pcz"] == pcz == json.loads((runs["q4"] / "results.json").read_text())["size"]["file_bytes"]
    assert q4["vs_dense"]["smallest_file"] == "pcz"
    assert q4["vs_dense"]["size_ratio"] == data["runs"][0]["files"]["safetensors"] / pcz > 20
    assert all(r["files"]["pcz"] is None for r in data["runs"] if r["name"] != "q4")


def test_latency_is_measured_at_batch_1_and_64(report):
    data, out = report
    assert data["latency"]["batch_sizes"] == [1, 64] and data["latency"]["repeats"] == 2
    dense = data["runs"][0]["latency"]
    for r in data["runs"]:
        for b in ("1", "64"):
            lat = r["latency"][b]
            assert lat["batch_size"] == int(b) and lat["repeats"] == 2 and 0 < lat["min_ms"] <= lat["median_ms"]
            assert r["vs_dense"]["speedup"][b] == dense[b]["median_ms"] / lat["median_ms"]
    section = re.search(r'<section id="latency".*?</section>', out.read_text(), re.DOTALL).group(0)
    assert "batch 64: median ms" in section and f"{data['runs'][0]['latency']['64']['median_ms']:.3f}" in section


def test_method_rounds_curves_and_audit(report, runs):
    data, _ = report
    slr = entry(data, "slr")
    history = json.loads((runs["slr"] / "results.json").read_text())["method_history"]
    assert len(history) >= 2
    assert slr["method_history"] == [{"round": h["round"], "residual": h["residual"], "distance": h["distance"]}
                                     for h in history]
    assert [c["phase"] for c in slr["curves"]] == ["prune", "retrain"]
    dense = data["runs"][0]
    metrics = [json.loads(line) for line in (runs["dense"] / "metrics.jsonl").read_text().splitlines()]
    assert dense["curves"] == [{"phase": "train", "epochs": metrics}] and len(metrics) == 8
    audit = json.loads((runs["audit"] / "report.json").read_text())
    target = entry(data, "target")
    assert target["audit"]["path"] == str(runs["audit"])
    assert [(a["attack"], a["auc"], a["tpr_at_0.1pct_fpr"]) for a in target["audit"]["attacks"]] == [
        (a["attack"], a["auc"], a["tpr_at_0.1pct_fpr"]) for a in audit["attacks"]]
    assert all(r["audit"] is None for r in data["runs"] if r["name"] != "target")


def test_page_is_one_self_contained_file(report):
    _, out = report
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script src" not in page
    assert "default-src 'none'" in page  # the browser may not fetch anything
    ids = re.findall(r'<section id="([a-z]+)" data-images="(\d+)"', page)
    assert [i for i, _ in ids] == EXPECTED_SECTIONS
    images = {i: int(n) for i, n in ids}
    assert images == {"summary": 0, "accuracy": 1, "layers": 0, "size": 1, "latency": 1, "sparsity": 5, "curves": 4,
                      "residuals": 1, "privacy": 2}
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == sum(images.values())
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG


def chromium() -> str:
    found = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if found is None:
        pytest.skip("no headless browser: install Debian's chromium (apt-get install chromium, or sh "
                    "scripts/ensure-chromium.sh, which make test runs)")
    return found


def test_chromium_renders_every_section(report, tmp_path):
    browser = chromium()
    _, out = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", out.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    assert 'data-ready="1"' in dom, "the page's load handler did not run"
    for key in EXPECTED_SECTIONS:
        tag = re.search(rf'<section id="{key}"[^>]*>', dom).group(0)
        images = re.search(r'data-images="(\d+)"', tag).group(1)
        assert 'data-rendered="1"' in tag and f'data-decoded="{images}"' in tag, tag
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,2400", out.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == PNG and int.from_bytes(data[16:20], "big") == 1280  # the IHDR width


def test_terminal_summary_without_latency_or_onnx(capsys, runs, report, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells to the terminal width; keep each on one line
    out = tmp_path / "sub" / "page.html"
    code, stdout, _ = run_cli(capsys, "report", runs["dense"], runs["slr"], "--no-latency", "--no-onnx", "--out", out)
    assert code == 0
    assert f"report written to {out.resolve()}" in stdout
    for r in report[0]["runs"][:1] + [entry(report[0], "slr")]:  # the same models, measured by the fixture
        assert r["name"] in stdout and f"{r['accuracy']['test']:.2f}%" in stdout
        assert f"{r['totals']['nonzeros']:,} ({r['vs_dense']['compression']:.1f}x)" in stdout
        assert f"{r['vs_dense']['accuracy_delta']:+.2f} pt" in stdout
    assert "latency b64" in stdout and "ms (" not in stdout  # the latency columns are empty
    page = out.read_text()
    assert "Latency not measured (--no-latency)." in page and "ONNX not measured (--no-onnx)" in page


def test_live_weights_leave_out_those_reading_a_dead_channel(runs, tmp_path):
    """conv1's filter 0 and its bias are zero: conv2's nonzero weights on channel 0 read only zeros."""

    def kill_channel_0(state, meta):
        state["conv1.weight"][0] = 0
        state["conv1.bias"][0] = 0

    copy_of_dense(runs, tmp_path / "dead", kill_channel_0)
    report = build_report([tmp_path / "dead"], ReportOptions(latency=False, onnx=False))
    state = load_checkpoint(tmp_path / "dead" / "checkpoints" / "epoch-0001").model_state
    layers = {layer["name"]: layer for layer in report.runs[0]["layers"]}
    conv2 = state["conv2.weight"]
    assert layers["conv2.weight"]["nonzeros"] == int(torch.count_nonzero(conv2))
    assert layers["conv2.weight"]["live"] == int(torch.count_nonzero(conv2)) - int(torch.count_nonzero(conv2[:, 0]))
    assert layers["conv1.weight"]["live"] == layers["conv1.weight"]["nonzeros"] == 125
    assert report.runs[0]["deployed"]["channels_removed"] == 1  # surgery removes the dead channel
    r = report.runs[0]  # measured without latency or ONNX
    assert report.data["latency"]["measured"] is False and r["latency"] is None and r["vs_dense"]["speedup"] is None
    assert r["files"]["onnx"] is None and r["files_note"] == "ONNX not measured (--no-onnx)"


def copy_of_dense(runs, target: Path, edit) -> None:
    """A train-run-shaped directory holding the dense checkpoint after ``edit(state, meta)``."""
    source = load_checkpoint(load_model(runs["dense"])[1].path)
    state = {k: v.clone() for k, v in source.model_state.items()}
    meta = {k: v for k, v in source.meta.items() if k not in ("format", "version", "states")}
    edit(state, meta)
    save_checkpoint(target / "checkpoints" / "epoch-0001", state, {}, meta)


@pytest.mark.parametrize("case", ["missing", "empty", "foreign-audit", "twice", "out-is-dir", "other-dataset"])
def test_user_errors_are_one_line_and_write_nothing(capsys, runs, tmp_path, case):
    (tmp_path / "empty").mkdir()
    copy_of_dense(runs, tmp_path / "mnist",
                  lambda state, meta: meta.update(dataset={"name": "mnist", "image_size": 28}))
    out = tmp_path / "new" / "report.html"
    argv, fragments = {
        "other-dataset": ([runs["dense"], tmp_path / "mnist"], [f"run {tmp_path / 'mnist'} is on mnist (28 px)",
                                                                 "one dataset"]),
        "missing": ([tmp_path / "nope", runs["dense"]], [f"run directory {tmp_path / 'nope'} does not exist"]),
        "empty": ([runs["dense"], tmp_path / "empty"], [str(tmp_path / "empty"), "not a prunus run directory"]),
        "foreign-audit": ([runs["dense"], runs["audit"]], [str(runs["audit"]), "not the final model of any run"]),
        "twice": ([runs["dense"], runs["dense"]], ["given twice"]),
        "out-is-dir": ([runs["dense"]], [f"--out {tmp_path} is a directory"]),
    }[case]
    target = tmp_path if case == "out-is-dir" else out
    code, stdout, err = run_cli(capsys, "report", *argv, "--out", target, "--no-latency")
    assert_user_error(code, err, *fragments)
    assert not out.parent.exists() and stdout == ""  # not even --out's directory


def test_missing_matplotlib_is_one_line_naming_the_extra(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "new" / "report.html"
    code, _, err = run_cli(capsys, "report", runs["dense"], "--out", out)
    assert_user_error(code, err, "matplotlib", "pip install 'prunus[report]'")
    assert not out.parent.exists()
