"""Trained networks back from a run (MLflow, folder, file), their export to timm / torchvision, and torch.hub."""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from helpers import TOLERANCE, max_logit_diff, param_count, randomize_
from safetensors.torch import save_file

import roadmap
from roadmap import build_model, list_roadmaps, load_roadmap
from roadmap.errors import SpecError
from roadmap.export import export_trained, main
from roadmap.models.network import RoadmapNet
from roadmap.schema import Artifact, Status, Tag, checkpoint_folder
from roadmap.spec import DataSpec, to_dict
from roadmap.trained import TrainedModel, load_trained
from roadmap.training.checkpoint import save_checkpoint, save_json
from roadmap.training.result import EpochRecord, TrainResult

REPO = Path(__file__).resolve().parent.parent
ROADMAP = "resnet50_to_convnext_t"
SMOKE_WIDTH = 0.125  # the smoke preset's width multiplier (images of 32 px)
CLASSES = 10
IMAGES = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(7))
LABELS = torch.arange(16) % CLASSES


def arch_of(step: str, width: float = 1.0, name: str = ROADMAP):
    return dataclasses.replace(load_roadmap(name).step(step).arch, width_multiplier=width)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IMAGES)


def save_run(root: Path, step: str, seed: int = 0) -> SimpleNamespace:
    """A finished smoke-scale run's checkpoint folder, written as the study writes it, from a model built here."""
    torch.manual_seed(seed)
    model = randomize_(build_model(arch_of(step, SMOKE_WIDTH), CLASSES), seed=seed).eval()
    top1 = 100 * (logits(model).argmax(1) == LABELS).float().mean().item()
    best = top1 + 12.5  # an earlier, better epoch: top1 and top1_best must not be confused
    record = dict(train_loss=1.0, lr=0.1, val_top5=50.0, train_img_per_s=1.0, train_s=1.0, data_wait_s=0.0)
    history = (EpochRecord(epoch=1, val_top1=best, **record), EpochRecord(epoch=2, val_top1=top1, **record))
    result = TrainResult(status=Status.FINISHED, reason="", history=history, resumed_from_epoch=0, top1=top1,
                         top5=50.0, train_loss=1.0, eval_img_per_s=1.0, peak_memory_mb=1.0, wall_time_s=1.0)
    config = {"roadmap": ROADMAP, "step": step, "preset": "smoke", "arch": to_dict(model.arch),
              "recipe": to_dict(load_roadmap(ROADMAP).step(step).recipe), "data": to_dict(DataSpec(image_size=32)),
              "precision": "fp32"}
    folder = checkpoint_folder(root / "checkpoints", "study", f"hash{seed}-{step}", seed)
    folder.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(folder / Artifact.WEIGHTS))
    save_json(config, folder / Artifact.CONFIG)
    save_json(result.to_json(), folder / "final.json")
    save_checkpoint({"model": model.state_dict(), "optimizer": {}, "epoch": 2,
                     "history": [vars(r) for r in history]}, folder / "last.pt")
    return SimpleNamespace(model=model, folder=folder, config=config, result=result, top1=top1, best=best)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """kernel_7 tracked in MLflow with its weights; a run without weights; separate_downsampling as a folder."""
    from roadmap.tracking import Tracker

    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "study")
    kernel_7 = save_run(root, "kernel_7")
    with tracker.step_run("kernel_7", 0, "hash0", params={}, tags={Tag.ROADMAP: ROADMAP},
                          config=kernel_7.config) as run:
        run.log_final(kernel_7.result.final_metrics(), Status.FINISHED)
        run.log_artifact(kernel_7.folder / Artifact.WEIGHTS)
    with tracker.step_run("kernel_7", 1, "hash1", params={}, tags={Tag.ROADMAP: ROADMAP},
                          config=kernel_7.config) as bare:
        bare.log_final(kernel_7.result.final_metrics(), Status.FINISHED)
    return SimpleNamespace(root=root, uri=uri, run_id=run.run_id, bare_run_id=bare.run_id, kernel_7=kernel_7,
                           convnext=save_run(root, "separate_downsampling", seed=2))


def test_the_package_exposes_load_trained():
    assert roadmap.load_trained is load_trained and roadmap.TrainedModel is TrainedModel


