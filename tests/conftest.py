import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A reduced budget for end-to-end tests: same stages, a few epochs each.
SMALL_CONFIG = """
[model]
name = "tiny-digits"
filters = 8
[train]
epochs = 4
[prune]
epochs = 2
sparsity = 0.5
[qat]
epochs = 1
[build]
max_accuracy_drop = 5.0
"""


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m pipeline ARGS` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def small_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.toml"
    path.write_text(SMALL_CONFIG)
    return path


@pytest.fixture(scope="session")
def small_build(tmp_path_factory, small_config):
    """One build of every target of the tiny model, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("build")
    proc = run_cli("build", "--config", small_config, "--target", "all", "--out", out)
    return out, proc
