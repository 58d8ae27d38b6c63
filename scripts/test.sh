#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_system.sh
scripts/install.sh
scripts/fetch_test_assets.sh
exec .venv/bin/python -m pytest -q "$@"
