"""Every roadmap step as a timm model: registration, timm's model contract, and a study's weights through timm."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from helpers import TOLERANCE, empty, max_logit_diff, randomize_
from safetensors.torch import save_file
from torch import nn

from roadmap import build_model, load_roadmap
from roadmap.interop import export_state_dict
from roadmap.models.network import RoadmapNet, min_input_side, output_side
from roadmap.schema import Artifact, Tag
from roadmap.spec import DataSpec, SpecError, to_dict
from roadmap.timm_models import BUILTIN_ROADMAPS, TimmModelError, register_roadmap, registered, timm_name

R50 = load_roadmap("resnet50_to_convnext_t")
STEPS = [(roadmap, step) for roadmap in BUILTIN_ROADMAPS for step in load_roadmap(roadmap).steps]
SMOKE_WIDTH = 0.125  # the smoke preset's width multiplier (32 px images, 10 classes)
IMAGES = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def small(name: str, **kwargs) -> nn.Module:
    """A registered model at the smoke preset's width: every layer of the full one, at a fraction of the cost."""
    return timm.create_model(name, width_multiplier=SMOKE_WIDTH, **kwargs).eval()


def test_both_roadmaps_register_every_step_under_timm_names():
    expected = {timm_name(BUILTIN_ROADMAPS[roadmap], step.name) for roadmap, step in STEPS}
    assert len(expected) == 34
    assert set(timm.list_models("roadmap_*")) == expected
    assert {name: pair for name, pair in registered().items() if name in expected} == {
        timm_name(BUILTIN_ROADMAPS[roadmap], step.name): (roadmap, step.name) for roadmap, step in STEPS}


@pytest.mark.parametrize("roadmap, step", STEPS, ids=[timm_name(BUILTIN_ROADMAPS[r], s.name) for r, s in STEPS])
def test_create_model_builds_the_step_at_full_size(roadmap, step):
    with torch.device("meta"):  # shapes only: the 34 full-size networks would take minutes to initialize
        model = timm.create_model(timm_name(BUILTIN_ROADMAPS[roadmap], step.name), num_classes=10)
    assert isinstance(model, RoadmapNet) and model.arch == step.arch
    assert model.get_classifier().out_features == model.num_classes == 10
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000
    assert cfg["pool_size"] == (output_side(step.arch, 224),) * 2 and cfg["min_input_size"] == (3, 32, 32)
    assert cfg["interpolation"] == step.recipe.interpolation and cfg["crop_pct"] == step.recipe.eval_crop_pct
    assert f"{cfg['first_conv']}.weight" in model.state_dict() and f"{cfg['classifier']}.weight" in model.state_dict()


def test_features_only_gives_each_stage_at_strides_4_to_32():
    model = timm.create_model("roadmap_r50_move_up_dwconv", features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [96, 192, 384, 768]
    with torch.no_grad():
        maps = model(IMAGES)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // r, 96 // r) for c, r in zip([96, 192, 384, 768],
                                                                                       [4, 8, 16, 32])]
    picked = timm.create_model("roadmap_r50_move_up_dwconv", features_only=True, out_indices=(1, 3))
    assert picked.feature_info.reduction() == [8, 32]


@pytest.mark.parametrize("step", ["resnet50", "move_up_dwconv", "separate_downsampling"])
def test_the_last_stage_feature_is_forward_features(step):
    """features_only taps the very stages forward_features runs (same seed, same weights, same maps)."""
    torch.manual_seed(0)
    model = small(f"roadmap_r50_{step}")
    torch.manual_seed(0)
    features = small(f"roadmap_r50_{step}", features_only=True)
    with torch.no_grad():
        assert torch.equal(features(IMAGES)[-1], model.forward_features(IMAGES))


@pytest.mark.parametrize("step", ["resnet50", "move_up_dwconv", "separate_downsampling"])
def test_forward_is_forward_head_of_forward_features(step):
    model = small(f"roadmap_r50_{step}", num_classes=7)
    with torch.no_grad():
        features = model.forward_features(IMAGES)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(IMAGES)
    assert pooled.shape == (2, model.head_hidden_size) and model.head_hidden_size == model.num_features
    assert torch.equal(logits, model.forward_head(features)) and logits.shape == (2, 7)
    assert torch.allclose(logits, model.get_classifier()(pooled), atol=1e-6)


