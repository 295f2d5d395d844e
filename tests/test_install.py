"""The wheel is the whole tool: built from a clean copy of the repository, installed into a virtual environment
that sees neither the source tree nor its editable install, it plans and runs a study from another folder.

The virtual environment gets this interpreter's dependencies (torch is several GB: never reinstalled per test)
through a .pth file listing this environment's site folders. A path line of a .pth file only appends a folder
to sys.path, without running the .pth files inside it, so the editable install in those folders stays inert,
and the wheel installed in the venv's own site-packages comes first.
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    hidden = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    env = {key: value for key, value in os.environ.items() if key not in hidden}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _clean_copy(root: Path) -> Path:
    """The files git would commit (tracked and not ignored), copied: what a fresh clone builds from."""
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], REPO)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot make a clean copy of the sources")
    clone = root / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes(source.read_bytes())
    return clone


def _dependency_folders() -> list[str]:
    """The site folders this interpreter imports the dependencies from (never the source tree's root)."""
    folders = [entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")]
    return [folder for folder in dict.fromkeys(folders) if Path(folder).is_dir()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the venv's bin folder, a folder outside the source tree, the wheel) after installing a freshly built wheel."""
    root = tmp_path_factory.mktemp("install")
    clone = _clean_copy(root)
    # Built with this environment's setuptools (the dev extra), so no download is needed.
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(root / "dist"), str(clone)], root)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("convnext_roadmap-*.whl")
    venv.create(root / "venv", with_pip=False)
    bin_dir = root / "venv" / "bin"
    # This interpreter's pip installs into the venv (which has none); the entry points get the venv's python.
    pip = _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps",
                "--no-index", "-q", str(wheel)], root)
    assert pip.returncode == 0, pip.stderr[-2000:]
    purelib = _run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root)
    # Written after the install, so that pip never saw this environment's editable install of the project.
    (Path(purelib.stdout.strip()) / "_dependencies_of_the_test.pth").write_text("\n".join(_dependency_folders()) + "\n")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return bin_dir, elsewhere, wheel


def test_the_wheel_holds_every_package_and_the_roadmaps(installed):
    _, _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(path.parent.relative_to(REPO)) for path in (REPO / "roadmap").rglob("__init__.py")}
    assert "roadmap/study/executors" in packages
    missing = sorted(package for package in packages if f"{package}/__init__.py" not in names)
    assert not missing, f"the wheel leaves out {missing}"
    for roadmap in ("resnet50_to_convnext_t", "resnet200_to_convnext_b"):
        shipped = sorted(path.name for path in (REPO / "steps" / roadmap).glob("*.toml"))
        assert sorted(Path(name).name for name in names if name.startswith(f"roadmap/roadmaps/{roadmap}/")) == shipped


def test_the_installed_package_holds_the_roadmaps_and_not_the_source_tree(installed):
    bin_dir, elsewhere, _ = installed
    code = ("import sys, roadmap, roadmap.steps as s; r = roadmap.load_roadmap('resnet50_to_convnext_t'); "
            "print(roadmap.__file__); print(s.builtin_steps_dir()); print(len(r.steps), roadmap.list_roadmaps()); "
            "from pathlib import Path; print(any((Path(p or '.') / 'roadmap' / '__init__.py').resolve()"
            f".is_relative_to({str(REPO)!r}) and (Path(p or '.') / 'roadmap').is_dir() for p in sys.path))")
    result = _run([str(bin_dir / "python"), "-c", code], elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    package_file, steps_dir, counts, sees_source = result.stdout.strip().splitlines()
    venv_root = str(bin_dir.parent)
    assert package_file.startswith(venv_root) and steps_dir.startswith(venv_root)  # not the source tree
    assert counts == "17 ['resnet200_to_convnext_b', 'resnet50_to_convnext_t']"
    assert sees_source == "False"  # no folder on its path holds the source package


def test_the_installed_commands_plan_and_draw(installed):
    bin_dir, elsewhere, _ = installed
    assert "run-ablation" in _run([str(bin_dir / "run-ablation"), "--help"], elsewhere).stdout
    # A plan checks every option as a study would, with the modules a study uses (the executors included).
    planned = _run([str(bin_dir / "run-ablation"), "--dry-run", "--preset", "smoke", "--launcher", "local",
                    "--upto", "stage_ratio"], elsewhere)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert [name for name in ("resnet50", "modern_recipe", "stage_ratio") if name not in planned.stdout] == []
    drawn = _run([str(bin_dir / "plot-roadmap"), "--paper", "--out", "figures", "--format", "png", "--dpi", "40"],
                 elsewhere)
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert (elsewhere / "figures" / "roadmap.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(path.name for path in elsewhere.iterdir()) == ["figures"]  # a plan writes nothing


@pytest.mark.slow
def test_the_installed_command_runs_a_smoke_study_from_another_folder(installed):
    bin_dir, elsewhere, _ = installed
    study_dir = elsewhere / "study"
    study_dir.mkdir()
    ran = _run([str(bin_dir / "run-ablation"), "--preset", "smoke", "--upto", "resnet50", "--seeds", "0",
                "--no-progress"], study_dir, timeout=600)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    table = study_dir / "results" / "resnet50_to_convnext_t" / "roadmap.csv"
    assert table.is_file() and "resnet50" in table.read_text()
    assert (study_dir / "mlflow.db").is_file()  # MLflow's default store, in the folder the command ran in

