"""An installed package: a wheel built from a clean copy of the repository carries the roadmaps and the commands."""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's bin folder, a folder outside the source tree) after `pip install` of a freshly built wheel."""
    root = tmp_path_factory.mktemp("install")
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], REPO)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot make a clean copy of the sources")
    clone = root / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes(source.read_bytes())
    # The build uses this interpreter's setuptools (no download); the venv sees this interpreter's torch & co.
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(root / "dist"), str(clone)], root)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("convnext_roadmap-*.whl")
    venv.create(root / "venv", system_site_packages=True, with_pip=True)
    bin_dir = root / "venv" / "bin"
    pip = _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], root)
    assert pip.returncode == 0, pip.stderr[-2000:]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return bin_dir, elsewhere


def test_the_installed_package_holds_the_roadmaps(installed):
    bin_dir, elsewhere = installed
    code = ("import roadmap, roadmap.steps as s; r = roadmap.load_roadmap('resnet50_to_convnext_t'); "
            "print(roadmap.__file__); print(s.builtin_steps_dir()); print(len(r.steps), roadmap.list_roadmaps())")
    result = _run([str(bin_dir / "python"), "-c", code], elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    package_file, steps_dir, counts = result.stdout.strip().splitlines()
    venv_root = str(bin_dir.parent)
    assert package_file.startswith(venv_root) and steps_dir.startswith(venv_root)  # not the source tree
    assert counts == "17 ['resnet200_to_convnext_b', 'resnet50_to_convnext_t']"


def test_the_installed_commands_list_the_steps_and_draw_the_paper(installed):
    bin_dir, elsewhere = installed
    listed = _run([str(bin_dir / "run-ablation"), "--list-steps"], elsewhere)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert sum(1 for line in listed.stdout.splitlines() if line[:2].strip().isdigit()) == 17
    assert "run-ablation" in _run([str(bin_dir / "run-ablation"), "--help"], elsewhere).stdout
    drawn = _run([str(bin_dir / "plot-roadmap"), "--paper", "--out", "figures", "--format", "png", "--dpi", "40"],
                 elsewhere)
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert (elsewhere / "figures" / "roadmap.png").read_bytes()[:4] == b"\x89PNG"
