#!/usr/bin/env bash
# Fetch timm's own test suite (tests/ of the source distribution of the installed timm version) into a folder
# outside the repository, where tests/test_timm_suite.py (slow) runs it against the roadmap's timm models.
#
#   bash tools/timm/fetch_timm_tests.sh [FOLDER]
#
# FOLDER defaults to $ROADMAP_TIMM_TESTS, else ~/.cache/convnext-roadmap/timm-tests; the suite lands in
# FOLDER/timm-<version>/ (its tests/ and pyproject.toml, whose pytest section declares timm's markers).
# Only pip talks to the network (the package index); the tests themselves download nothing.
set -euo pipefail
python=${PYTHON:-python}
root=${1:-${ROADMAP_TIMM_TESTS:-$HOME/.cache/convnext-roadmap/timm-tests}}
version=$("$python" -c 'import timm; print(timm.__version__)')
target="$root/timm-$version"
if [[ -f "$target/tests/test_models.py" ]]; then
    echo "timm $version tests already in $target"
    exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "timm==$version" -d "$scratch"
tar -xzf "$scratch/timm-$version.tar.gz" -C "$scratch" "timm-$version/tests" "timm-$version/pyproject.toml"
mkdir -p "$root"
rm -rf "$target"
mv "$scratch/timm-$version" "$target"
echo "timm $version tests in $target"
