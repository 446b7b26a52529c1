"""Verdict lines of the benchmark tables: each row compared with the right baseline, on the same seeds."""

import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _bcnn_row(variant: str, seed: int, accuracy: float, reestimated: float, **extra) -> dict:
    return {"model": "nin", "dataset": "modulation", "variant": variant, "seed": seed, "width": 0.5, "epochs": 15,
            "parameters": 123_531, "accuracy": accuracy, "bn_reestimated_accuracy": reestimated,
            "live_compression": extra.pop("live", 1.0), "nonzero_compression": 1.0, "engine_equal": True, **extra}


def test_bcnn_sweep_compares_each_pruned_converged_model_with_bcnn_long_on_the_same_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_accuracy", None)
    bcnn_accuracy = importlib.import_module("bcnn_accuracy")
    runs = [_bcnn_row("bcnn-long", 0, 60.0, 58.0), _bcnn_row("bcnn-long", 1, 62.0, 61.0),
            _bcnn_row("bcnn-long-20x", 0, 40.0, 50.0, live=20.7, target_compression=20.0),
            _bcnn_row("bcnn-long-4x", 0, 59.0, 57.5, live=4.6, target_compression=4.0),
            _bcnn_row("bcnn-long-4x", 1, 61.0, 60.5, live=4.6, target_compression=4.0)]
    data = {"precision": "bf16", "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "2"}, "runs": runs}
    text = bcnn_accuracy.summarize(data)
    assert "bcnn-long-Cx: the converged bcnn-long model pruned" in text
    sweep = text.split("Pruning the converged BCNN")[1].splitlines()
    verdicts = [line for line in sweep if line.startswith("- ")]
    assert verdicts == [  # sorted by compression; the mean of the per-seed differences
        "- nin bcnn-long-4x (4.6x live) against bcnn-long on modulation, as trained: -1.00 pt over 2 seed(s) "
        "(within 1 pt) -> **met** (fewer than 3 seeds)",
        "- nin bcnn-long-4x (4.6x live) against bcnn-long on modulation, both with BN re-estimated: -0.50 pt over "
        "2 seed(s) (within 1 pt) -> **met** (fewer than 3 seeds)",
        "- nin bcnn-long-20x (20.7x live) against bcnn-long on modulation, as trained: -20.00 pt over 1 seed(s) "
        "(within 1 pt) -> **NOT met** (fewer than 3 seeds)",
        "- nin bcnn-long-20x (20.7x live) against bcnn-long on modulation, both with BN re-estimated: -8.00 pt over "
        "1 seed(s) (within 1 pt) -> **NOT met** (fewer than 3 seeds)"]
    assert "bcnn-long-Cx" not in bcnn_accuracy.summarize({**data, "runs": runs[:2]})


def test_bcnn_binary_stem_is_compared_with_the_full_precision_stem_on_the_same_seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_accuracy", None)
    bcnn_accuracy = importlib.import_module("bcnn_accuracy")
    runs = [_bcnn_row("bcnn", 0, 50.0, 49.0), _bcnn_row("bcnn", 1, 52.0, 51.0),
            {**_bcnn_row("bcnn", 0, 23.0, 24.0), "model": "nin-binstem"},
            {**_bcnn_row("bcnn", 2, 30.0, 30.0), "model": "nin-binstem"}]  # seed 2 has no nin row: left out
    data = {"precision": "bf16", "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "2"}, "runs": runs}
    text = bcnn_accuracy.summarize(data)
    assert ("- binary first layer (bcnn on modulation): nin-binstem - nin -27.00 pt as trained, -25.00 pt with BN "
            "re-estimated over 1 seed(s)") in text
    assert "binary first layer" not in bcnn_accuracy.summarize({**data, "runs": runs[:2]})


def test_bcnn_int8_stem_rows_are_compared_with_the_rows_they_were_quantized_from(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_accuracy", None)
    bcnn_accuracy = importlib.import_module("bcnn_accuracy")
    runs = [_bcnn_row("bcnn", 0, 50.0, 49.0), {**_bcnn_row("bcnn", 0, 49.5, 49.25), "model": "nin-int8stem",
                                               "int8_from": ".cache/bcnn/x/checkpoints/epoch-0015"}]
    data = {"precision": "bf16", "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "2"}, "runs": runs}
    text = bcnn_accuracy.summarize(data)
    assert ("- int8 first layer (quantized after training) (bcnn on modulation): nin-int8stem - nin -0.50 pt as "
            "trained, +0.25 pt with BN re-estimated over 1 seed(s)") in text
    assert "first layer quantized to int8 after training" in text
    assert bcnn_accuracy._run_of({"checkpoint": ".cache/bcnn/a-slr20x/retrain/checkpoints/epoch-0005"}) == "a-slr20x"
    assert bcnn_accuracy._run_of({"checkpoint": ".cache/bcnn/a-e33-s0/checkpoints/epoch-0033"}) == "a-e33-s0"


def test_bcnn_converged_only_asks_for_the_converged_bcnn_and_its_prunings_alone(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_accuracy", None)
    bcnn_accuracy = importlib.import_module("bcnn_accuracy")
    asked = []

    def add_trained(data, model, dataset, variant, seed, *args, training_epochs=None, **kwargs):
        asked.append((model, variant, training_epochs))
        data["runs"].append({"model": model, "dataset": dataset, "seed": seed, "variant": variant})

    def add_pruned(data, model, dataset, variant, seed, *args, compression=20.0, source_epochs=None, **kwargs):
        asked.append((model, variant, source_epochs, compression))
        data["runs"].append({"model": model, "dataset": dataset, "seed": seed, "variant": variant})

    monkeypatch.setattr(bcnn_accuracy, "RESULTS", tmp_path)
    monkeypatch.setattr(bcnn_accuracy, "load_dataset", lambda *a, **k: None)
    monkeypatch.setattr(bcnn_accuracy, "backfill_reestimated", lambda *a: None)
    monkeypatch.setattr(bcnn_accuracy, "add_trained", add_trained)
    monkeypatch.setattr(bcnn_accuracy, "add_pruned", add_pruned)
    monkeypatch.setattr(sys, "argv", ["bcnn_accuracy.py", "--models", "nin-full", "--datasets", "modulation",
                                      "--seeds", "0", "--converged-only", "--from-long", "20", "4"])
    bcnn_accuracy.main()
    assert asked == [("nin-full", "bcnn-long", 33), ("nin-full", "bcnn-long-20x", 33, 20.0),
                     ("nin-full", "bcnn-long-4x", 33, 4.0)]

    # --int8-stem VARIANT: those rows get their int8-first-layer twin, once (--continue keeps it)
    quantized = []

    def add_int8_stem(data, source, *args):
        quantized.append(source["variant"])
        data["runs"].append({**source, "model": f"{source['model']}-int8stem"})

    monkeypatch.setattr(bcnn_accuracy, "add_int8_stem", add_int8_stem)
    monkeypatch.setattr(bcnn_accuracy, "write_result", lambda *a: None)
    (tmp_path / "bcnn_accuracy.json").write_text(json.dumps({"precision": "bf16", "runs": [
        {"model": "nin-full", "dataset": "modulation", "seed": 0, "variant": v, "epochs": 15}
        for v in ("bcnn-long", "bcnn-long-20x", "bcnn-long-4x")]}))
    argv = ["bcnn_accuracy.py", "--models", "nin-full", "--datasets", "modulation", "--seeds", "0",
            "--converged-only", "--from-long", "20", "4", "--int8-stem", "bcnn-long-20x", "bcnn-long", "--continue"]
    monkeypatch.setattr(sys, "argv", argv)
    bcnn_accuracy.main()
    assert quantized == ["bcnn-long", "bcnn-long-20x"]


def test_bcnn_float32_rows_go_to_a_table_of_their_own(monkeypatch, tmp_path):
    """A machine without bf16 hardware runs the recipe in float32: its rows start their own table (the bf16 one is
    neither continued nor touched), titled by the precision, and --render rebuilds both."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_accuracy", None)
    bcnn_accuracy = importlib.import_module("bcnn_accuracy")
    assert bcnn_accuracy.result_name("bf16") == "bcnn_accuracy"
    assert bcnn_accuracy.result_name("fp32") == "bcnn_accuracy_fp32"
    reference = {"precision": "bf16", "environment": {"cpu": "Xeon", "cpu_count": 2, "torch": "2.13.0"},
                 "runs": [_bcnn_row("bcnn", 0, 50.0, 49.0)]}
    (tmp_path / "bcnn_accuracy.json").write_text(json.dumps(reference))
    seen = []

    def add_trained(data, model, dataset, variant, seed, *args, **kwargs):
        seen.append((data["precision"], [r["variant"] for r in data["runs"]], variant))
        data["runs"].append(_bcnn_row(variant, seed, 40.0, 40.0, dataset=dataset))

    monkeypatch.setattr(bcnn_accuracy, "RESULTS", tmp_path)
    monkeypatch.setattr(bcnn_accuracy, "load_dataset", lambda *a, **k: None)
    monkeypatch.setattr(bcnn_accuracy, "backfill_reestimated", lambda *a: None)
    monkeypatch.setattr(bcnn_accuracy, "add_trained", add_trained)
    monkeypatch.setattr(sys, "argv", ["bcnn_accuracy.py", "--models", "nin", "--datasets", "modulation", "--seeds",
                                      "0", "--converged-only", "--precision", "fp32", "--continue"])
    bcnn_accuracy.main()
    assert seen == [("fp32", [], "bcnn-long")]  # a fresh table: the bf16 row is not this recipe's
    assert json.loads((tmp_path / "bcnn_accuracy.json").read_text()) == reference

    fp32 = {**reference, "precision": "fp32"}
    title = bcnn_accuracy.summarize(reference).splitlines()[0]
    assert bcnn_accuracy.summarize(fp32).splitlines()[0] == title.replace("20x (", "20x, float32 forward (")
    (tmp_path / "bcnn_accuracy_fp32.json").write_text(json.dumps(fp32))
    written = []
    monkeypatch.setattr(bcnn_accuracy, "write_result",
                        lambda name, data, text: written.append((name, text.splitlines()[0])))
    monkeypatch.setattr(sys, "argv", ["bcnn_accuracy.py", "--render"])
    bcnn_accuracy.main()
    assert [name for name, _ in written] == ["bcnn_accuracy", "bcnn_accuracy_fp32"]
    assert "float32 forward" in written[1][1] and "float32" not in written[0][1]


def test_bcnn_pruned_rows_of_another_retraining_schedule_run_again_and_are_replaced(monkeypatch, tmp_path):
    """Rows pruned with the per-epoch cosine retraining (from before cosine-step; they record no schedule) are not
    done under --continue: the pruning runs again with today's schedule and its row replaces the old one, while the
    trained rows are kept. Until then the table never averages the two schedules together."""
    import json

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_accuracy", None)
    bcnn_accuracy = importlib.import_module("bcnn_accuracy")
    legacy = _bcnn_row("bcnn-long-20x", 0, 36.0, 46.0, live=20.7, target_compression=20.0, hard_pruned_accuracy=30.0,
                       retrain_epochs=5)
    fresh = {**legacy, "accuracy": 45.0, "retrain_schedule": "cosine-step"}
    control = _bcnn_row("bcnn-long", 0, 60.0, 58.0)
    text = bcnn_accuracy.summarize({"precision": "bf16", "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "2"},
                                    "runs": [control, legacy, fresh]})
    assert "| bcnn-long-20x (per-epoch cosine) | 123,531 | 1 | 36.00 |" in text
    assert "| bcnn-long-20x | 123,531 | 1 | 45.00 |" in text

    (tmp_path / "bcnn_accuracy.json").write_text(json.dumps(
        {"benchmark": "bcnn_accuracy", "precision": "bf16", "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "2"},
         "runs": [control, legacy]}))
    asked = []
    monkeypatch.setattr(bcnn_accuracy, "RESULTS", tmp_path)
    monkeypatch.setattr(bcnn_accuracy, "write_result", lambda *a: None)
    monkeypatch.setattr(bcnn_accuracy, "load_dataset", lambda *a, **k: None)
    monkeypatch.setattr(bcnn_accuracy, "backfill_reestimated", lambda *a: None)
    monkeypatch.setattr(bcnn_accuracy, "add_trained",
                        lambda data, model, dataset, variant, *a, **k: asked.append(variant))
    monkeypatch.setattr(bcnn_accuracy, "trained", lambda *a, **k: tmp_path / "nin-bcnn-e33")

    def pruned(source, seed, steps, distill, retrain_epochs, compression):
        asked.append(f"prune {compression:g}x")
        return tmp_path / "run", {"hard_pruned_accuracy": 31.0, "retrain_accuracy": [45.0], "bcnn": {"ratio": 0.78}}

    monkeypatch.setattr(bcnn_accuracy, "pruned", pruned)
    monkeypatch.setattr(bcnn_accuracy, "row", lambda run, test_set, train_set, **fields:
                        {**_bcnn_row(fields["variant"], 0, 45.0, 47.0, live=20.7), **fields})
    monkeypatch.setattr(sys, "argv", ["bcnn_accuracy.py", "--models", "nin", "--datasets", "modulation", "--seeds",
                                      "0", "--converged-only", "--from-long", "20", "--continue"])
    runs = []
    monkeypatch.setattr(bcnn_accuracy, "add_row", lambda data, r: (data["runs"].append(r), runs.append(data["runs"])))
    bcnn_accuracy.main()
    assert asked == ["prune 20x"]  # bcnn-long is kept: a trained row has no retraining schedule
    final = runs[-1]
    assert [(r["variant"], r.get("retrain_schedule")) for r in final] == [("bcnn-long", None),
                                                                          ("bcnn-long-20x", "cosine-step")]


def _bcnn_throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_throughput", None)
    return importlib.import_module("bcnn_throughput")


def test_bcnn_throughput_table_names_each_trained_checkpoint_with_its_width_and_source(monkeypatch):
    """Two trained NINs in one table (width 0.5 as ``nin``, full width as ``nin-full``): each row says its width,
    the sentence on the weights names both checkpoints, and each gets its own target verdict."""
    import copy
    import json

    bench = _bcnn_throughput(monkeypatch)
    data = json.loads((BENCHMARKS / "results" / "bcnn_throughput_trained.json").read_text())
    half = data["models"][0]
    half.update(registry_name="cnin (width 0.5)", pruning={**half["pruning"], "width": 0.5})
    full = copy.deepcopy(half)
    full.update(model="nin-full", registry_name="cnin (width 1)",
                pruning={**half["pruning"], "width": 1.0, "source": "checkpoint full/epoch-0005"})
    data["models"] = [half, full]
    text = bench.summarize(data)
    assert f"Weights: cnin (width 0.5): {half['pruning']['source']}; cnin (width 1): checkpoint full/epoch-0005;" \
        in text
    rows = [line for line in text.splitlines() if line.startswith("| cnin") and " | checkpoint | " in line]
    assert [r.split(" | ")[0] for r in rows] == ["| cnin (width 0.5)"] * 3 + ["| cnin (width 1)"] * 3
    assert sum("5882: met" in r for r in rows) == 2


def test_bcnn_throughput_chunk_sweep_marks_the_table_chunk_and_names_the_fastest(monkeypatch):
    """The sweep is the evidence for the engine's default chunk: one row per model and batch, the table's own chunk
    starred, the fastest named; a JSON from before the sweep renders without it."""
    import json

    bench = _bcnn_throughput(monkeypatch)
    data = json.loads((BENCHMARKS / "results" / "bcnn_throughput_trained.json").read_text())
    data["models"] = data["models"][:1]
    data["models"][0].pop("chunk_sweep", None)
    assert "by images per chunk" not in bench.summarize(data)
    data["chunk"] = 32
    data["models"][0].update(chunk=32, chunk_sweep=[
        {"chunk": c, "batch_size": b, "runs": 20, "fps": fps}
        for (c, b, fps) in [(16, 64, 9000.0), (32, 64, 12000.0), (64, 64, 8000.0),
                            (16, 1024, 11000.0), (32, 1024, 17000.0), (64, 1024, 17500.0)]])
    lines = bench.summarize(data).splitlines()
    name = data["models"][0]["registry_name"]
    assert f"| {name} | 64 | 9,000 | 12,000* | 8,000 | 32 |" in lines
    assert f"| {name} | 1024 | 11,000 | 17,000* | 17,500 | 64 |" in lines
    assert any("median of 20 runs" in line and "the chunk of the table above, 32" in line for line in lines)


def test_bcnn_throughput_tag_keeps_another_machines_run_beside_the_reference(monkeypatch):
    """A run on a second machine (``--tag avx2``) gets a file and a table of its own, named by its CPU; the
    reference run's file and title stay as they were."""
    import json

    import pytest

    bench = _bcnn_throughput(monkeypatch)
    assert bench.result_name(True, None) == "bcnn_throughput_trained"
    assert bench.result_name(True, "avx2") == "bcnn_throughput_trained_avx2"
    assert bench.result_name(False, "avx2") == "bcnn_throughput_avx2"
    data = json.loads((BENCHMARKS / "results" / "bcnn_throughput_trained.json").read_text())
    title = bench.summarize(data).splitlines()[0]
    assert title == "## BCNN engine throughput, trained 20x-pruned checkpoints (`--checkpoint`) " \
                    "(`benchmarks/bcnn_throughput.py`)"
    data.update(tag="avx2", environment={**data["environment"], "cpu": "AMD EPYC (AVX2)"})
    assert bench.summarize(data).splitlines()[0] == title.replace("(`--checkpoint`)",
                                                                 "(`--checkpoint`), on AMD EPYC (AVX2)")
    monkeypatch.setattr(sys, "argv", ["bcnn_throughput.py", "--tag", "../x", "--render"])
    with pytest.raises(SystemExit):
        bench.main()


def test_bcnn_throughput_refuses_nin_full_without_its_checkpoint(monkeypatch, capsys):
    import pytest

    bench = _bcnn_throughput(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bcnn_throughput.py", "--models", "nin-full"])
    with pytest.raises(SystemExit, match="give --checkpoint nin-full=PATH"):
        bench.main()


def test_rows_record_their_machine_and_the_table_names_every_other_machine(monkeypatch):
    """A table grows across sessions on different machines: each new row records the machine it ran on, and the
    table's text names every machine other than the JSON's first one, with its row count."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for module in ("common", "bcnn_accuracy"):
        sys.modules.pop(module, None)
    common = importlib.import_module("common")
    first = {"cpu": "AMD EPYC (AVX2)", "cpu_count": 2, "torch": "2.13.0"}
    data = {"environment": first, "runs": [{"seed": 0}]}  # a row from before rows were stamped: the first machine's
    monkeypatch.setattr(common, "environment_info", lambda: dict(first))
    common.add_row(data, {"seed": 1})
    assert data["runs"][1]["machine"] == "AMD EPYC (AVX2), 2 cores, torch 2.13.0"
    assert common.other_machines_note(data) == ""
    monkeypatch.setattr(common, "environment_info", lambda: {**first, "cpu": "Intel Xeon (AVX-512)", "cpu_count": 4})
    row = {"seed": 2}
    common.add_row(data, row)
    common.add_row(data, {"seed": 3})
    assert row["machine"] == "Intel Xeon (AVX-512), 4 cores, torch 2.13.0" and data["runs"][2] is row
    assert common.other_machines_note(data) == (" Rows run on another machine: 2 on Intel Xeon (AVX-512), 4 cores, "
                                                "torch 2.13.0.")
    bcnn_accuracy = importlib.import_module("bcnn_accuracy")
    runs = [_bcnn_row("bcnn", 0, 50.0, 49.0), _bcnn_row("bcnn", 1, 51.0, 50.0, machine="Intel Xeon, 2 cores, torch 2")]
    text = bcnn_accuracy.summarize({"precision": "bf16", "environment": {"cpu": "cpu", "cpu_count": 2, "torch": "2"},
                                    "runs": runs})
    assert "Machine: cpu, 2 cores, torch 2. Rows run on another machine: 1 on Intel Xeon, 2 cores, torch 2." in text


def test_bcnn_bn_statistics_says_how_much_of_the_gap_a_train_mode_estimate_closes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bcnn_bn_statistics", None)
    script = importlib.import_module("bcnn_bn_statistics")
    pruned = {"label": "nin w0.5 bcnn-long-20x", "epochs": 5, "last_epoch_lr": 9.5e-5,
              "train_accuracy_last_epoch": 47.6, "as_trained": 36.0, "ema_continued": 44.0,
              "all_at_once": [45.0, 46.0, 47.0], "sequential": 46.0}
    unpruned = {**pruned, "label": "nin w0.5 bcnn-long (33 epochs)", "epochs": 33, "as_trained": 59.8,
                "ema_continued": 59.0, "all_at_once": [58.5, 59.0, 59.5], "sequential": 58.8}
    text = script.summarize({"environment": {"cpu": "cpu", "cpu_count": 2, "torch": "2"}, "runs": [pruned, unpruned]})
    assert "| nin w0.5 bcnn-long-20x | 5 | 9.5e-05 | 47.60 | 36.00 | 44.00 | 46.00 ± 1.00 | 46.00 |" in text
    assert text.splitlines()[-2:] == [  # in CHECKPOINTS' order; no share where sequential gains under a point
        "- nin w0.5 bcnn-long (33 epochs): sequential - as trained -1.00 pt; all at once - as trained -0.80 pt (-); "
        "EMA +5 - as trained -0.80 pt",
        "- nin w0.5 bcnn-long-20x: sequential - as trained +10.00 pt; all at once - as trained +10.00 pt (100% of "
        "it); EMA +5 - as trained +8.00 pt"]


def test_surgery_table_shows_trained_rows_before_their_timing_pass(monkeypatch):
    """Rows land in the JSON as they are trained, the timing pass comes once all are: a table rendered between
    shows each untimed row's accuracy, says 'not timed yet' in its latency cells and counts those rows."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("surgery_speedup", None)
    surgery = importlib.import_module("surgery_speedup")
    env = {"cpu": "Intel Xeon (AVX-512)", "cpu_count": 2, "torch": "2.13.0"}
    row = {"model": "resnet20", "target": 2.0, "variant": "slr", "budget": [3, 1], "dense_accuracy": 92.0,
           "macs_after": 20_000_000, "params_after": 136_000, "hard_pruned_accuracy": 91.5,
           "retrain_accuracy": [91.75]}  # as the training writes it: the timing pass adds the file size and times
    times = {f"{m}_{w}_b{b}_ms": 2.0 if w == "small" else 3.0
             for m in ("eager", "deployed") for w in ("dense", "small") for b in (1, 64)}
    timed = {**row, "variant": "l1", "weights_bytes_after": 550_000, **times}
    data = {"environment": env, "threads": 2, "dense_epochs": 4, "round_to": {"resnet20": 8}, "runs": [row, timed],
            "dense": {"resnet20": {"accuracy": 92.0, "macs": 40_000_000, "params": 272_000, "weights_bytes": 1_100_000,
                                   "sha256": "ab" * 32}}}
    lines = surgery.summarize(data).splitlines()
    slr = next(line for line in lines if "| slr |" in line)
    assert ("| 136,000 (2.00x) | not timed yet | 91.50 | 91.75 | -0.25 | not timed yet | not timed yet | not timed yet "
            "| not timed yet |") in slr
    l1 = next(line for line in lines if "| l1 |" in line)
    assert "| 550,000 (2.00x) | 91.50 | 91.75 | -0.25 | " + " | ".join(["2.00 (1.50x)"] * 4) + " |" in l1
    assert "1 of 2 rows not timed yet" in surgery.summarize(data)


def test_surgery_timing_pass_is_kept_before_its_rows_are_trained_again(monkeypatch):
    """Re-timing on the same CPU replaces the pass; starting the rows over (another dense file) keeps it as an
    earlier pass of the same shapes, on whatever CPU it ran."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("surgery_speedup", None)
    surgery = importlib.import_module("surgery_speedup")
    here = surgery.environment_info()
    timed = {"model": "vgg16", "target": 2.0, "variant": "slr", **{f"{m}_{w}_b64_ms": 1.0 for m in ("eager", "deployed")
                                                                    for w in ("dense", "small")}}
    data = {"timing": {"environment": here, "threads": 2}, "runs": [timed, {"model": "vgg16", "variant": "l1"}]}
    surgery.keep_earlier_pass(data, ["vgg16"])
    assert "earlier_timings" not in data
    surgery.keep_earlier_pass(data, ["vgg16"], always=True)
    (earlier,) = data["earlier_timings"]
    assert earlier["environment"] == here and earlier["rows"] == [{**timed, "allocation": "uniform"}]


def test_surgery_started_over_keeps_the_searches_and_the_timing_pass_of_the_same_shapes(monkeypatch, tmp_path):
    """Without --continue (another dense file) the rows start over, but the latency searches and the last timing
    pass depend on the shapes alone: kept when the bisection (round_to) is the same, dropped when it is not."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("surgery_speedup", None)
    surgery = importlib.import_module("surgery_speedup")
    timed = {"model": "vgg16", "target": 2.0, "variant": "slr", **{f"{m}_{w}_b64_ms": 1.0 for m in ("eager", "deployed")
                                                                    for w in ("dense", "small")}}
    old = {"round_to": surgery.ROUND_TO, "searches": {"vgg16 2x": {"steps": 3}}, "dense": {"vgg16": {"sha256": "a"}},
           "timing": {"environment": {"cpu": "elsewhere"}, "threads": 2}, "runs": [timed]}
    path = tmp_path / "surgery_speedup.json"
    path.write_text(json.dumps(old))

    assert surgery.start_or_continue(path, cont=True) == old
    fresh = surgery.start_or_continue(path, cont=False)
    assert fresh["runs"] == [] and fresh["dense"] == {} and "timing" not in fresh
    assert fresh["searches"] == old["searches"]
    (earlier,) = fresh["earlier_timings"]
    assert earlier["environment"] == {"cpu": "elsewhere"} and earlier["rows"] == [{**timed, "allocation": "uniform"}]

    path.write_text(json.dumps({**old, "round_to": {"vgg16": 1}}))  # another bisection: other shapes
    fresh = surgery.start_or_continue(path, cont=False)
    assert "searches" not in fresh and "earlier_timings" not in fresh
    assert surgery.start_or_continue(tmp_path / "none.json", cont=True)["runs"] == []


def test_structured_retrain_free_compares_slr_with_torch_pruning_on_the_seeds_both_have(monkeypatch):
    """While a seed is still running, SLR's third row must not be averaged against Torch-Pruning's two."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("structured_retrain_free", None)
    script = importlib.import_module("structured_retrain_free")

    def row(seed: int, hard: float, final: float) -> dict:
        return {"seed": seed, "hard_pruned_accuracy": hard, "retrain_accuracy": [final - 0.1, final - 0.05, final]}

    groups = {("resnet20", 4.0, "slr"): [row(0, 92.0, 92.6), row(1, 92.0, 92.4), row(2, 90.0, 91.0)],
              ("resnet20", 4.0, "tp-l1"): [row(0, 91.0, 92.5), row(1, 91.0, 92.3)],
              ("resnet20", 4.0, "tp-groupnorm"): [row(0, 10.0, 90.0), row(1, 10.0, 90.0)]}
    data = {"dense": {"resnet20": {"accuracy": 93.0}}}
    assert script.verdicts(data, groups) == [
        "- resnet20 4x slr: hard-pruned -1.67 pt vs dense (target within 2.5 pt) -> **met**",  # all 3 seeds
        "- resnet20 4x after R = 3: slr 92.50 vs best Torch-Pruning (tp-l1) 92.40 (seeds 0, 1) -> **met**"]
    groups[("resnet20", 4.0, "tp-l1")].append(row(2, 91.0, 92.0))  # seed 2 done: SLR's 91.0 counts now
    groups[("resnet20", 4.0, "tp-groupnorm")].append(row(2, 10.0, 90.0))
    assert script.verdicts(data, groups)[-1] == (
        "- resnet20 4x after R = 3: slr 92.00 vs best Torch-Pruning (tp-l1) 92.27 (seeds 0, 1, 2) -> **NOT met**")
