"""Every roadmap step as a timm model: `import roadmap.timm_models`, then `timm.create_model("roadmap_r50_kernel_7")`.

Importing this module registers each step of the built-in roadmaps in timm's registry as
`roadmap_r50_<step>` (ResNet-50 -> ConvNeXt-T) and `roadmap_r200_<step>` (ResNet-200 -> ConvNeXt-B), built at
full size; `register_roadmap` registers a roadmap folder of one's own the same way. A study's trained
weights load through timm's own pretrained path:

    timm.create_model("roadmap_r50_kernel_7", pretrained=True,
                      pretrained_cfg_overlay=dict(file="<checkpoint folder>/weights.safetensors"))

with `file` a weights.safetensors or last.pt with the run's config.json beside it, its folder, or
`runs:/<run id>` (read from `tracking_uri=`, else $MLFLOW_TRACKING_URI). The network is then the one the run
trained, whatever its preset's width_multiplier, and the pretrained cfg says how the run evaluated: its
image size, crop and interpolation, its number of classes. A file without config.json loads, as timm loads
any weights, into the registered full-size network.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model
from torch import nn

from .errors import SpecError
from .models.network import RoadmapNet, min_input_side, output_side
from .schema import Artifact
from .spec import ArchSpec, DataSpec, RecipeSpec, replace_checked
from .steps import Roadmap, Step, load_roadmap
from .trained import TrainedModel, load_trained

__all__ = ["BUILTIN_ROADMAPS", "TimmModelError", "register_roadmap", "registered", "timm_name"]

# Built-in roadmap -> the short name in its timm names (roadmap_<short>_<step>).
BUILTIN_ROADMAPS = {"resnet50_to_convnext_t": "r50", "resnet200_to_convnext_b": "r200"}
# The resolution the paper trains and evaluates every step at (ImageNet-1K, 224 px).
IMAGENET_SIDE = 224
SHORT_NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")
# A whole timm name: no '.', which timm reads as the start of a pretrained tag.
TIMM_NAME = re.compile(r"^[a-z0-9_]+$")
# timm's register_model reads the pretrained cfgs of a module's entry points from its `default_cfgs`.
default_cfgs: dict[str, Any] = {}
# timm name -> (roadmap, step name), for every name this module registered.
_REGISTERED: dict[str, tuple[str, str]] = {}


class TimmModelError(SpecError):
    """A timm name, keyword or weights source that does not fit a roadmap step; the message names the valid ones."""


def timm_name(short_name: str, step: str) -> str:
    """'roadmap_r50_kernel_7': the timm name of `step` in the roadmap registered as `short_name`."""
    return f"roadmap_{short_name}_{step}"


def registered() -> dict[str, tuple[str, str]]:
    """Every timm name registered here -> (roadmap, step)."""
    return dict(_REGISTERED)


def register_roadmap(roadmap: str, steps_dir: Path | str | None = None, *, short_name: str | None = None) -> list[str]:
    """Register every step of `roadmap` (a folder of `steps_dir`, default the built-in steps/) with timm.

    Each step becomes `roadmap_<short_name>_<step>` (short_name defaults to the roadmap's folder name).
    Registering a roadmap again replaces its earlier registration. Returns the names, in roadmap order.
    """
    loaded = load_roadmap(roadmap, steps_dir)
    short = short_name if short_name is not None else loaded.name
    if not SHORT_NAME.match(short):
        raise TimmModelError(f"short_name={short!r} is not valid; lowercase letters and digits, words joined by '_'")
    names = [timm_name(short, step.name) for step in loaded.steps]
    for name, step in zip(names, loaded.steps):
        if not TIMM_NAME.match(name):
            raise TimmModelError(f"{step.path}: step name {step.name!r} cannot be part of a timm name; "
                                 "use lowercase letters, digits and '_'")
        if is_model(name) and name not in _REGISTERED:
            raise TimmModelError(f"{name!r} is already a timm model that this module did not register; "
                                 "choose another short_name")
    default_cfgs.update(generate_default_cfgs({name: _pretrained_cfg(loaded, step)
                                               for name, step in zip(names, loaded.steps)}))
    for name, step in zip(names, loaded.steps):
        with warnings.catch_warnings():  # timm warns when a name is registered again: here, on purpose
            warnings.filterwarnings("ignore", message=f"Overwriting {name} in registry")
            register_model(_entry_point(name, loaded, step))
        _REGISTERED[name] = (loaded.name, step.name)
    return names


def _pretrained_cfg(roadmap: Roadmap, step: Step) -> dict[str, Any]:
    """How the step is evaluated on ImageNet: 224 px, its recipe's crop and interpolation, ImageNet's mean/std."""
    return dict(
        input_size=(3, IMAGENET_SIDE, IMAGENET_SIDE),
        **_data_cfg(step.arch, IMAGENET_SIDE, step.recipe.eval_crop_pct, step.recipe.interpolation),
        num_classes=1000,
        first_conv="stem.conv",
        classifier="head.fc",
        description=" ".join(f"{roadmap.title}, step {step.name} ({step.group}). {step.description}".split()),
    )


def _data_cfg(arch: ArchSpec, side: int, crop_pct: float, interpolation: str) -> dict[str, Any]:
    pool, smallest = output_side(arch, side), min_input_side(arch)
    return dict(pool_size=(pool, pool), min_input_size=(3, smallest, smallest), crop_pct=crop_pct,
                interpolation=interpolation, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def _entry_point(name: str, roadmap: Roadmap, step: Step):
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create(name, roadmap.name, step, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"""Step {step.name!r} of the roadmap {roadmap.name!r} ({roadmap.title}) as a timm model.

    Keywords beyond timm's own (num_classes, in_chans, global_pool, drop_rate, features_only, out_indices):
        width_multiplier: uniform multiplier of every width (default the step's 1.0; with weights, the run's).
        drop_path_rate: stochastic depth of the last block (default the step's {step.arch.drop_path_rate}).
        tracking_uri: the MLflow store of pretrained_cfg_overlay=dict(file="runs:/<run id>").
    """
    return entry


def _create(name: str, roadmap: str, step: Step, pretrained: bool, *, width_multiplier: float | None = None,
            drop_path_rate: float | None = None, tracking_uri: str | None = None,
            pretrained_cfg_overlay: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """The step's network through timm's builder; with a study's weights, the network and data cfg of its run."""
    arch, overlay = step.arch, dict(pretrained_cfg_overlay or {})
    source = overlay.get("file")
    if pretrained and source and _is_study_output(os.fspath(source)):
        source = os.fspath(source)
        trained = load_trained(source, tracking_uri=tracking_uri)
        _check_same_step(name, roadmap, step.name, trained)
        if width_multiplier is not None and width_multiplier != trained.arch.width_multiplier:
            raise TimmModelError(f"width_multiplier={width_multiplier!r} is not valid with the weights {source!r}, "
                                 f"trained at width_multiplier {trained.arch.width_multiplier!r}; leave it out")
        arch = trained.arch
        overlay = _trained_cfg(source, trained, tracking_uri) | {**overlay, "file": source}
    overrides = {key: value for key, value in (("width_multiplier", width_multiplier),
                                                ("drop_path_rate", drop_path_rate)) if value is not None}
    arch = replace_checked(arch, overrides, f"timm model {name!r}")
    model = build_model_with_cfg(RoadmapNet, name, pretrained, pretrained_cfg_overlay=overlay, arch=arch,
                                 feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(len(arch.depths)))),
                                 **kwargs)
    model.pretrained_cfg.pop("state_dict", None)  # loaded; the cfg (and its alias default_cfg) need not keep it
    return model


