"""Loading weights never runs code: checkpoints are tensors and plain values, read with weights_only=True.

A checkpoint given a pickled payload is refused, in one line naming it, by load_trained, the torch.hub
entry points, `python -m roadmap.export` and resume, and the payload never runs. Checkpoints of the previous
version (a NumPy array in the RNG state) still resume exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CLASSES, make_loaders, recipe_for, tiny_model

from roadmap import build_model, load_roadmap
from roadmap.recipes import MODERN
from roadmap.spec import to_dict
from roadmap.trained import TrainedModelError, load_trained
from roadmap.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from roadmap.training.engine import TrainOptions, train_and_evaluate
from roadmap.training.result import EpochRecord

REPO = Path(__file__).resolve().parent.parent
RECIPE = recipe_for(MODERN, lr=0.01, warmup_epochs=1.0)  # mixup (NumPy RNG) and dropout (torch RNG) both draw


class Payload:
    """Pickles as a call of os.system: unpickling it touches `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path) -> None:
    """Add a payload to the checkpoint at `path`, as someone sharing a tampered last.pt would."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["note"] = Payload(marker)
    torch.save(state, path)
    assert not marker.exists()  # writing it ran nothing


def _one_line_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


def _train(folder: Path, on_epoch=None):
    model = tiny_model()
    result = train_and_evaluate(model, RECIPE, *make_loaders(), num_classes=CLASSES,
                                options=TrainOptions(checkpoint_dir=folder), on_epoch=on_epoch)
    return result, model


def _crash_after_first_epoch(record: EpochRecord) -> None:
    raise RuntimeError(f"killed after epoch {record.epoch}")


@pytest.fixture(scope="module")
def trained_step(tmp_path_factory) -> Path:
    """A checkpoint folder as a study leaves it for step kernel_7 (last.pt and config.json), at a tiny width."""
    folder = tmp_path_factory.mktemp("kernel_7")
    arch = dataclasses.replace(load_roadmap("resnet50_to_convnext_t").step("kernel_7").arch, width_multiplier=0.0625)
    model = build_model(arch, 3)
    history = [{"epoch": 1, "val_top1": 40.0}, {"epoch": 2, "val_top1": 50.0}]
    save_checkpoint({"model": model.state_dict(), "epoch": 2, "history": history}, folder / "last.pt")
    config = {"roadmap": "resnet50_to_convnext_t", "step": "kernel_7", "arch": to_dict(arch)}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_checkpoint_holds_only_what_weights_only_loading_reads(tmp_path):
    _train(tmp_path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "last.pt") == []
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)  # no allowlist needed
    numpy_state = state["rng"][0]["numpy"]
    assert isinstance(numpy_state["keys"], torch.Tensor) and numpy_state["keys"].shape == (624,)


def test_load_trained_reads_an_untampered_checkpoint(trained_step):
    loaded = load_trained(trained_step / "last.pt")
    assert loaded.step == "kernel_7" and loaded.num_classes == 3 and loaded.top1 == 50.0


def test_a_planted_payload_never_runs_and_the_file_is_refused_by_name(trained_step, tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    for name in ("last.pt", "config.json"):
        (folder / name).write_bytes((trained_step / name).read_bytes())
    marker = tmp_path / "payload-ran"
    checkpoint = folder / "last.pt"
    _plant(checkpoint, marker)

    for source in (checkpoint, folder, f"file://{checkpoint}"):
        with pytest.raises(TrainedModelError) as error:
            load_trained(source)
        assert "system" in _one_line_naming(error, checkpoint)  # names what it would have called
        assert not marker.exists()
    with pytest.raises(TrainedModelError) as error:
        torch.hub.load(str(REPO), "kernel_7", source="local", weights=str(checkpoint))
    _one_line_naming(error, checkpoint)
    exported = subprocess.run([sys.executable, "-m", "roadmap.export", str(checkpoint), "--to", "timm",
                               "--out", str(tmp_path / "out.pth")], capture_output=True, text=True, timeout=300)
    assert exported.returncode == 2 and len(exported.stderr.strip().splitlines()) == 1, exported.stderr[-2000:]
    assert str(checkpoint) in exported.stderr and not (tmp_path / "out.pth").exists()
    assert not marker.exists()

    # The payload is real: loading the file the unsafe way runs it. (So the checks above can fail.)
    torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_resume_refuses_a_tampered_checkpoint_before_it_runs(tmp_path):
    with pytest.raises(RuntimeError, match="killed after epoch 1"):
        _train(tmp_path, _crash_after_first_epoch)
    marker = tmp_path / "payload-ran"
    _plant(tmp_path / "last.pt", marker)
    with pytest.raises(CheckpointError, match="is refused: it pickles posix.system") as error:
        _train(tmp_path)
    _one_line_naming(error, tmp_path / "last.pt")
    assert not marker.exists()


def _as_previous_version(path: Path) -> None:
    """Rewrite a checkpoint as the previous version wrote it: NumPy's state as np.random.get_state() returns it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for rng in state["rng"]:
        saved = rng["numpy"]
        rng["numpy"] = (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                        saved["has_gauss"], saved["cached_gaussian"])
    torch.save(state, path)


def test_a_checkpoint_of_the_previous_version_still_resumes_exactly(tmp_path):
    whole, whole_model = _train(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="killed after epoch 1"):
        _train(tmp_path / "crashed", _crash_after_first_epoch)
    _as_previous_version(tmp_path / "crashed" / "last.pt")
    legacy = torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "crashed" / "last.pt")
    assert "numpy.ndarray" in legacy  # what plain weights_only=True refuses, and the allowlist admits
    resumed, resumed_model = _train(tmp_path / "crashed")
    assert resumed.resumed_from_epoch == 1
    assert (resumed.top1, resumed.train_loss) == (whole.top1, whole.train_loss)
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name


def test_the_previous_versions_allowance_admits_uint32_arrays_only(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"rng": ("MT19937", np.zeros(624, dtype=np.uint32), 0, 0, 0.0)}, path)
    assert load_checkpoint(path)["rng"][1].dtype == np.uint32
    torch.save({"rng": np.array([{"a": 1}], dtype=object)}, path)
    with pytest.raises(CheckpointError, match="is refused"):
        load_checkpoint(path)
    torch.save({"rng": np.zeros(3, dtype=np.float64)}, path)
    with pytest.raises(CheckpointError, match="is refused"):
        load_checkpoint(path)


def test_files_that_are_not_resume_points_are_refused_in_one_line(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a readable torch checkpoint") as error:
        _train(tmp_path)
    _one_line_naming(error, tmp_path / "last.pt")
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")  # safe, but not written by the engine
    with pytest.raises(CheckpointError, match="is not a resume point written by the training engine") as error:
        _train(tmp_path)
    _one_line_naming(error, tmp_path / "last.pt")
