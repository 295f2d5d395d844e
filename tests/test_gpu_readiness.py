"""What a CPU can prove of the CUDA training loop: no host sync per micro-step, the compile order, one graph
per mode, TF32 and cuDNN settings through the installed torch's API, DDP's arguments, per-run peak memory,
the data-wait warning, MFU and the benchmark protocol. The training's results are unchanged: tests/test_engine.py
and the bit-identical resume tests still pass."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CLASSES, AllocatesOnce, DivergesAfter, SlowBatches, make_loaders, recipe_for, tiny_model
from torch import nn
from torch.overrides import TorchFunctionMode

import roadmap.training.engine as engine
from roadmap.recipes import CLASSIC, MODERN
from roadmap.schema import Metric
from roadmap.training import distributed, epoch
from roadmap.training.distributed import WorldInfo
from roadmap.training.engine import TrainOptions, evaluate, train_and_evaluate
from roadmap.training.memory import MemoryWatch
from roadmap.training.mfu import Peak, find_peak, mfu_pct, model_tflops
from roadmap.training.numerics import training_numerics
from roadmap.training.throughput import BenchmarkConfig, format_table, measure

REPO = Path(__file__).resolve().parent.parent
# Tensor methods that make the host wait for the device (on CUDA), and the explicit wait.
HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"}


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor on the host, and torch.cuda.synchronize (patched in by `count`)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count(monkeypatch):
    """count(fn, *args, **kwargs) -> (result, host reads while fn ran)."""

    def run(fn, *args, **kwargs):
        reads = HostReads()
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: reads.calls.append("synchronize"))
        with reads:
            result = fn(*args, **kwargs)
        return result, reads.calls

    return run


def _epoch_reads(count, monkeypatch, tmp_path, train_size: int, recipe, batch: int, accumulation: int) -> list[str]:
    seen: list[list[str]] = []

    def counted_epoch(*args, **kwargs):
        stats, calls = count(epoch.train_one_epoch, *args, **kwargs)
        seen.append(calls)
        return stats

    monkeypatch.setattr(engine, "train_one_epoch", counted_epoch)
    loaders = make_loaders(batch=batch, train_size=train_size)
    result = train_and_evaluate(tiny_model(), recipe, *loaders, num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=tmp_path / str(train_size),
                                                     accumulation_steps=accumulation))
    assert result.status == "finished"
    (calls,) = seen
    return calls


@pytest.mark.parametrize(("recipe", "batch", "accumulation"), [
    (recipe_for(CLASSIC, epochs=1), 16, 1),
    (recipe_for(MODERN, epochs=1, lr=0.01, clip_grad_norm=1.0), 8, 2),  # mixup, clipping, accumulation
], ids=["classic", "modern_clip_accumulation"])
def test_an_epoch_reads_the_device_a_fixed_number_of_times_whatever_its_length(count, monkeypatch, tmp_path, recipe,
                                                                                batch, accumulation):
    short = _epoch_reads(count, monkeypatch, tmp_path, 64, recipe, batch, accumulation)  # 4 or 8 micro-steps
    long = _epoch_reads(count, monkeypatch, tmp_path, 256, recipe, batch, accumulation)  # 16 or 32 micro-steps
    # One read of the losses at the end of the epoch and the sampler's permutation; nothing per micro-step.
    assert long == short
    assert len(long) <= 3, long


def test_losses_are_read_once_per_interval(count, monkeypatch, tmp_path):
    monkeypatch.setattr(epoch, "LOSS_READ_INTERVAL", 4)
    short = _epoch_reads(count, monkeypatch, tmp_path, 64, recipe_for(CLASSIC, epochs=1), 16, 1)  # 4 micro-steps
    long = _epoch_reads(count, monkeypatch, tmp_path, 256, recipe_for(CLASSIC, epochs=1), 16, 1)  # 16
    assert long.count("tolist") - short.count("tolist") == 3  # reads after micro-steps 4, 8, 12, 16 vs 4


@pytest.mark.parametrize("interval", [1, 3, 50])
def test_a_divergence_found_at_a_later_read_names_the_first_non_finite_micro_step(interval, monkeypatch, tmp_path):
    monkeypatch.setattr(epoch, "LOSS_READ_INTERVAL", interval)
    result = train_and_evaluate(DivergesAfter(6), recipe_for(CLASSIC, lr=0.05), *make_loaders(), num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=tmp_path))
    assert result.status == "diverged"
    assert result.reason == "non-finite loss nan at epoch 2, iteration 3 of 4"
    assert result.epochs_completed == 1 and math.isnan(result.train_loss)


def test_evaluation_reads_the_device_once_per_evaluation_not_per_batch(count, tmp_path):
    model, options = tiny_model(), TrainOptions(checkpoint_dir=tmp_path)
    _, small = count(evaluate, model, make_loaders(val_size=32)[1], num_classes=CLASSES, options=options,
                     predictions=True)
    _, large = count(evaluate, model, make_loaders(val_size=160)[1], num_classes=CLASSES, options=options,
                     predictions=True)
    # 2 batches or 10: the hits once, the predictions once (labels, classes), the loader's seed once.
    assert large == small
    assert len(large) <= 6, large


class RecordingCompiled(nn.Module):
    """Stands in for torch.compile's module: records the batch sizes it sees, by mode."""

    def __init__(self, model: nn.Module, log: list):
        super().__init__()
        self.inner, self.log = model, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(("train" if self.training else "eval", len(x)))
        return self.inner(x)