def _is_study_output(source: str) -> bool:
    """runs:/<id>, or a checkpoint folder or a file with a run's config.json beside it."""
    if source.startswith("runs:"):
        return True
    path = _local_path(source)
    return path.is_dir() or (path.parent / Artifact.CONFIG).is_file()


def _local_path(source: str) -> Path:
    return Path(unquote(urlparse(source).path)) if source.startswith("file:") else Path(source).expanduser()


def _check_same_step(name: str, roadmap: str, step: str, trained: TrainedModel) -> None:
    if trained.step == step and trained.roadmap in ("", roadmap):
        return
    matching = [other for other, (other_roadmap, other_step) in _REGISTERED.items()
                if other_step == trained.step and trained.roadmap in ("", other_roadmap)]
    fix = (f"create it as {matching[0]!r}" if matching else
           f"register its roadmap {trained.roadmap!r} first (roadmap.timm_models.register_roadmap)")
    raise TimmModelError(f"the weights {trained.source!r} are step {trained.step!r} of roadmap {trained.roadmap!r}, "
                         f"but {name!r} is step {step!r} of {roadmap!r}; {fix}")


def _trained_cfg(source: str, trained: TrainedModel, tracking_uri: str | None) -> dict[str, Any]:
    """The pretrained cfg of a run's weights: its classes, and its evaluation's resolution, crop and interpolation."""
    config = _run_config(source, tracking_uri)
    data = replace_checked(DataSpec(), _tuples(config.get("data", {})), f"{source}: config.json [data]")
    recipe = replace_checked(RecipeSpec(), _tuples(config.get("recipe", {})), f"{source}: config.json [recipe]")
    side = data.image_size
    return dict(state_dict=trained.model.state_dict(), num_classes=trained.num_classes, input_size=(3, side, side),
                **_data_cfg(trained.arch, side, recipe.eval_crop_pct, recipe.interpolation))


def _tuples(table: dict[str, Any]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in table.items()}


def _run_config(source: str, tracking_uri: str | None) -> dict[str, Any]:
    """The run's config.json (load_trained has read it already, so it exists and holds an 'arch' table)."""
    if not source.startswith("runs:"):
        path = _local_path(source)
        return json.loads(((path if path.is_dir() else path.parent) / Artifact.CONFIG).read_text())
    from .tracking import check_tracking_uri, download_artifact

    uri = check_tracking_uri(tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI"))
    run_id = source.split(":", 1)[1].strip("/")
    with tempfile.TemporaryDirectory(prefix="roadmap-timm-") as folder:
        return json.loads(Path(download_artifact(uri, run_id, Artifact.CONFIG, Path(folder))).read_text())


for _roadmap, _short_name in BUILTIN_ROADMAPS.items():
    register_roadmap(_roadmap, short_name=_short_name)
