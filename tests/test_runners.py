"""Runner scripts: self-contained (numpy + one runtime), one JSON line, every failure as data."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline import runner
from pipeline.gate import artifact_inputs
from targets import RUNNERS, TARGETS

# What a runner may load beyond the standard library: numpy, its runtime, the runner scripts
# themselves, Cython's helpers, and setuptools' .pth hook (loaded by site for every Python here).
RUNTIME_MODULES = {"litert": {"ai_edge_litert"}, "tflite-runtime": {"tflite_runtime"}}
HARMLESS = {"numpy", "__main__", "cython_runtime", "_distutils_hack"}
# Never: the build side. A runner is copied to a board where none of this exists.
FORBIDDEN = (
    "tensorflow",
    "tf_keras",
    "keras",
    "tensorflow_model_optimization",
    "pipeline",
    "targets",
    "tf2onnx",
    "onnx2tf",
    "nncf",
    "sklearn",
)

# Runs a runner under `python -I` (no PYTHONPATH, no user site, no current folder on sys.path)
# with an import hook that refuses the build-side packages, then lists what got imported.
PROBE = textwrap.dedent("""
    import json, runpy, sys
    FORBIDDEN = {forbidden!r}
    attempted = []

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                attempted.append(name)
                raise ImportError("blocked: runners must not import " + name)

    sys.meta_path.insert(0, Block())
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit:
        pass
    tops = {{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names)
    print("PROBE " + json.dumps({{"attempted": attempted, "modules": sorted(tops)}}), file=sys.stderr)
""")


def _data_file(out: Path, name: str) -> Path:
    return next((out / ".cache" / "data").glob(f"*/{name}"))


def _cases():
    """(case id, runner script, target whose artifact it runs): every target's own runner, plus the
    legacy tflite-runtime on the full-integer artifact (what many deployed boards run)."""
    cases = [(name, t.runner_path, name) for name, t in TARGETS.items()]
    if "tflite-int8" in TARGETS:
        cases.append(("tflite-runtime:tflite-int8", RUNNERS / "run_tflite_runtime.py", "tflite-int8"))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(), ids=[c[0] for c in _cases()])
def test_a_runner_needs_only_numpy_and_its_runtime_and_speaks_the_protocol(case, small_build, tmp_path):
    _, runner_path, target_name = case
    out, _ = small_build
    artifact = out / "tiny-digits" / target_name / TARGETS[target_name].filename
    row = next(
        a
        for a in json.loads((out / "tiny-digits" / "manifest.json").read_text())["artifacts"]
        if a["target"] == target_name
    )
    inputs = artifact_inputs(_data_file(out, "x_test.npy"), row, tmp_path)  # in its layout (ncnn: channels-first)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(forbidden=FORBIDDEN))
    outputs = tmp_path / "y.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(probe),
            str(runner_path),
            str(artifact),
            "--inputs",
            str(inputs),
            "--outputs",
            str(outputs),
            "--bench",
            "--runs",
            "5",
            "--min-seconds",
            "0",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=runner.child_env(),
        cwd=tmp_path,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    probe_line = [ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE ")][-1]
    seen = json.loads(probe_line[len("PROBE ") :])
    assert result["ok"], result
    assert seen["attempted"] == [], f"tried to import {seen['attempted']}"
    assert not set(seen["modules"]) & set(FORBIDDEN)
    if result["runtime"] in RUNTIME_MODULES:
        # `pip install -e .` puts an import hook in site-packages that site loads at start-up, before the runner.
        extra = {
            m for m in seen["modules"] if m not in HARMLESS and not m.startswith(("_cython_", "run", "__editable__"))
        }
        assert extra <= RUNTIME_MODULES[result["runtime"]], extra
    for key in ("runtime_version", "load_ms", "inputs", "outputs", "first_inference_ms", "peak_rss_mb", "input"):
        assert key in result, key
    for key in ("threads", "cpu", "os", "arch", "batch"):
        assert key in result["conditions"], key
    lat = result["latency"]
    assert lat["runs"] >= 5 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    if result["runtime"] == "openvino":  # its own clock of the same calls runs inside our wall-clock window
        own = result["runtime_latency"]
        assert own["runs"] == lat["runs"] and 0 < own["p50_ms"] <= lat["p50_ms"]
    n_test = len(np.load(_data_file(out, "x_test.npy")))
    with np.load(outputs) as z:
        assert z["output_0"].shape == (n_test, 10)


def _fake_runner(tmp_path, body: str) -> Path:
    script = tmp_path / "run_fake.py"
    script.write_text("import os, signal, sys, time\n" + body + "\n")
    return script


def test_a_runtime_that_crashes_is_a_failed_result_not_the_callers_crash(tmp_path):
    script = _fake_runner(tmp_path, "os.kill(os.getpid(), signal.SIGSEGV)")
    res = runner.run(script, tmp_path / "model", [], timeout=30)
    assert res["ok"] is False and "SIGSEGV" in res["error"]


def test_a_runtime_that_hangs_is_killed_at_the_timeout(tmp_path):
    script = _fake_runner(tmp_path, "time.sleep(60)")
    res = runner.run(script, tmp_path / "model", [], timeout=1)
    assert res["ok"] is False and "timed out" in res["error"]


def test_a_runner_that_prints_garbage_is_a_failed_result(tmp_path):
    script = _fake_runner(tmp_path, "print('{not json'); sys.exit(3)")
    res = runner.run(script, tmp_path / "model", [], timeout=30)
    assert res["ok"] is False and "exited 3" in res["error"]


@pytest.mark.slow
def test_peak_memory_is_the_runners_own_not_its_parents(small_build):
    # Linux hands a child the parent's RSS high-water mark through fork and exec (ru_maxrss):
    # from a parent holding 600 MB a runner would claim 600 MB.
    out, _ = small_build
    ballast = np.ones(600 * 2**20 // 8)
    res = runner.run(
        TARGETS["tflite-int8"].runner_path,
        out / "tiny-digits" / "tflite-int8" / "model.tflite",
        ["--inputs", _data_file(out, "x_test.npy"), "--bench", "--runs", "5", "--min-seconds", "0"],
    )
    assert res["ok"], res
    assert 10 < res["peak_rss_mb"] < 400, res["peak_rss_mb"]
    assert ballast.sum() > 0
