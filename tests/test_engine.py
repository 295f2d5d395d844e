"""The training engine on tiny models and tiny tensor data sets: learning, schedules, resume, skip, divergence."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import CLASSES, DivergesAfter, SlowBatches, make_loaders, recipe_for, tiny_model
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from roadmap.predictions import read_predictions
from roadmap.recipes import CLASSIC, MODERN
from roadmap.spec import SpecError
from roadmap.training.checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from roadmap.training.engine import TrainOptions, WaitTimer, evaluate, train_and_evaluate
from roadmap.training.result import EPOCH_FIELDS, EpochRecord, TrainResult

CLASSIC_TINY = recipe_for(CLASSIC, lr=0.05)
MODERN_TINY = recipe_for(MODERN, lr=0.01, warmup_epochs=1.0)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("recipe", [CLASSIC_TINY, MODERN_TINY], ids=["classic", "modern"])
def test_learns_a_separable_task(recipe, tmp_path):
    train_loader, val_loader = make_loaders()
    records = []
    model = tiny_model()
    result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=tmp_path), on_epoch=records.append)
    assert isinstance(result, TrainResult) and all(isinstance(r, EpochRecord) for r in records)
    assert result.status == "finished" and result.reason == ""
    assert result.epochs_completed == 3 and result.resumed_from_epoch == 0
    assert [r.epoch for r in records] == [1, 2, 3]
    assert tuple(records[0].metrics()) == (*EPOCH_FIELDS, "data_wait_pct")
    assert list(result.history) == records
    assert records[-1].train_loss < records[0].train_loss
    assert result.top1 >= 90.0  # chance is 25 %
    assert result.top5 == 100.0  # top-4 of 4 classes
    assert result.top1 == records[-1].val_top1 and result.train_loss == records[-1].train_loss
    assert result.train_img_per_s > 0 and result.eval_img_per_s > 0 and result.peak_memory_mb > 0
    assert all(0 <= r.data_wait_s < r.train_s for r in records)
    assert result.train_s == pytest.approx(sum(r.train_s for r in records))
    assert result.train_s < result.wall_time_s
    assert TrainResult.from_json(json.loads((tmp_path / "final.json").read_text())) == result
    assert result.top1_best == max(r.val_top1 for r in records)
    assert records[result.top1_best_epoch - 1].val_top1 == result.top1_best
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    # What a caller publishes: the final weights, and the last and the best epoch's predictions.
    weights_file = load_file(tmp_path / "weights.safetensors")
    assert weights_file.keys() == model.state_dict().keys()
    assert all(torch.equal(weights_file[k], v) for k, v in model.state_dict().items())
    last, best = read_predictions(tmp_path / "predictions.csv"), read_predictions(tmp_path / "predictions_best.csv")
    assert list(last.index) == list(range(32)) and last.k == CLASSES
    assert last.top1() == pytest.approx(result.top1) and best.top1() == pytest.approx(result.top1_best)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    recipe = MODERN_TINY  # mixup/cutmix (numpy RNG) and dropout (torch RNG) both consume randomness
    train_loader, val_loader = make_loaders()
    whole_model = tiny_model()
    whole = train_and_evaluate(whole_model, recipe, train_loader, val_loader, num_classes=CLASSES,
                               options=TrainOptions(checkpoint_dir=tmp_path / "whole"))

    def crash_after_first_epoch(record: EpochRecord) -> None:
        raise RuntimeError(f"killed after epoch {record.epoch}")

    options = TrainOptions(checkpoint_dir=tmp_path / "crashed")
    train_loader, val_loader = make_loaders()
    with pytest.raises(RuntimeError, match="killed after epoch 1"):
        train_and_evaluate(tiny_model(), recipe, train_loader, val_loader, num_classes=CLASSES,
                           options=options, on_epoch=crash_after_first_epoch)
    assert not (tmp_path / "crashed" / "final.json").exists()

    seen = []
    train_loader, val_loader = make_loaders()
    resumed_model = tiny_model()
    resumed = train_and_evaluate(resumed_model, recipe, train_loader, val_loader, num_classes=CLASSES,
                                 options=options, on_epoch=seen.append)
    assert resumed.resumed_from_epoch == 1 and [r.epoch for r in seen] == [2, 3]
    assert resumed.epochs_completed == 3
    for key in ("top1", "top5", "train_loss"):
        assert getattr(resumed, key) == getattr(whole, key), key
    timings = {"train_img_per_s": 0.0, "train_s": 0.0, "data_wait_s": 0.0}  # they differ from run to run
    assert [dataclasses.replace(r, **timings) for r in resumed.history] == [
        dataclasses.replace(r, **timings) for r in whole.history]
    for name, tensor in weights(whole_model).items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name


def test_resume_is_exact_with_the_real_data_pipeline(tmp_path):
    # roadmap.data's loaders: synthetic images, RandAugment + random erasing, a persistent worker.
    from roadmap.data import build_datasets, build_loaders
    from roadmap.spec import DataSpec

    recipe = recipe_for(MODERN, epochs=2, batch=8)
    datasets = build_datasets(DataSpec(image_size=8, num_classes=CLASSES, train_size=32, val_size=16), recipe)

    def run(folder: str, on_epoch=None) -> tuple[TrainResult, nn.Module]:
        model = tiny_model()
        loaders = build_loaders(datasets, 8, workers=1, seed=0)
        result = train_and_evaluate(model, recipe, *loaders, num_classes=CLASSES,
                                    options=TrainOptions(checkpoint_dir=tmp_path / folder), on_epoch=on_epoch)
        return result, model

    def crash(record: EpochRecord) -> None:
        raise RuntimeError("killed")

    whole, whole_model = run("whole")
    with pytest.raises(RuntimeError):
        run("crashed", crash)
    resumed, resumed_model = run("crashed")
    assert resumed.resumed_from_epoch == 1
    assert (resumed.train_loss, resumed.top1) == (whole.train_loss, whole.top1)
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name


def test_final_json_makes_a_rerun_skip(tmp_path):
    train_loader, val_loader = make_loaders()
    options = TrainOptions(checkpoint_dir=tmp_path)
    first = train_and_evaluate(tiny_model(), CLASSIC_TINY, train_loader, val_loader, num_classes=CLASSES,
                               options=options)
    model, seen = tiny_model(), []
    before = weights(model)
    again = train_and_evaluate(model, CLASSIC_TINY, train_loader, val_loader, num_classes=CLASSES,
                               options=options, on_epoch=seen.append)
    assert again == first and seen == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not trained again


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train_loader, val_loader = make_loaders()  # 4 batches per epoch
    seen = []
    result = train_and_evaluate(DivergesAfter(6), CLASSIC_TINY, train_loader, val_loader, num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=tmp_path), on_epoch=seen.append)
    assert result.status == "diverged"
    assert result.reason == "non-finite loss nan at epoch 2, iteration 3 of 4"
    assert result.epochs_completed == 1 and [r.epoch for r in seen] == [1]
    assert math.isnan(result.top1) and math.isnan(result.train_loss)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert json.loads((tmp_path / "final.json").read_text())["status"] == "diverged"


def test_huge_learning_rate_diverges(tmp_path):
    train_loader, val_loader = make_loaders()
    recipe = recipe_for(CLASSIC, lr=1e30)
    result = train_and_evaluate(tiny_model(), recipe, train_loader, val_loader, num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=tmp_path))
    assert result.status == "diverged" and "epoch 1, iteration" in result.reason
    assert not (tmp_path / "last.pt").exists()


def test_effective_batch_must_match_the_recipe(tmp_path):
    train_loader, val_loader = make_loaders(batch=8)
    with pytest.raises(SpecError, match=r"8 per process x 1 processes x 1 accumulation steps = 8 does not match"):
        train_and_evaluate(tiny_model(), CLASSIC_TINY, train_loader, val_loader, num_classes=CLASSES,
                           options=TrainOptions(checkpoint_dir=tmp_path))
    odd_loaders = make_loaders(batch=7)
    with pytest.raises(SpecError, match="even batch"):
        train_and_evaluate(tiny_model(), recipe_for(MODERN, batch=7), *odd_loaders, num_classes=CLASSES,
                           options=TrainOptions(checkpoint_dir=tmp_path))
    assert not any(tmp_path.iterdir())


def test_accumulation_equals_one_big_batch(tmp_path):
    # No BN and no dropout: two micro-batches of 8 then are the same optimizer step as one batch of 16.
    recipe = recipe_for(CLASSIC, epochs=2)
    big, micro = tiny_model(batchnorm=False, dropout=0.0), tiny_model(batchnorm=False, dropout=0.0)
    train_and_evaluate(big, recipe, *make_loaders(batch=16), num_classes=CLASSES,
                       options=TrainOptions(checkpoint_dir=tmp_path / "big"))
    train_and_evaluate(micro, recipe, *make_loaders(batch=8), num_classes=CLASSES,
                       options=TrainOptions(checkpoint_dir=tmp_path / "micro", accumulation_steps=2))
    for name, tensor in big.state_dict().items():
        torch.testing.assert_close(micro.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_zero_epochs_only_evaluates(tmp_path):
    train_loader, val_loader = make_loaders()
    model, seen = tiny_model(), []
    before = weights(model)
    options = TrainOptions(checkpoint_dir=tmp_path)
    result = train_and_evaluate(model, recipe_for(CLASSIC, epochs=0), train_loader, val_loader,
                                num_classes=CLASSES, options=options, on_epoch=seen.append)
    assert result.status == "finished" and result.epochs_completed == 0 and result.history == ()
    assert seen == [] and math.isnan(result.train_loss)
    assert result.top1 == evaluate(model, val_loader, num_classes=CLASSES, options=options).top1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_top5_with_two_classes_is_top2(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    val_loader = DataLoader(TensorDataset(torch.randn(10, 3, 8, 8), torch.arange(10) % 2), batch_size=4)
    scores = evaluate(model, val_loader, num_classes=2, options=TrainOptions(checkpoint_dir=tmp_path))
    assert scores.top5 == 100.0 and 0 <= scores.top1 <= 100


def test_bf16_and_channels_last_run_on_the_cpu(tmp_path):
    options = TrainOptions(checkpoint_dir=tmp_path, precision="bf16", channels_last=True)
    result = train_and_evaluate(tiny_model(), recipe_for(MODERN, epochs=1, lr=0.01), *make_loaders(),
                                num_classes=CLASSES, options=options)
    assert result.status == "finished" and math.isfinite(result.train_loss)


@pytest.mark.slow  # inductor compiles C++ kernels for the CPU: about a minute
def test_compiled_training_matches_eager_and_checkpoints_plain_weights(tmp_path):
    results, models = {}, {}
    for compiled in (False, True):
        models[compiled] = tiny_model(dropout=0.0)
        options = TrainOptions(checkpoint_dir=tmp_path / str(compiled), compile=compiled)
        results[compiled] = train_and_evaluate(models[compiled], recipe_for(CLASSIC, epochs=1), *make_loaders(),
                                               num_classes=CLASSES, options=options)
    assert results[True].status == "finished"
    assert results[True].train_loss == pytest.approx(results[False].train_loss, rel=1e-4)
    saved = load_checkpoint(tmp_path / "True" / "last.pt")["model"]
    assert set(saved) == set(models[False].state_dict())  # no "_orig_mod." prefix: loads into an eager model


@pytest.mark.parametrize(("changes", "message"), [
    ({"precision": "fp16"}, "precision='fp16' is not valid; choose one of: fp32, bf16"),
    ({"device": "tpu"}, "device='tpu' is not valid; choose one of: cpu, cuda"),
    ({"accumulation_steps": 0}, "accumulation_steps=0 is not valid; a whole number >= 1"),
])
def test_bad_options_are_one_line_spec_errors(changes, message, tmp_path):
    with pytest.raises(SpecError) as error:
        TrainOptions(checkpoint_dir=tmp_path, **changes)
    assert str(error.value) == message


def test_a_checkpoint_from_another_recipe_is_refused(tmp_path):
    train_loader, val_loader = make_loaders()

    def stop(record: EpochRecord) -> None:
        raise RuntimeError("stop")

    options = TrainOptions(checkpoint_dir=tmp_path)
    with pytest.raises(RuntimeError):
        train_and_evaluate(tiny_model(), CLASSIC_TINY, train_loader, val_loader, num_classes=CLASSES,
                           options=options, on_epoch=stop)
    with pytest.raises(SpecError, match="remove it or choose another checkpoint_dir"):
        train_and_evaluate(tiny_model(), MODERN_TINY, train_loader, val_loader, num_classes=CLASSES,
                           options=options)


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    save_json({"top1": 1.0}, tmp_path / "final.json")

    def crash_mid_write(state, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("roadmap.training.checkpoint.torch.save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt") == {"epoch": 1}
    assert load_json(tmp_path / "final.json") == {"top1": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.json", "last.pt"]  # no temporary file left


DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_engine import MODERN_TINY, CLASSES, make_loaders, tiny_model
    from torch.utils.data import DataLoader, DistributedSampler
    from roadmap.data import ShardSampler
    from roadmap.training import distributed
    from roadmap.training.engine import TrainOptions, train_and_evaluate

    world = distributed.init_distributed("cpu")
    train_loader, val_loader = make_loaders(batch=8)
    sampler = DistributedSampler(train_loader.dataset, num_replicas=world.world_size, rank=world.rank,
                                 shuffle=True, seed=0, drop_last=True)
    train_loader = DataLoader(train_loader.dataset, batch_size=8, sampler=sampler, drop_last=True)
    shard = ShardSampler(len(val_loader.dataset), world.rank, world.world_size)
    val_loader = DataLoader(val_loader.dataset, batch_size=16, sampler=shard)
    result = train_and_evaluate(tiny_model(), MODERN_TINY, train_loader, val_loader, num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=Path(sys.argv[1]), world=world))
    Path(sys.argv[1], f"rank{world.rank}.json").write_text(json.dumps(result.to_json()))
    distributed.cleanup()
""")


