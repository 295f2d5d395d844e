"""The benchmark harness runs and returns well-formed figures on tiny configurations (nothing is timed here)."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from roadmap import load_roadmap
from roadmap.models.network import build_model
from roadmap.training.throughput import BenchmarkConfig, benchmark_steps, format_table, measure

TINY = BenchmarkConfig(batch_size=4, image_size=32, warmup=1, repeats=1, iterations_per_repeat=1, num_classes=10)
FIGURES = ("train_img_per_s", "eval_img_per_s", "train_spread_pct", "eval_spread_pct", "peak_memory_mib")
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def roadmap_steps():
    return load_roadmap("resnet50_to_convnext_t")


def test_measure_returns_finite_figures_and_echoes_config(roadmap_steps):
    arch = roadmap_steps.step("separate_downsampling").arch
    model = build_model(dataclasses.replace(arch, width_multiplier=0.125), num_classes=10)
    result = measure(model, TINY)
    assert set(FIGURES) <= set(result)
    assert result["train_img_per_s"] > 0 and result["eval_img_per_s"] > 0
    # One repeat has no spread, and a tiny model may fit in memory the process already holds.
    assert all(math.isfinite(result[key]) and result[key] >= 0 for key in FIGURES)
    assert result["batch_size"] == 4 and result["image_size"] == 32 and result["precision"] == "fp32"


def test_benchmark_steps_gives_one_row_per_step_and_a_labelled_table(roadmap_steps):
    steps = [roadmap_steps.step("resnet50"), roadmap_steps.step("separate_downsampling")]
    rows = benchmark_steps(steps, TINY, width_multiplier=0.125, progress=False)
    assert [row["step"] for row in rows] == ["resnet50", "separate_downsampling"]
    assert all(row["params"] > 0 and row["gmacs"] > 0 for row in rows)
    table = format_table(rows, TINY)
    for words in ("cpu", "batch 4", "32x32 px", "fp32", "memory format", "img/s", "resnet50"):
        assert words in table


def test_config_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        BenchmarkConfig(precision="fp8")


def test_side_by_side_prints_a_ratio_line_per_pair():
    side_by_side = load_script("side_by_side")
    args = "--threads 1 --image-size 32 --batch-size 2 --repeats 1 --iterations 1 --warmup 0".split()
    result = CliRunner().invoke(side_by_side.main, args)
    assert result.exit_code == 0, result.output
    ratio_lines = [line for line in result.output.splitlines() if "ratio ours / reference" in line]
    assert len(ratio_lines) == 2
    assert all("train" in line and "eval" in line for line in ratio_lines)
    assert "img/s" in result.output


def test_harness_overhead_prints_pure_and_harness_times_and_the_overheads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the script writes nothing here, but MLflow may create ./mlruns
    harness_overhead = load_script("harness_overhead")
    result = CliRunner().invoke(harness_overhead.main, "--preset smoke --step stage_ratio --repeats 1".split())
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    pure = next(line for line in lines if line.startswith("pure model steps"))
    harness = [line for line in lines if line.startswith("through the harness")]
    assert "s/epoch" in pure and len(harness) == 2
    assert all(re.search(r"overhead [+-]\d+\.\d % of the pure model step time", line) for line in harness)
    waits = [line for line in lines if line.strip().startswith("of which waiting for batches")]
    assert len(waits) == 2 and all(re.search(r"\d+\.\d\d s/epoch, \+\d+\.\d %", line) for line in waits)
    study = next(line for line in lines if line.startswith("over the "))
    assert re.search(r"over the 16 steps of resnet50_to_convnext_t with the modern recipe .* overhead [+-]\d", study)
    assert "batch 32" in result.output and "cpu (" in result.output and "fp32" in result.output
