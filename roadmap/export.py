"""`python -m roadmap.export`: a trained reference-model step as a plain timm or torchvision state dict."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import click
import torch

from .cli.common import OneLineErrors
from .errors import SpecError
from .models.interop import export_state_dict, layout_misfits
from .models.sizes import RESNET_DEPTHS, SIZE_NAMES, TORCHVISION_SIZES, get_size
from .spec import ArchSpec, choice
from .steps import list_roadmaps, load_roadmap
from .trained import TrainedModel, load_trained

__all__ = ["LIBRARIES", "ExportError", "export_trained", "main"]

LIBRARIES = ("timm", "torchvision")
FAMILIES = ("resnet", "convnext")


class ExportError(SpecError):
    """A trained network that no library's model can hold; the message says which steps and libraries can."""


def export_trained(trained: TrainedModel, library: str) -> tuple[dict[str, torch.Tensor], str]:
    """`trained`'s weights under `library`'s names, and the constructor call whose model loads them strictly."""
    choice("library", library, LIBRARIES)
    arch, num_classes = trained.arch, trained.num_classes
    fitting = [family for family in FAMILIES if not layout_misfits(arch, f"{library}.{family}")]
    name = _named_size(arch, fitting[0]) if fitting else None
    if name is None:
        what = f"step {trained.step!r}" if trained.step else "this network"
        raise ExportError(f"{what} is not a {library} model; the steps that are: {_reference_steps(library)} "
                          f"(its weights load with roadmap.load_trained({trained.source!r}))")
    family = fitting[0]
    if family == "resnet" and arch.width_multiplier != 1:
        raise ExportError(f"width_multiplier={arch.width_multiplier} is not valid for a ResNet: timm's and "
                          "torchvision's ResNet stems hard-code 64 channels; export a full-width ResNet, or a "
                          "ConvNeXt with --to timm")
    kwargs: dict[str, object] = {}
    if library == "torchvision":
        if name not in TORCHVISION_SIZES:
            raise ExportError(f"torchvision has no {name!r} (it has {', '.join(TORCHVISION_SIZES)}); use --to timm")
        if arch.width_multiplier != 1:
            raise ExportError(f"width_multiplier={arch.width_multiplier} is not valid for torchvision, whose "
                              f"constructors hard-code the widths of {name!r}; use --to timm")
    elif family == "convnext":
        if arch.width_multiplier != 1:
            kwargs["dims"] = arch.stage_widths()
        if not arch.layer_scale_init:
            kwargs["ls_init_value"] = None  # timm's blocks then have no gamma, like ours
    kwargs["num_classes"] = num_classes
    arguments = ", ".join([repr(name), *(f"{key}={value!r}" for key, value in kwargs.items())])
    call = (f"timm.create_model({arguments})" if library == "timm"
            else f"torchvision.models.get_model({arguments})")
    state_dict = {key: tensor.detach().contiguous().clone()
                  for key, tensor in export_state_dict(trained.model, f"{library}.{family}").items()}
    _check_shapes(state_dict, _reference_shapes(library, name, kwargs), call)
    return state_dict, call


def _named_size(arch: ArchSpec, family: str) -> str | None:
    """The named size `arch` is, up to its width multiplier, stochastic depth and layer-scale value."""
    def plain(spec: ArchSpec) -> ArchSpec:
        return dataclasses.replace(spec, width_multiplier=1.0, drop_path_rate=0.0, layer_scale_init=0.0)

    names = [name for name in SIZE_NAMES if (name in RESNET_DEPTHS) == (family == "resnet")]
    return next((name for name in names if plain(get_size(name)) == plain(arch)), None)


@functools.cache
def _reference_steps(library: str) -> str:
    """'resnet50, separate_downsampling (resnet50_to_convnext_t); ...': steps that `library` has a model of."""
    groups = []
    for roadmap in list_roadmaps():
        names = [step.name for step in load_roadmap(roadmap).steps if _is_reference(step.arch, library)]
        if names:
            groups.append(f"{', '.join(names)} ({roadmap})")
    return "; ".join(groups) or "none"


def _is_reference(arch: ArchSpec, library: str) -> bool:
    for family in FAMILIES:
        name = _named_size(arch, family) if not layout_misfits(arch, f"{library}.{family}") else None
        if name and (library == "timm" or name in TORCHVISION_SIZES):
            return True
    return False


def _reference_shapes(library: str, name: str, kwargs: dict[str, object]) -> dict[str, torch.Size]:
    """The tensors of the model the constructor call builds, made on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        if library == "timm":
            import timm

            model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            import torchvision

            model = torchvision.models.get_model(name, weights=None, **kwargs)
    return {key: tensor.shape for key, tensor in model.state_dict().items()}


def _check_shapes(state_dict: dict[str, torch.Tensor], reference: dict[str, torch.Size], call: str) -> None:
    misfits = sorted(set(state_dict) ^ set(reference))
    misfits += [key for key in state_dict if key in reference and state_dict[key].shape != reference[key]]
    if misfits:
        raise ExportError(f"the exported weights do not fit {call}: {len(misfits)} tensor(s) differ "
                          f"({', '.join(misfits[:3])}); this network's sizes are not expressible there")


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.option("--to", "library", type=click.Choice(LIBRARIES), required=True,
              help="Library whose model the weights load into: timm (timm.create_model) or torchvision "
                   "(torchvision.models.get_model).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write: a plain state dict (torch.save), for model.load_state_dict(torch.load(FILE)).")
@click.option("--tracking-uri", metavar="URI",
              help="MLflow tracking store of a runs:/ SOURCE. Default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db in this directory.")
def main(source: str, library: str, out: Path, tracking_uri: str | None) -> None:
    """Export the trained network of SOURCE for timm or torchvision.

    SOURCE is runs:/<run id> of a step run, its checkpoint folder, or its weights.safetensors / last.pt.
    Only steps that equal a reference model can be exported (resnet50 and separate_downsampling, ...);
    every step's weights load with roadmap.load_trained(SOURCE).
    """
    trained = load_trained(source, tracking_uri=tracking_uri)
    state_dict, call = export_trained(trained, library)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, out)
    click.echo(f"wrote {out}: {len(state_dict)} tensors of step {trained.step or '?'}; load them with")
    click.echo(f"  model = {call}")
    click.echo(f"  model.load_state_dict(torch.load({str(out)!r}))")


if __name__ == "__main__":
    main()