@pytest.mark.parametrize("step", ["resnet50", "separate_downsampling"])
def test_reset_classifier_changes_the_classes_and_the_pooling(step):
    model = small(f"roadmap_r50_{step}")
    with torch.no_grad():
        features = model.forward_features(IMAGES)
        pooled = model.forward_head(features, pre_logits=True)
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(model(IMAGES), pooled)
        model.reset_classifier(5)
        assert model(IMAGES).shape == (2, 5) and model.get_classifier().out_features == 5
        model.reset_classifier(0, "")  # no pooling: the (head-normed) map itself
        assert model(IMAGES).shape == features.shape
        model.reset_classifier(3, "max")
        assert not torch.allclose(model.forward_head(features, pre_logits=True), pooled)


def test_num_classes_0_and_no_global_pool_in_the_constructor():
    pooled = small("roadmap_r50_kernel_7", num_classes=0)
    unpooled = small("roadmap_r50_kernel_7", num_classes=0, global_pool="")
    with torch.no_grad():
        assert pooled(IMAGES).shape == (2, pooled.num_features)
        assert unpooled(IMAGES).shape == unpooled.forward_features(IMAGES).shape


def test_unknown_keywords_raise_and_bad_widths_name_the_flag():
    with pytest.raises(TypeError):
        timm.create_model("roadmap_r50_kernel_7", not_a_model_arg=1)
    with pytest.raises(SpecError, match="width_multiplier=-1"):
        timm.create_model("roadmap_r50_kernel_7", width_multiplier=-1)


@pytest.mark.parametrize("name, reference, interop", [("roadmap_r50_resnet50", "resnet50", "timm.resnet"),
                                                     ("roadmap_r50_separate_downsampling", "convnext_tiny",
                                                      "timm.convnext")])
def test_the_end_points_exchange_weights_with_timms_own_models(name, reference, interop):
    ours = randomize_(empty(lambda: timm.create_model(name)))
    theirs = empty(lambda: timm.create_model(reference))
    theirs.load_state_dict(export_state_dict(ours, interop), strict=True)
    assert max_logit_diff(ours, theirs) <= TOLERANCE


@pytest.mark.parametrize("step", ["resnet50", "separate_downsampling"])
def test_torchscript_gives_the_same_logits(step):
    model = small(f"roadmap_r50_{step}")
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(IMAGES), model(IMAGES), atol=1e-5)


def test_in_chans_and_drop_path_rate_reach_the_network():
    model = small("roadmap_r50_kernel_7", in_chans=1, drop_path_rate=0.3)
    assert model.stem.conv.in_channels == 1 and model.in_chans == 1 and model.arch.drop_path_rate == 0.3
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1000)


@pytest.mark.parametrize("step, side", [("resnet50", 224), ("resnet50", 97), ("separate_downsampling", 224),
                                        ("separate_downsampling", 100), ("kernel_7", 61)])
def test_output_side_is_the_forward_features_side(step, side):
    arch = R50.step(step).arch
    with torch.device("meta"):
        model = build_model(arch).eval()
    assert model.forward_features(torch.empty(1, 3, side, side, device="meta")).shape[-1] == output_side(arch, side)
    smallest = min_input_side(arch)
    assert model.forward_features(torch.empty(1, 3, smallest, smallest, device="meta")).shape[-1] == 1


# ---------------------------------------------------------------------------------- a roadmap of one's own


def tiny_roadmap(root: Path, name: str = "tiny_roadmap") -> Path:
    """A copy of the ResNet-50 roadmap's first three steps with C = 4 and one block per stage to begin with."""
    folder = root / name
    folder.mkdir(parents=True)
    for path in sorted(R50.path.glob("0[0-2]_*.toml")):
        shutil.copy(path, folder / path.name)
    base = folder / "00_resnet50.toml"
    text = re.sub(r"(?m)^base_width\s*=.*$", "base_width = 4", base.read_text())
    base.write_text(re.sub(r"(?m)^depths\s*=.*$", "depths = [1, 1, 1, 1]", text))
    return root