def test_the_model_is_compiled_before_ddp_wraps_it_and_evaluation_runs_the_compiled_module(monkeypatch, tmp_path):
    compiled, wrapped, calls, broadcasts = [], [], [], []

    def fake_compile(model):
        compiled.append(model)
        return RecordingCompiled(model, calls)

    def fake_wrap(model, world, sync_batchnorm=False):
        wrapped.append(model)
        return model

    monkeypatch.setattr(engine, "compile_for_run", fake_compile)
    monkeypatch.setattr(engine.distributed, "wrap_model", fake_wrap)
    monkeypatch.setattr(engine.distributed, "broadcast_buffers", broadcasts.append)
    model = tiny_model()
    train_loader, _ = make_loaders()
    _, val_loader = make_loaders(val_size=20)  # batches of 16 and 4
    result = train_and_evaluate(model, recipe_for(CLASSIC, epochs=2), train_loader, val_loader, num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=tmp_path, compile=True))
    assert compiled == [model]  # the plain module is compiled ...
    assert len(wrapped) == 1 and isinstance(wrapped[0], RecordingCompiled)  # ... and DDP gets the compiled one
    assert {mode for mode, _ in calls} == {"train", "eval"}  # evaluation runs the compiled module too
    assert {size for mode, size in calls if mode == "eval"} == {16}  # its last batch padded: one shape
    assert broadcasts == [model, model]  # rank 0's BatchNorm statistics before each evaluation
    assert result.top1 >= 90.0  # the padding's outputs are dropped


@pytest.mark.slow  # inductor compiles C++ kernels for the CPU: a minute or two
def test_each_run_compiles_its_own_graphs_once_per_mode(tmp_path):
    """Two runs in one process, as two steps of an inline study: each starts from an empty dynamo cache and
    compiles its forward twice (training, evaluation), however small its last validation batch. Without the
    reset the second network, another nn.Sequential, would recompile the first one's forward."""
    results = []
    for run, batchnorm in enumerate((True, False)):
        _, val_loader = make_loaders(val_size=20)  # a last batch of 4
        train_loader, _ = make_loaders()
        results.append(train_and_evaluate(tiny_model(batchnorm=batchnorm, dropout=0.0), recipe_for(CLASSIC, epochs=2),
                                          train_loader, val_loader, num_classes=CLASSES,
                                          options=TrainOptions(checkpoint_dir=tmp_path / str(run), compile=True)))
    assert [result.recompiles for result in results] == [1, 1]
    assert all(result.top1 >= 90.0 for result in results)


def test_cuda_numerics_use_the_installed_torchs_tf32_api_and_cudnn_benchmark():
    matmul, conv, benchmark = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
                               torch.backends.cudnn.benchmark)
    try:
        # A caller that set TF32 through the new API: reading the old allow_tf32 flags now raises a RuntimeError.
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cudnn.benchmark = False
        with training_numerics(torch.device("cuda", 0)):  # sets flags only: no GPU needed
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"
            assert torch.backends.cudnn.conv.fp32_precision == "tf32"
            assert torch.backends.cudnn.benchmark is True
        # The caller's settings are back.
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cudnn.benchmark is False
        with training_numerics(torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"  # the CPU touches no CUDA flag
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
        torch.backends.cudnn.benchmark = benchmark


def test_ddp_is_bound_to_its_gpu_with_gradients_in_its_buckets(monkeypatch):
    created, initialized = [], []

    class FakeDDP:
        def __init__(self, module, **kwargs):
            created.append(kwargs)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", FakeDDP)
    distributed.wrap_model(nn.Linear(2, 2), WorldInfo(rank=1, local_rank=1, world_size=2, device="cuda:1",
                                                      is_main=False))
    assert created == [{"device_ids": [1], "gradient_as_bucket_view": True}]

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: initialized.append(kwargs))
    world = distributed.init_distributed("cuda")
    assert initialized == [{"backend": "nccl", "device_id": torch.device("cuda", 1)}]
    assert world.device == "cuda:1" and world.local_rank == 1


