#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_system.sh
scripts/install.sh
scripts/fetch_test_assets.sh
# Lint and format are part of the test: a change that breaks either fails here, as in CI.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The slowest tests are listed at the end of every run: the suite must stay near 15 minutes on 2 cores.
# Two workers, each taking whole files (a file's module fixtures and its Ray cluster stay in one process):
# alone the suite keeps one of the 2 cores busy (22 min 43 s), with both 11 min 37 s.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 "$@"