def test_a_run_uri_gives_the_saved_network_and_its_logged_accuracy(study):
    trained = load_trained(f"runs:/{study.run_id}", tracking_uri=study.uri)
    saved = study.kernel_7
    assert isinstance(trained.model, RoadmapNet) and not trained.model.training
    assert torch.equal(logits(trained.model), logits(saved.model))
    assert (trained.step, trained.roadmap, trained.num_classes) == ("kernel_7", ROADMAP, CLASSES)
    assert trained.arch == saved.model.arch
    assert (trained.top1, trained.top1_best) == (pytest.approx(saved.top1), pytest.approx(saved.best))
    assert trained.source == f"runs:/{study.run_id}"


def test_the_tracking_uri_defaults_to_the_environment(study, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no mlflow.db here: only $MLFLOW_TRACKING_URI can find the run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", study.uri)
    assert torch.equal(logits(load_trained(f"runs:/{study.run_id}").model), logits(study.kernel_7.model))
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("form", ["folder", "weights", "last.pt", "file-uri"])
def test_a_folder_or_file_gives_the_same_network(study, form):
    saved = study.kernel_7
    source = {"folder": saved.folder, "weights": saved.folder / Artifact.WEIGHTS,
              "last.pt": saved.folder / "last.pt", "file-uri": (saved.folder / Artifact.WEIGHTS).as_uri()}[form]
    trained = load_trained(source)
    assert not trained.model.training
    assert torch.equal(logits(trained.model), logits(saved.model))
    assert (trained.step, trained.roadmap, trained.num_classes) == ("kernel_7", ROADMAP, CLASSES)
    assert (trained.top1, trained.top1_best) == (pytest.approx(saved.top1), pytest.approx(saved.best))


def test_a_folder_without_accuracy_gives_nan(study, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(study.kernel_7.folder, folder)
    (folder / "final.json").unlink()
    trained = load_trained(folder)
    assert math.isnan(trained.top1) and math.isnan(trained.top1_best)


def broken_folder(study, tmp_path: Path, what: str) -> Path:
    folder = tmp_path / what
    shutil.copytree(study.kernel_7.folder, folder)
    if what == "no-config":
        (folder / Artifact.CONFIG).unlink()
        return folder / Artifact.WEIGHTS
    config = dict(study.kernel_7.config, arch={**study.kernel_7.config["arch"], "kernel_size": 5})
    save_json(config, folder / Artifact.CONFIG)
    return folder


@pytest.mark.parametrize(("source", "words"), [
    ("runs:/0123456789abcdef", ["0123456789abcdef", "cannot be read"]),
    ("runs:/{bare}", ["weights.safetensors", "finished"]),
    ("runs:/", ["runs:/<run id>"]),
    ("models:/kernel_7/1", ["models:/kernel_7/1", "runs:/<run id>"]),
    ("{tmp}/nowhere", ["does not exist"]),
    ("no-config", ["config.json is missing"]),
    ("misfit", ["do not fit", "misshapen", "(12, 1, 7, 7) (needs (12, 1, 5, 5))"]),
])
def test_load_errors_are_one_line(study, tmp_path, source, words):
    if source in ("no-config", "misfit"):
        source = str(broken_folder(study, tmp_path, source))
    source = source.format(bare=study.bare_run_id, tmp=tmp_path)
    with pytest.raises(SpecError) as error:
        load_trained(source, tracking_uri=study.uri)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(SpecError, match="does not exist"):
        load_trained("runs:/0123456789abcdef", tracking_uri=uri)
    assert not (tmp_path / "absent.db").exists()


def trained_of(step: str, width: float = 1.0) -> TrainedModel:
    model = randomize_(build_model(arch_of(step, width), CLASSES)).eval()
    return TrainedModel(model=model, arch=model.arch, num_classes=CLASSES, step=step, roadmap=ROADMAP,
                        top1=math.nan, top1_best=math.nan, source=f"{step}-folder")


@pytest.mark.parametrize(("step", "library", "reference"), [
    ("separate_downsampling", "timm", lambda: timm.create_model("convnext_tiny", num_classes=CLASSES)),
    ("separate_downsampling", "torchvision", lambda: torchvision.models.convnext_tiny(num_classes=CLASSES)),
    ("resnet50", "torchvision", lambda: torchvision.models.resnet50(num_classes=CLASSES)),
    ("resnet50", "timm", lambda: timm.create_model("resnet50", num_classes=CLASSES)),
])
def test_a_reference_step_exports_into_its_library(step, library, reference):
    trained = trained_of(step)
    state_dict, call = export_trained(trained, library)
    model = reference()
    model.load_state_dict(state_dict, strict=True)
    assert max_logit_diff(trained.model, model) <= TOLERANCE
    assert call.startswith("timm.create_model(" if library == "timm" else "torchvision.models.get_model(")
    assert f"num_classes={CLASSES}" in call


def test_a_width_scaled_convnext_exports_into_timm_with_its_dims(study):
    trained = load_trained(study.convnext.folder)
    state_dict, call = export_trained(trained, "timm")
    assert call == f"timm.create_model('convnext_tiny', dims=(12, 24, 48, 96), num_classes={CLASSES})"
    model = eval(call, {"timm": timm}).eval()
    model.load_state_dict(state_dict, strict=True)
    assert max_logit_diff(study.convnext.model, model) <= TOLERANCE
    with pytest.raises(SpecError, match="hard-code the widths.*--to timm") as error:
        export_trained(trained, "torchvision")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_a_step_that_no_library_has_names_the_steps_that_are(study, library):
    with pytest.raises(SpecError) as error:
        export_trained(load_trained(study.kernel_7.folder), library)
    message = str(error.value)
    assert "\n" not in message and "'kernel_7'" in message and "load_trained" in message
    assert "resnet50, separate_downsampling (resnet50_to_convnext_t)" in message
    assert ("resnet200, separate_downsampling" if library == "timm" else "separate_downsampling (resnet200") in message


def test_the_hub_builds_each_step_network():
    model = torch.hub.load(str(REPO), "kernel_7", source="local")
    assert isinstance(model, RoadmapNet)
    assert param_count(model) == param_count(build_model(load_roadmap(ROADMAP).step("kernel_7").arch))
    other = torch.hub.load(str(REPO), "modern_recipe", source="local", roadmap="resnet200_to_convnext_b",
                           width_multiplier=SMOKE_WIDTH, num_classes=3)
    assert other.arch == arch_of("modern_recipe", SMOKE_WIDTH, "resnet200_to_convnext_b")
    assert other.head.fc.out_features == 3
    only_there = torch.hub.load(str(REPO), "width_128", source="local", width_multiplier=SMOKE_WIDTH)
    assert only_there.arch == arch_of("width_128", SMOKE_WIDTH, "resnet200_to_convnext_b")


def test_the_hub_returns_a_trained_network(study):
    model = torch.hub.load(str(REPO), "kernel_7", source="local", weights=f"runs:/{study.run_id}",
                           tracking_uri=study.uri)
    assert not model.training and torch.equal(logits(model), logits(study.kernel_7.model))
    with pytest.raises(SpecError, match="step='kernel_5' is not valid") as error:
        torch.hub.load(str(REPO), "kernel_5", source="local", weights=study.kernel_7.folder)
    assert "\n" not in str(error.value)


def test_the_hub_lists_every_step_of_every_roadmap():
    if "source" in inspect.signature(torch.hub.list).parameters:
        entries = torch.hub.list(str(REPO), source="local")
    else:  # torch 2.14's hub.list reads GitHub only; this is what it does with the hubconf it imports
        spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entries = [name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")]
        assert all(getattr(module, name).__doc__ for name in entries)
    steps = {step.name for name in list_roadmaps() for step in load_roadmap(name).steps}
    assert {"resnet200", "width_128", "width_96", "kernel_7"} <= steps
    assert sorted(entries) == sorted(steps)


def test_the_export_command_writes_a_loadable_state_dict(study, tmp_path):
    out = tmp_path / "x.pt"
    done = subprocess.run([sys.executable, "-m", "roadmap.export", str(study.convnext.folder), "--to", "timm",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    call = next(line.split("model = ", 1)[1] for line in done.stdout.splitlines() if "model = " in line)
    model = eval(call, {"timm": timm}).eval()
    model.load_state_dict(torch.load(out), strict=True)
    assert max_logit_diff(study.convnext.model, model) <= TOLERANCE


@pytest.mark.parametrize(("args", "words"), [
    (["--to", "keras"], ["--to", "keras"]),
    (["--to", "timm"], ["'kernel_7'", "separate_downsampling"]),
])
def test_export_command_errors_are_one_line_with_exit_code_2(study, tmp_path, args, words):
    result = CliRunner().invoke(main, [str(study.kernel_7.folder), *args, "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.stderr
    assert not (tmp_path / "x.pt").exists()


def test_export_help_explains_every_option():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for option in ("--to", "--out", "--tracking-uri", "timm", "torchvision", "runs:/"):
        assert option in result.output