def test_a_roadmap_folder_of_ones_own_registers_with_one_call(tmp_path):
    steps_dir = tiny_roadmap(tmp_path)
    names = register_roadmap("tiny_roadmap", steps_dir, short_name="tiny")
    assert names == ["roadmap_tiny_resnet50", "roadmap_tiny_modern_recipe", "roadmap_tiny_stage_ratio"]
    assert set(timm.list_models("roadmap_tiny_*")) == set(names)
    model = timm.create_model("roadmap_tiny_resnet50", num_classes=3)
    assert model.arch.base_width == 4 and model.arch.depths == (1, 1, 1, 1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # registering again replaces, silently
        assert register_roadmap("tiny_roadmap", steps_dir, short_name="tiny") == names


@pytest.mark.parametrize("short_name", ["Tiny", "tiny-roadmap", "_tiny", ""])
def test_a_bad_short_name_is_one_line(tmp_path, short_name):
    with pytest.raises(TimmModelError, match="short_name=.*lowercase letters and digits"):
        register_roadmap("tiny_roadmap", tiny_roadmap(tmp_path), short_name=short_name)


def test_a_step_name_timm_cannot_take_is_one_line(tmp_path):
    steps_dir = tiny_roadmap(tmp_path)
    (steps_dir / "tiny_roadmap" / "03_Kernel_7.toml").write_text(
        'name = "Kernel_7"\ngroup = "g"\nadopted = true\n[arch]\nkernel_size = 7\n')
    with pytest.raises(TimmModelError, match=r"03_Kernel_7.toml: step name 'Kernel_7' cannot be part of a timm name"):
        register_roadmap("tiny_roadmap", steps_dir, short_name="tiny2")


def test_a_name_timm_already_has_is_refused(tmp_path, monkeypatch):
    import roadmap.timm_models as timm_models

    monkeypatch.setattr(timm_models, "is_model", lambda name: name == "roadmap_taken_stage_ratio")
    with pytest.raises(TimmModelError, match="'roadmap_taken_stage_ratio' is already a timm model"):
        register_roadmap("tiny_roadmap", tiny_roadmap(tmp_path), short_name="taken")


# ------------------------------------------------------------------------- a study's weights through timm


def save_run(root: Path, step: str, seed: int = 0) -> SimpleNamespace:
    """A smoke-scale run's checkpoint folder as a study writes it: weights.safetensors and config.json."""
    roadmap_step = R50.step(step)
    arch = dataclasses.replace(roadmap_step.arch, width_multiplier=SMOKE_WIDTH)
    model = randomize_(build_model(arch, 10), seed=seed).eval()
    folder = root / f"{step}-seed{seed}"
    folder.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(folder / Artifact.WEIGHTS))
    config = {"roadmap": R50.name, "step": step, "preset": "smoke", "arch": to_dict(arch),
              "recipe": to_dict(roadmap_step.recipe), "data": to_dict(DataSpec(image_size=48)), "precision": "fp32"}
    (folder / Artifact.CONFIG).write_text(json.dumps(config))
    return SimpleNamespace(model=model, folder=folder, weights=folder / Artifact.WEIGHTS, config=config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kernel_7 and resnet50 saved as checkpoint folders."""
    root = tmp_path_factory.mktemp("runs")
    return SimpleNamespace(kernel_7=save_run(root, "kernel_7"), resnet50=save_run(root, "resnet50", seed=1))


@pytest.fixture(scope="module")
def tracked(runs, tmp_path_factory):
    """kernel_7's run in MLflow, with its weights and config.json as artifacts."""
    from roadmap.tracking import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with Tracker(uri, "study").step_run("kernel_7", 0, "hash0", params={}, tags={Tag.ROADMAP: R50.name},
                                        config=runs.kernel_7.config) as run:
        run.log_artifact(runs.kernel_7.weights)
    return SimpleNamespace(uri=uri, run_id=run.run_id)


def same_logits(model: nn.Module, reference: nn.Module) -> bool:
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(model.eval()(images), reference.eval()(images))


def test_pretrained_file_loads_the_runs_network_and_its_evaluation(runs):
    model = timm.create_model("roadmap_r50_kernel_7", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(runs.kernel_7.weights)))
    assert model.arch == runs.kernel_7.model.arch and model.num_classes == 10
    assert same_logits(model, runs.kernel_7.model)
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (3, 48, 48) and data["interpolation"] == "bicubic"
    assert data["crop_pct"] == runs.kernel_7.config["recipe"]["eval_crop_pct"]
    assert model.pretrained_cfg["pool_size"] == (2, 2) and model.pretrained_cfg["file"] == str(runs.kernel_7.weights)
    assert "state_dict" not in model.pretrained_cfg


def test_a_run_uri_loads_through_load_trained(runs, tracked, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    model = timm.create_model("roadmap_r50_kernel_7", pretrained=True, tracking_uri=tracked.uri,
                              pretrained_cfg_overlay=dict(file=f"runs:/{tracked.run_id}"))
    assert same_logits(model, runs.kernel_7.model)
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 48, 48)


def test_new_classes_keep_every_weight_but_the_classifier(runs):
    model = timm.create_model("roadmap_r50_resnet50", pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(runs.resnet50.folder)))
    trained = runs.resnet50.model.state_dict()
    assert model.get_classifier().out_features == 4
    assert all(torch.equal(tensor, trained[key]) for key, tensor in model.state_dict().items()
               if not key.startswith("head.fc"))
    backbone = timm.create_model("roadmap_r50_resnet50", pretrained=True, features_only=True,
                                 pretrained_cfg_overlay=dict(file=str(runs.resnet50.weights)))
    assert backbone.feature_info.channels() == [32, 64, 128, 256]


