"""timm's own model tests (tests/test_models.py of the installed timm's source distribution) on every roadmap step.

timm parametrizes its suite over `timm.list_models()`; run with `-p roadmap.timm_models`, the registration
happens before collection, and `-k roadmap_` selects exactly our 34 names. The suite is fetched once, outside
the repository, by `bash tools/timm/fetch_timm_tests.sh` (CI's setup does it); nothing is downloaded here.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

import pytest
import timm

# Where tools/timm/fetch_timm_tests.sh puts the suite (its default; both read $ROADMAP_TIMM_TESTS first).
SUITE_ROOT = Path(os.environ.get("ROADMAP_TIMM_TESTS", Path.home() / ".cache/convnext-roadmap/timm-tests"))
# The tests of timm's suite parametrized over every registered classification model, which select ours, by
# timm's marker; the rest are parametrized over named timm models, over pretrained weights (ours publish none,
# so no test_model_load_pretrained) or over timm's own modules (the forward_intermediates tests).
CONTRACT_TESTS = {"forward": "test_model_forward", "backward": "test_model_backward",
                  "cfg": "test_model_default_cfgs", "torchscript": "test_model_forward_torchscript",
                  "features": "test_model_forward_features"}
FX_TESTS = ("test_model_forward_fx", "test_model_backward_fx", "test_model_forward_fx_torchscript")
# ROADMAP_TIMM_SUITE: "contract" (default, CI: the contract the roadmap's models promise; 170 tests, about 5 CPU
# minutes) or "full" (torch.fx tracing too: three more tests per model, about twice the time).
SELECTIONS = ("contract", "full")
# Wall-clock limit of the whole run (s) by selection; CI has 30 minutes for everything.
SUITE_TIMEOUT_S = {"contract": 900, "full": 3600}


def suite_folder() -> Path:
    return SUITE_ROOT / f"timm-{timm.__version__}"


def outcomes(junit_xml: Path) -> dict[str, dict[str, str]]:
    """{test function: {model name: 'passed' | 'failed' | 'skipped: why' | 'error'}} from pytest's JUnit XML."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for case in ElementTree.parse(junit_xml).getroot().iter("testcase"):
        function, _, params = case.get("name", "").partition("[")
        model = next(part for part in params.rstrip("]").split("-") if part.startswith("roadmap_"))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = f"{child.tag}: {child.get('message', '')[:300]}"
            elif child.tag == "skipped":
                outcome = f"skipped: {child.get('message', '')}"
        found[function][model] = outcome
    return found


@pytest.mark.slow
def test_timm_model_suite_passes_for_every_roadmap_step(tmp_path):
    import roadmap.timm_models  # noqa: F401  (registers the names this test expects)

    suite = suite_folder()
    if not (suite / "tests" / "test_models.py").is_file():
        pytest.fail(f"timm {timm.__version__}'s tests are not in {suite}; fetch them with: "
                    "bash tools/timm/fetch_timm_tests.sh")
    selection = os.environ.get("ROADMAP_TIMM_SUITE", "contract")
    if selection not in SELECTIONS:
        pytest.fail(f"ROADMAP_TIMM_SUITE={selection!r} is not valid; choose one of: {', '.join(SELECTIONS)}")
    expected = [*CONTRACT_TESTS.values(), *(FX_TESTS if selection == "full" else ())]
    markers = [] if selection == "full" else ["-m", " or ".join(CONTRACT_TESTS)]
    # One pytest-xdist worker per core (one torch thread each) where it is installed: on one core the contract
    # takes about 5 minutes.
    workers = ["-n", "auto"] if importlib.util.find_spec("xdist") else []
    threads = {"OMP_NUM_THREADS": "1"} if workers else {}
    report = tmp_path / "timm-suite.xml"
    command = [sys.executable, "-m", "pytest", "tests/test_models.py", "-p", "roadmap.timm_models", "-k", "roadmap_",
               *markers, *workers, "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning",
               f"--junitxml={report}"]
    result = subprocess.run(command, cwd=suite, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S[selection],
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **threads})
    assert report.is_file(), f"timm's suite did not run:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    found = outcomes(report)
    problems = [f"{function}[{model}] {outcome}" for function, models in found.items()
                for model, outcome in models.items() if outcome != "passed"]
    assert not problems, "\n".join(problems)
    names = set(timm.list_models("roadmap_*"))
    assert len(names) == 34
    assert set(found) == set(expected), f"timm's suite ran {sorted(found)}, expected {expected}"
    for function in expected:
        assert set(found[function]) == names, f"{function} did not select {sorted(names - set(found[function]))}"
    assert result.returncode == 0, result.stdout[-3000:]
