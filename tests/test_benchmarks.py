"""The benchmark scripts' own logic: sweep parsing and combination (packed_layers.py), TUNING files
(train_throughput.py). The measurements themselves run on a GPU (benchmarks/gpu_checks.sh)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # as tests/test_packed_triton.py: packed_triton's kernels in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def layers():
    return _script("packed_layers")


def test_sweep_items_take_kinds_and_layer_shapes(layers):
    assert layers.parse_sweep_item("wgrad.BLOCK_K=128+conv_transpose[32,1,4,2].WINDOW=1") == {
        "wgrad": {"BLOCK_K": 128},
        ("conv_transpose", 32, 1, 4, 2): {"WINDOW": 1},
    }
    with pytest.raises(ValueError, match="'deconv' is not a kernel kind"):
        layers.parse_sweep_item("deconv.BLOCK_K=64")
    with pytest.raises(ValueError, match="KEY in"):
        layers.parse_sweep_item("conv.BLOCKK=64")
    with pytest.raises(ValueError, match="KEY in"):
        layers.parse_sweep_item("conv.BLOCK_K=big")
    with pytest.raises(ValueError, match="conv.BLOCK_K=48: tile sizes are powers of two"):
        layers.parse_sweep_item("conv.BLOCK_K=48")


def test_standard_sweep_expands_in_place_and_every_item_parses(layers):
    items = layers.sweep_items("conv.BLOCK_K=128, standard,conv_transpose[32,1,4,2].WINDOW=1,wgrad.ROWS=4096")
    standard = list(layers.STANDARD_SWEEP)
    assert items[0] == "conv.BLOCK_K=128"  # given first, so not repeated where standard lists it
    assert items[1:-1] == [i for i in standard if i != "conv.BLOCK_K=128"]  # bracketed commas stay in their item
    assert items[-1] == "wgrad.ROWS=4096" and len(items) == len(set(items))
    assert standard[0] == "conv_transpose.WINDOW=1"  # the most promising first: --budget drops the tail
    for item in standard:
        assert layers.parse_sweep_item(item)


def _row(layer, variant, ms, tuning=None, diff=1e-3):
    return {"layer": layer, "variant": variant, "forward_backward_ms": ms, "max_abs_diff_vs_grouped": diff, "tuning": tuning}


def test_best_sweep_setting_combines_winners_of_different_kinds_and_shapes(layers):
    window_d4 = {"conv_transpose[32,1,4,2]": {"WINDOW": 1}}
    rows = [
        _row("e2", "triton", 10.0), _row("d4", "triton", 10.0),
        # wgrad 128: 20% faster in sum -> taken first
        _row("e2", "triton[wgrad.BLOCK_K=128]", 6.0, {"wgrad": {"BLOCK_K": 128}}),
        _row("d4", "triton[wgrad.BLOCK_K=128]", 10.0, {"wgrad": {"BLOCK_K": 128}}),
        # another wgrad BLOCK_K: a setting already taken -> skipped
        _row("e2", "triton[wgrad.BLOCK_K=32]", 7.0, {"wgrad": {"BLOCK_K": 32}}),
        _row("d4", "triton[wgrad.BLOCK_K=32]", 10.0, {"wgrad": {"BLOCK_K": 32}}),
        # d4's window form: 10% faster, another kind -> combined
        _row("e2", "triton[conv_transpose[32,1,4,2].WINDOW=1]", 10.0, window_d4),
        _row("d4", "triton[conv_transpose[32,1,4,2].WINDOW=1]", 8.0, window_d4),
        # fast but wrong: rejected
        _row("e2", "triton[conv.BLOCK_K=16]", 1.0, {"conv": {"BLOCK_K": 16}}, diff=1.0),
        _row("d4", "triton[conv.BLOCK_K=16]", 1.0, {"conv": {"BLOCK_K": 16}}),
    ]
    tuning, lines = layers.best_sweep_setting(rows)
    assert tuning == {"wgrad": {"BLOCK_K": 128}, ("conv_transpose", 32, 1, 4, 2): {"WINDOW": 1}}
    assert any("rejected triton[conv.BLOCK_K=16] on e2" in line for line in lines)
    assert not any("taking triton[wgrad.BLOCK_K=32]" in line for line in lines)


def test_best_sweep_setting_keeps_the_heuristic_when_nothing_wins(layers):
    rows = [_row("e2", "triton", 10.0), _row("e2", "triton[conv.num_warps=8]", 9.9, {"conv": {"num_warps": 8}})]
    tuning, lines = layers.best_sweep_setting(rows)
    assert tuning == {} and lines[-1] == "sweep: keeping the heuristic's block sizes"


def test_train_throughput_reads_tuning_files(tmp_path):
    from disentbench.core.training.kernels import triton_conv as packed_triton

    throughput = _script("train_throughput")
    good = tmp_path / "t.json"
    good.write_text(json.dumps({"conv_transpose[32,1,4,2]": {"WINDOW": 1}, "wgrad": {"BLOCK_K": 128}}))
    saved = dict(packed_triton.TUNING)
    try:
        assert throughput.load_triton_tuning(str(good)) == json.loads(good.read_text())
        assert packed_triton.TUNING == {("conv_transpose", 32, 1, 4, 2): {"WINDOW": 1}, "wgrad": {"BLOCK_K": 128}}
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"conv": {"BLOCK_K": "64"}}))
        with pytest.raises(SystemExit, match=r"--triton-tuning: conv.BLOCK_K='64': settings are integers"):
            throughput.load_triton_tuning(str(bad))
    finally:
        packed_triton.TUNING.clear()
        packed_triton.TUNING.update(saved)


def test_sweep_budget_skips_items_alike_and_still_writes_the_tuning(layers, tmp_path, capsys):
    """--budget: past a layer's share of the time the remaining sweep items are skipped on that layer; the
    summary and the TUNING file are still written (here nothing beat the heuristic: {})."""
    from disentbench.core.training.kernels import triton_conv as packed_triton

    if packed_triton.available("cpu" if not torch.cuda.is_available() else "cuda") is not None:
        pytest.skip("the triton layers cannot run here")
    out = tmp_path / "t.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv = ["--device", device, "--pack", "2", "--batch", "2", "--repeat", "1", "--only", "triton", "d1",
            "--sweep", "conv_transpose.WINDOW=1,wgrad.BLOCK_K=32", "--budget", "1e-6", "--write-tuning", str(out)]
    assert layers.main(argv) == 0
    printed = capsys.readouterr().out
    assert "triton[conv_transpose.WINDOW=1] skipped (--budget)" in printed
    assert "triton[wgrad.BLOCK_K=32] skipped (--budget)" in printed
    assert json.loads(out.read_text()) == {}


def test_train_throughput_runs_on_cpu_and_reports_every_row(tmp_path):
    """The benchmark's CPU path (tiny): the naive loop, a packed row and a --compare row, each formulation's
    exactness check, ratios and the study projection in the JSON."""
    throughput = _script("train_throughput")
    out = tmp_path / "t.json"
    argv = ["--device", "cpu", "--quick", "--batch-size", "4", "--pack-sizes", "2", "--compare", "vmap",
            "--compare-pack-sizes", "2", "--seconds", "0.2", "--json", str(out)]
    assert throughput.main(argv) == 0
    result = json.loads(out.read_text())
    modes = [(row["mode"], row.get("formulation"), row["pack"]) for row in result["rows"]]
    assert modes == [("naive eager (1 model, Trainer)", None, 1), ("packed fp32", "grouped", 2), ("packed fp32", "vmap", 2)]
    assert result["rows"][0]["ratio_to_naive"] == 1.0
    assert all(row["model_steps_per_s"] > 0 and row["ratio_to_naive"] > 0 for row in result["rows"])
    assert set(result["exactness_max_param_diff"]) == {"grouped", "vmap"}
    assert all(diff <= 1e-5 for diff in result["exactness_max_param_diff"].values())
    assert result["study_days"] > 0


def test_metric_speed_against_reference_runs_and_reports_exact_parity(tmp_path):
    """--against-reference on two cheap metrics: both sides, the suite row, and exact mode equal to the study code."""
    metric_speed = _script("metric_speed")
    if isinstance(metric_speed.reference_functions(), str):
        pytest.skip(f"the study's code is not usable here: {metric_speed.reference_functions()}")
    out = tmp_path / "m.json"
    assert metric_speed.main(["--against-reference", "--quick", "--only", "mig", "unsupervised", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["config"] for row in result["results"]] == ["mig", "unsupervised"]
    assert all(row["exact_max_difference"] <= 1e-9 for row in result["results"])
    assert all(set(row["seconds"]) == {"study", "exact", "fast"} for row in result["results"])
    assert set(result["suite_seconds"]) == {"study", "exact", "fast"}


@pytest.mark.slow  # two small studies (~25 s); the pool itself is tested in tests/test_evaluation_overlap.py
def test_study_throughput_runs_both_variants_with_identical_scores(tmp_path):
    """The evaluation pool against in-process evaluation: one pack of two runs, same scores, rates reported."""
    throughput = _script("study_throughput")
    out = tmp_path / "t.json"
    args = ["--runs", "2", "--pack-size", "2", "--steps", "5", "--suite", "light", "--processes", "1"]
    throughput.main([*args, "--no-progress", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["scores_identical"] is True
    for variant in ("inline", "pool"):
        row = result[variant]
        assert row["runs"] == 2
        assert 0 < row["training_seconds"] < row["wall_seconds"]
        assert row["evaluations_per_hour"] > 0 and row["training_runs_per_hour"] > 0