@pytest.mark.parametrize("name, keywords, words", [
    ("roadmap_r50_resnet50", {}, "step 'kernel_7' .* create it as 'roadmap_r50_kernel_7'"),
    ("roadmap_r50_kernel_7", {"width_multiplier": 1.0}, "width_multiplier=1.0 is not valid .* 0.125"),
])
def test_weights_of_another_step_or_width_are_one_line(runs, name, keywords, words):
    with pytest.raises(TimmModelError, match=words):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(runs.kernel_7.weights)),
                          **keywords)


def test_a_file_without_config_loads_as_timm_loads_any_weights(tmp_path):
    steps_dir = tiny_roadmap(tmp_path)
    register_roadmap("tiny_roadmap", steps_dir, short_name="tiny")
    trained = randomize_(timm.create_model("roadmap_tiny_stage_ratio"))
    save_file({key: value.contiguous() for key, value in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = timm.create_model("roadmap_tiny_stage_ratio", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert same_logits(model, trained) and model.pretrained_cfg["input_size"] == (3, 224, 224)


def test_no_weights_is_timms_own_error():
    with pytest.raises(RuntimeError, match="No pretrained weights exist for roadmap_r50_kernel_7"):
        timm.create_model("roadmap_r50_kernel_7", pretrained=True, width_multiplier=SMOKE_WIDTH)


# ------------------------------------------------------------------ a trained step, validated timm's way


def validate(model: nn.Module, folder: Path) -> tuple[float, dict[int, int]]:
    """Top-1 (%) as timm's validate.py measures it (its dataset, its loader and transforms from the model's
    pretrained cfg, its accuracy; CPU, batch 16, fp32), and the predicted class of each image by its index."""
    config = timm.data.resolve_data_config(model=model)
    dataset = timm.data.create_dataset("", root=str(folder))
    loader = timm.data.create_loader(dataset, batch_size=16, use_prefetcher=True, num_workers=0,
                                     device=torch.device("cpu"), **config)
    correct, predicted = 0.0, []
    with torch.no_grad():
        for images, targets in loader:
            logits = model.eval()(images)
            correct += timm.utils.accuracy(logits, targets, topk=(1,))[0].item() * len(targets) / 100
            predicted += logits.argmax(1).tolist()
    indices = [int(Path(dataset.filename(i)).stem) for i in range(len(dataset))]
    return 100 * correct / len(dataset), dict(zip(indices, predicted))


def image_folder(config: dict, root: Path) -> Path:
    """The run's validation split, written as PNG files (lossless) in an ImageFolder tree: <class>/<index>.png."""
    from roadmap.data.synthetic import SyntheticImages

    data = DataSpec(**{key: value for key, value in config["data"].items()})
    images = SyntheticImages(data.num_classes, data.val_size, data.image_size, data.generation_seed, "val")
    for index in range(len(images)):
        image, label = images[index]
        (root / f"{label:02d}").mkdir(parents=True, exist_ok=True)
        image.save(root / f"{label:02d}" / f"{index:05d}.png")
    return root


@pytest.mark.slow
def test_a_smoke_trained_step_validates_through_timm_at_its_logged_top1(tmp_path, cli):
    from roadmap.predictions import PREDICTIONS_FILE, read_predictions
    from roadmap.schema import Metric
    from roadmap.tracking import load_step_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = cli("--preset", "smoke", "--upto", "resnet50", "--no-progress", "--tracking-uri", uri,
                 "--checkpoint-dir", str(tmp_path / "ck"), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (run,) = [run for run in load_step_runs(uri, R50.name) if run.tags.get(Tag.STEP) == "resnet50"]
    (weights,) = (tmp_path / "ck").rglob(str(Artifact.WEIGHTS))
    folder = image_folder(json.loads((weights.parent / Artifact.CONFIG).read_text()), tmp_path / "val")
    logged = read_predictions(weights.parent / PREDICTIONS_FILE)  # the run's own top-5 of every image
    for source in (str(weights), f"runs:/{run.run_id}"):
        model = timm.create_model("roadmap_r50_resnet50", pretrained=True, tracking_uri=uri,
                                  pretrained_cfg_overlay=dict(file=source))
        assert model.arch.width_multiplier == SMOKE_WIDTH and model.pretrained_cfg["input_size"] == (3, 32, 32)
        top1, predicted = validate(model, folder)
        assert top1 == pytest.approx(run.metrics[Metric.TOP1], abs=1e-6), source
        assert predicted == dict(zip(logged.index.tolist(), logged.top_k[:, 0].tolist())), source