def test_peak_memory_is_the_runs_own_not_the_process_lifetimes(tmp_path):
    results = []
    for run, mib in enumerate((600, 0)):
        train_loader, val_loader = make_loaders()
        results.append(train_and_evaluate(tiny_model(), recipe_for(CLASSIC, epochs=1),
                                          AllocatesOnce(train_loader, mib), val_loader, num_classes=CLASSES,
                                          options=TrainOptions(checkpoint_dir=tmp_path / str(run))))
    heavy, light = results
    assert heavy.peak_process_rss_mib - light.peak_process_rss_mib > 400  # the second run does not inherit it
    assert light.peak_memory_mb == light.peak_process_rss_mib  # the old name's figure is the run's too
    assert heavy.peak_memory_allocated_mib is None and heavy.peak_memory_reserved_mib is None  # CUDA's only
    metrics = light.final_metrics()
    assert metrics[Metric.PEAK_PROCESS_RSS_MIB] == light.peak_process_rss_mib
    assert metrics[Metric.PEAK_MEMORY_ALLOCATED_MIB] is None  # not logged on the CPU


def test_cuda_peaks_are_reset_when_a_run_starts_and_read_in_mib(monkeypatch):
    resets = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", resets.append)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 4 * 2**30)
    device = torch.device("cuda", 0)
    peak = MemoryWatch(device).peak()
    assert resets == [device]
    assert (peak.allocated_mib, peak.reserved_mib, peak.device_peak_mib()) == (3072, 4096, 3072)


def test_a_run_that_waits_for_data_says_so_once_with_the_fix(tmp_path, capsys):
    train_loader, val_loader = make_loaders()  # 4 batches per epoch
    records, slow = [], SlowBatches(train_loader, 0.3, num_workers=3)
    result = train_and_evaluate(tiny_model(), recipe_for(CLASSIC, epochs=2), slow,
                                val_loader, num_classes=CLASSES, options=TrainOptions(checkpoint_dir=tmp_path),
                                on_epoch=records.append)
    lines = [line for line in capsys.readouterr().err.splitlines() if "waited for data" in line]
    assert len(lines) == 1  # the first epoch over the threshold, not every one
    assert re.search(r"waited for data \d+ % of epoch 1 .*3 loader worker\(s\) cannot keep up", lines[0])
    assert "--workers" in lines[0] and "--data-cache" in lines[0]
    assert all(record.metrics()[Metric.DATA_WAIT_PCT] > 50 for record in records)
    assert result.final_metrics()[Metric.DATA_WAIT_PCT] == pytest.approx(100 * result.data_wait_s / result.train_s)

    train_and_evaluate(tiny_model(), recipe_for(CLASSIC, epochs=2), *make_loaders(), num_classes=CLASSES,
                       options=TrainOptions(checkpoint_dir=tmp_path / "fast"))
    assert "waited for data" not in capsys.readouterr().err


def test_mfu_divides_six_macs_per_trained_image_by_the_gpus_dense_peak():
    h100 = find_peak("NVIDIA H100 80GB HBM3", "bf16")
    assert h100.tflops == 989.4 and "SXM5" in h100.description and "dense" in h100.description
    assert find_peak("NVIDIA H100 PCIe", "bf16").tflops == 756.5  # not the SXM5's
    assert find_peak("NVIDIA A100-SXM4-80GB", "fp32").tflops == 156.0  # fp32 runs on TF32 tensor cores
    assert find_peak("NVIDIA H200", "bf16").tflops == 989.4
    unknown = find_peak("NVIDIA GeForce RTX 3090 Ti", "bf16")
    assert not unknown.known and "--peak-tflops" in unknown.description
    assert find_peak("cpu", "fp32", 2.5) == Peak(2.5, "2.5 TFLOPS given with --peak-tflops")
    # ResNet-50: 4.09 GMACs; 1,000 trained img/s = 24.54 TFLOPS of model FLOPs, 2.48 % of an H100 in bf16.
    assert model_tflops(4.09, 1000, training=True) == pytest.approx(24.54)
    assert mfu_pct(4.09, 1000, h100, training=True) == pytest.approx(2.480, abs=1e-3)
    assert mfu_pct(4.09, 1000, h100, training=False) == pytest.approx(2.480 / 3, abs=1e-3)
    assert math.isnan(mfu_pct(4.09, 1000, unknown, training=True))


