"""`python -m pipeline bench`: statistics, options, failures as rows, and the command end to end."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_copy, run_cli

from pipeline import benchmark as bench
from pipeline.devices import get_device
from pipeline.errors import UsageError
from targets import TARGETS
from targets.runners.runner_common import stats_ms


def test_statistics_of_known_timings():
    # 1, 2, ..., 100 ms in shuffled order: every figure is known in closed form.
    samples = np.random.default_rng(0).permutation(np.arange(1, 101)) / 1e3
    s = stats_ms(samples)
    assert s["runs"] == 100
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(100.0)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["std_ms"] == pytest.approx(np.sqrt((100**2 - 1) / 12))
    assert s["throughput_per_s"] == pytest.approx(1000 / 50.5)


def test_one_slow_outlier_moves_the_mean_and_p99_but_not_the_median():
    s = stats_ms([0.001] * 99 + [0.5])
    assert s["p50_ms"] == pytest.approx(1.0) and s["p90_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(500.0)
    assert s["mean_ms"] == pytest.approx((99 + 500) / 100)


def test_no_samples_is_an_error_not_a_zero():
    with pytest.raises(ValueError):
        stats_ms([])


def test_thread_lists_and_runner_options_are_checked():
    assert bench.parse_threads("1,2,4,2") == [1, 2, 4]
    for bad in ("", "0", "1,x", "-1"):
        with pytest.raises(UsageError):
            bench.parse_threads(bad)
    assert bench.parse_options(["delegate=none", "precision = f32"]) == (("delegate", "none"), ("precision", "f32"))
    with pytest.raises(UsageError):
        bench.parse_options(["delegate"])
    req = bench.Settings(runs=7, min_seconds=0.5, warmup=2, samples=9, options=[("delegate", "none")]).request(
        Path("r.py"), Path("m"), Path("x.npy"), 2
    )
    assert req.argv("x.npy") == [
        "--inputs",
        "x.npy",
        "--limit",
        "9",
        "--bench",
        "--threads",
        "2",
        "--warmup",
        "2",
        "--runs",
        "7",
        "--min-seconds",
        "0.5",
        "--delegate",
        "none",
    ]


def test_local_is_one_device_behind_a_small_interface():
    dev = get_device("local")
    assert dev.name == "local" and callable(dev.run)
    with pytest.raises(UsageError, match="unknown device"):
        get_device("toaster")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--threads", "0"], "--threads"),
        (["--runs", "0"], "--runs"),
        (["--device", "toaster"], "unknown device 'toaster'"),
        (["--option", "delegate"], "KEY=VALUE"),
    ],
)
def test_bad_bench_options_are_one_line_errors_before_any_build(argv, fragment, tmp_path):
    t0 = time.perf_counter()
    proc = run_cli("bench", "--out", tmp_path / "out", *argv)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - t0 < 10


@pytest.mark.slow
def test_bench_times_two_targets_at_two_thread_counts_in_both_runtimes_into_json_rows(
    small_build, small_config, tmp_path
):
    out = build_copy(small_build, tmp_path / "out")
    rows_file = tmp_path / "rows.json"
    proc = run_cli(
        "bench",
        "--config",
        small_config,
        "--out",
        out,
        "--target",
        "tflite-fp32,tflite-int8",
        "--threads",
        "1,2",
        "--runs",
        "20",
        "--min-seconds",
        "0.05",
        "--warmup",
        "2",
        "--legacy",
        "--json",
        rows_file,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running" not in proc.stderr  # everything came from the build's cache
    rows = json.loads(rows_file.read_text())
    assert [(r["target"], r["threads"], r["runtime"]) for r in rows] == [
        (t, n, runtime)
        for runtime in ("litert", "tflite-runtime")
        for t in ("tflite-fp32", "tflite-int8")
        for n in (1, 2)
    ]
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["model"] == "tiny-digits" and r["device"] == "local"
        assert r["runtime_version"] and r["delegate"] == "xnnpack"
        assert r["runs"] >= 20 and r["warmup"] == 2 and r["batch"] == 1
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["mean_ms"] > 0 and r["std_ms"] >= 0 and r["throughput_per_s"] > 0
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and 10 < r["peak_rss_mb"] < 1000
        assert r["cpu"] and r["os"] and r["arch"] and "x_test.npy" in r["input"]
        assert r["quantization"] == TARGETS[r["target"]].quantization and r["bytes"] > 0
    table = proc.stdout
    assert "p50 ms" in table and "tflite-int8" in table and "conditions:" in table


@pytest.mark.slow
def test_a_corrupt_artifact_is_a_failed_row_and_the_other_targets_are_still_timed(small_build, tmp_path):
    out, _ = small_build
    manifest = json.loads((out / "tiny-digits" / "manifest.json").read_text())
    arts = {a["target"]: a for a in manifest["artifacts"]}
    corrupt = tmp_path / "model.tflite"
    data = bytearray((out / arts["tflite-int8"]["path"]).read_bytes())
    data[4:8] = b"XXXX"  # no longer a TFLite flatbuffer
    corrupt.write_bytes(bytes(data[: len(data) // 2]))
    missing = {"target": "tflite-fp16", "status": "failed_build", "reason": "converter failed"}
    items = [
        (TARGETS["tflite-int8"], arts["tflite-int8"], corrupt),
        (TARGETS["tflite-fp16"], missing, None),
        (TARGETS["tflite-fp32"], arts["tflite-fp32"], out / arts["tflite-fp32"]["path"]),
    ]
    inputs = next((out / ".cache" / "data").glob("*/x_test.npy"))
    settings = bench.Settings(runs=10, min_seconds=0, warmup=1, samples=10, timeout=60)
    rows = bench.bench_artifacts(items, [get_device("local")], inputs, [1], settings)
    assert [(r["target"], r["status"]) for r in rows] == [
        ("tflite-int8", "failed"),
        ("tflite-fp16", "not_built"),
        ("tflite-fp32", "ok"),
    ]
    assert rows[0]["error"] and rows[0]["p50_ms"] is None
    assert rows[1]["error"] == "converter failed"
    assert rows[2]["p50_ms"] > 0