@pytest.mark.slow
def test_two_cpu_processes_with_gloo(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(tmp_path / "run"), str(Path(__file__).parent)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = TrainResult.from_json(json.loads((tmp_path / "run" / "rank0.json").read_text()))
    rank1 = TrainResult.from_json(json.loads((tmp_path / "run" / "rank1.json").read_text()))
    assert rank0.status == "finished" and rank0.epochs_completed == 3
    assert rank0.top1 == rank1.top1 and rank0.history[-1].lr == rank1.history[-1].lr
    assert rank0.top1 >= 80.0
    assert json.loads((tmp_path / "run" / "final.json").read_text())["top1"] == rank0.top1
    predictions = read_predictions(tmp_path / "run" / "predictions.csv")  # gathered from both processes
    assert list(predictions.index) == list(range(32)) and predictions.top1() == rank0.top1


def test_the_time_spent_waiting_for_batches_is_measured(tmp_path):
    train_loader, val_loader = make_loaders()
    slow = SlowBatches(train_loader, delay=0.02)
    result = train_and_evaluate(tiny_model(), recipe_for(CLASSIC, epochs=1), slow, val_loader, num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=tmp_path))
    assert result.data_wait_s >= 0.02 * len(train_loader)
    assert result.data_wait_s < result.train_s


def test_wait_timer_counts_only_the_time_inside_next():
    def three_items():
        for item in range(3):
            time.sleep(0.01)
            yield item

    timer = WaitTimer(three_items())
    for _ in timer:
        time.sleep(0.1)  # the consumer's own work is not waiting
    assert 0.03 <= timer.seconds < 0.2