def test_benchmarks_follow_timms_protocol_on_cuda_and_stay_small_on_the_cpu(monkeypatch):
    assert (BenchmarkConfig().batch_size, BenchmarkConfig().warmup, BenchmarkConfig().repeats,
            BenchmarkConfig().iterations_per_repeat) == (16, 2, 5, 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H200")
    timm_like = BenchmarkConfig.timm_protocol(precision="bf16")
    assert timm_like.device == "cuda" and timm_like.batch_size == 256 and timm_like.warmup == 10
    assert timm_like.repeats * timm_like.iterations_per_repeat == 40
    assert "TF32" in timm_like.describe() and "cudnn.benchmark" in timm_like.describe()
    row = {"step": "resnet50", "params": 25.6e6, "gmacs": 4.09, "train_img_per_s": 3000.0, "train_spread_pct": 1.0,
           "eval_img_per_s": 9000.0, "eval_spread_pct": 1.0, "peak_memory_mib": 20000.0,
           "peak_memory_reserved_mib": 22000.0, "train_mfu_pct": mfu_pct(4.09, 3000, timm_like.peak(), training=True),
           "eval_mfu_pct": 1.0, "peak_source": timm_like.peak().description}
    table = format_table([row], timm_like)
    assert "H200 dense BF16 tensor-core peak 989.4 TFLOPS" in table and "MFU train %" in table
    assert "reserved MiB" in table and "7.4" in table  # 6 x 4.09 GMACs x 3,000 img/s / 989.4 TFLOPS


def test_measure_reports_mfu_against_a_given_peak_and_its_source(roadmap_t):
    import dataclasses

    from roadmap.models.network import build_model

    arch = dataclasses.replace(roadmap_t.step("resnet50").arch, width_multiplier=0.125)
    config = BenchmarkConfig(batch_size=2, image_size=32, warmup=0, repeats=1, iterations_per_repeat=1,
                             num_classes=10, peak_tflops=0.001)
    figures = measure(build_model(arch, num_classes=10), config)
    expected = 100 * 6 * figures["gmacs"] * 1e9 * figures["train_img_per_s"] / 1e12 / 0.001
    assert figures["train_mfu_pct"] == pytest.approx(expected)
    assert figures["peak_tflops"] == 0.001 and "--peak-tflops" in figures["peak_source"]
    assert math.isnan(figures["peak_memory_reserved_mib"])  # CUDA's only


@pytest.mark.slow  # every part at reduced sizes: about 2 to 3 minutes on 2 busy cores
def test_gpu_check_runs_every_part_in_its_cpu_mode_and_writes_one_file(tmp_path):
    out = tmp_path / "figures.txt"
    script = REPO / "benchmarks" / "gpu_check.sh"
    completed = subprocess.run(["bash", str(script), "--device", "cpu", "--out", str(out)], cwd=tmp_path,
                               capture_output=True, text=True, timeout=1500,
                               env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    text = out.read_text()
    assert completed.returncode == 0, completed.stdout + text[-4000:]
    summary = text[text.index("== summary"):].splitlines()[1:]
    parts = {line[:28].strip(): line[28:].split()[0] for line in summary if line.strip()}
    assert parts == {name: "ok" for name in ("environment", "steps, eager", "smoke study killed, resumed",
                                             "torchrun, 1 process", "data pipeline", "side by side, eager")}
    assert sum(1 for line in text.splitlines() if re.match(r"(resnet50|separate_downsampling) +\d", line)) == 2
    assert re.search(r"kill-and-resume: cpu, .* the rerun resumed from epoch [12] and finished 3 epochs", text)
    assert "] resnet50 seed 0: top-1" in text and "ratio cache/jpeg" in text
    assert text.count("ratio ours / reference") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.txt"]  # nothing else left behind


def test_evaluation_can_run_at_twice_the_training_micro_batch():
    """The unit asks for eval batches of 2 x the micro-batch on CUDA (timm's validate runs larger batches)."""
    from roadmap.data import build_datasets, build_loaders
    from roadmap.spec import DataSpec

    datasets = build_datasets(DataSpec(image_size=32, train_size=64, val_size=40), CLASSIC)
    train, val = build_loaders(datasets, 8, workers=0, seed=0, eval_batch_size=16)
    assert train.batch_size == 8 and val.batch_size == 16
    assert [len(labels) for _, labels in val] == [16, 16, 8]
    _, default = build_loaders(datasets, 8, workers=0, seed=0)
    assert default.batch_size == 8
