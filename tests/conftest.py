import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "benchmarks" / "results" / "test_durations.txt"

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
# A test that builds an int8 target and does not test the post-training choice adds this to its config: the
# choice converts and verifies several candidates per int8 target (most of an int8 export's time).
NO_PTQ_CHOICE = "[ptq]\nchoose = false\n"


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


def _shared(tmp_path_factory) -> Path:
    """The run's temporary folder that every pytest-xdist worker sees (each worker's own is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def small_config(tmp_path_factory) -> Path:
    """SMALL_CONFIG as a file, one path for every worker (the shared build was made with it)."""
    path = _shared(tmp_path_factory) / "small.toml"
    with _locked(path.with_suffix(".lock")):
        if not path.exists():
            path.write_text(SMALL_CONFIG)
    return path


@pytest.fixture(scope="session")
def small_build(tmp_path_factory, small_config):
    """One build of every target of the tiny model, shared by the end-to-end tests: made once per run by the
    first worker that asks, the others waiting on a file lock (pytest-xdist's recipe for session fixtures).

    Shared, so read-only: a test that builds, benches or releases into it works on `build_copy(...)`."""
    shared = _shared(tmp_path_factory)
    out, record = shared / "small-build", shared / "small-build.json"
    with _locked(shared / "small-build.lock"):
        if not record.exists():
            proc = run_cli("build", "--config", small_config, "--target", "all", "--out", out)
            record.write_text(json.dumps([proc.args, proc.returncode, proc.stdout, proc.stderr]))
    return out, subprocess.CompletedProcess(*json.loads(record.read_text()))


def build_copy(small_build, dest: Path) -> Path:
    """A copy of the shared build (cache included, so nothing is rebuilt) that a test may change."""
    shutil.copytree(small_build[0], dest, symlinks=True)
    return dest


def seed_cache(small_build, out: Path, stages=("data", "train")) -> Path:
    """`out` with the shared build's cache entries of `stages`: a test of what comes after them starts there
    instead of training again (a stage's key depends on its config and inputs, so the entries are found)."""
    for stage in stages:
        shutil.copytree(small_build[0] / ".cache" / stage, out / ".cache" / stage, dirs_exist_ok=True)
    return out


def pytest_collection_modifyitems(config, items):
    """Longest files first, by the committed durations (benchmarks/results/test_durations.txt): with
    `--dist loadfile --no-loadscope-reorder` (scripts/test.sh) the two workers then finish together instead of
    one starting a long file last. A file not in the record counts as short."""
    if not DURATIONS.exists():
        return
    seconds: dict[str, float] = {}
    for m in re.finditer(r"^([\d.]+)s\s+\w+\s+(tests/[^:\s]+)::", DURATIONS.read_text(), re.M):
        seconds[m[2]] = seconds.get(m[2], 0.0) + float(m[1])
    order = {path: i for i, path in enumerate(sorted(seconds, key=seconds.get, reverse=True))}
    items.sort(key=lambda item: order.get(item.nodeid.split("::")[0], len(order)))
