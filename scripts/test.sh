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
# The slowest tests are listed at the end of every run: the suite must stay within 10 minutes on 2 cores.
# Two workers, each taking whole files (a file's module fixtures and its Ray cluster stay in one process), the
# longest first: tests/conftest.py orders the files by benchmarks/results/test_durations.txt and
# --no-loadscope-reorder keeps that order (xdist's own puts the files with most tests first, and a long file
# started last is a tail one worker runs alone). Measured: 387 tests in 8 min 19 s on an idle machine (about
# 890 s of CPU); refresh the record with `scripts/test.sh --durations=0` when tests are added.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 "$@"
