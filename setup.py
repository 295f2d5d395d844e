"""The packages of the wheel (the rest of the metadata is in pyproject.toml).

Every package under roadmap/ is found, so a new subpackage can never be left out. The roadmaps stay in the
repository's top-level steps/ folder and travel in the wheel as roadmap/roadmaps/<roadmap>/*.toml, where
roadmap.steps reads them. pyproject.toml alone cannot both discover packages and map steps/ into one.
"""
from setuptools import find_namespace_packages, find_packages, setup

ROADMAPS = [f"roadmap.roadmaps.{name}" for name in find_namespace_packages(where="steps")]

setup(
    packages=[*find_packages(include=["roadmap", "roadmap.*"]), "roadmap.roadmaps", *ROADMAPS],
    package_dir={"roadmap.roadmaps": "steps"},
    package_data={roadmap: ["*.toml"] for roadmap in ROADMAPS},
)
