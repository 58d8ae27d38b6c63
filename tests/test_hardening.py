"""Bad input, crashing runtimes, interrupted and concurrent builds, a full disk, the cache."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

from pipeline import runner
from targets import TARGETS

TINY = "tiny-digits"


def artifacts(out: Path) -> dict[str, bytes]:
    return {
        t.name + "/" + f: (out / TINY / t.name / f).read_bytes()
        for t in TARGETS.values()
        for f in t.files
        if (out / TINY / t.name / f).exists()
    }


def test_a_runtime_that_segfaults_is_one_failed_result_naming_the_signal(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    r = runner.run(script, tmp_path / "model.tflite")
    assert r["ok"] is False and r["error"].startswith("runtime crashed with SIGSEGV")


def test_a_runtime_that_hangs_is_killed_at_its_timeout(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(60)\n")
    t0 = time.perf_counter()
    r = runner.run(script, tmp_path / "model.tflite", timeout=2)
    assert time.perf_counter() - t0 < 10
    assert r["ok"] is False and "timed out after 2 s" in r["error"]


def test_a_runtime_that_aborts_is_named(tmp_path):
    script = tmp_path / "abort.py"
    script.write_text("import os\nos.abort()\n")
    assert runner.run(script, tmp_path / "m")["error"].startswith("runtime crashed with SIGABRT")


@pytest.mark.slow
def test_fuzzed_artifacts_never_crash_or_hang_the_main_process(small_build):
    from support.fuzz import fuzz

    out, proc = small_build
    assert proc.returncode == 0
    s = fuzz(out / TINY, cases=30, seed=7, timeout=20)
    assert s["completed"] == 30 and s["main_process_crashes"] == 0 and s["hangs"] == 0
    assert s["failures_without_reason"] == 0
    assert s["runner_failed"] > 0 and s["distinct_reasons"] >= 3


@pytest.mark.slow
def test_bench_release_and_verify_on_a_build_with_failed_targets_never_end_in_an_internal_error(small_build, tmp_path):
    """Every row status (ok, failed, timed out, not built; artifacts failed to build or verify) through bench,
    release (refused, then --allow-failed with those bench rows), verify and the model card."""
    from support.fuzz import commands_on, with_failed_targets

    out, proc = small_build
    assert proc.returncode == 0
    statuses = with_failed_targets(out, TINY, tmp_path / "out", seed=3)
    assert {"ok", "failed_build", "failed_verification"} <= set(statuses.values())
    runs = commands_on(tmp_path / "out", statuses, tmp_path)
    assert [r["command"] for r in runs] == [
        "bench",
        "bench timed out",
        "release refused",
        "release --allow-failed",
        "verify",
    ]
    assert not [r for r in runs if r["internal"]], [r for r in runs if r["internal"]]
    # Each failure is said in lines of its own, never as a crash: not built, failed, refused.
    assert runs[0]["returncode"] == 1 and "not_built" in runs[0]["stderr"]
    assert runs[1]["returncode"] == 1 and "timed out" in runs[1]["stderr"]
    assert runs[2]["returncode"] == 1 and runs[2]["stderr"].startswith("error: not releasing:")
    assert runs[3]["returncode"] == 0 and runs[4]["returncode"] == 0, runs[3:]


@pytest.mark.slow
def test_a_sweep_variant_that_fails_at_a_stage_fails_alone_and_never_as_an_internal_error(
    small_build, small_config, tmp_path
):
    from support.fuzz import sweep_with_a_failing_variant

    out, proc = small_build
    assert proc.returncode == 0
    run, rows = sweep_with_a_failing_variant(out, small_config, tmp_path / "sweep")
    assert not run["internal"] and run["returncode"] == 1, run["stderr"]
    by_rate = {r["prune.learning_rate"]: r for r in rows}
    assert by_rate[0.001]["status"] == "ok", by_rate
    assert by_rate[1e30]["status"] == "failed" and "NaN or Inf" in by_rate[1e30]["reason"]
    assert f"error: variant {by_rate[1e30]['variant']} tflite-fp32 on local failed" in run["stderr"]


def _can_mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(path)], capture_output=True).returncode
        == 0
    )


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path):
    disk = tmp_path / "small"
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        proc = run_cli("build", "--out", disk / "out")
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: disk full while writing") and "choose another --out" in last
        assert "Traceback" not in proc.stderr
        leftovers = [p for p in disk.rglob("*") if ".tmp" in p.name]
        assert leftovers == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_builds_killed_at_random_moments_resume_to_the_same_bytes_as_a_clean_build(small_build, small_config, tmp_path):
    ref_out, _ = small_build
    out = tmp_path / "out"
    targets = "tflite-int8,onnx-fp32,openvino-fp32"  # one per family (the int8 choice is tested elsewhere)
    rng = np.random.default_rng(3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "build",
        "--config",
        str(small_config),
        "--target",
        targets,
        "--out",
        str(out),
    ]
    interrupted, seen = 0, []
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL):
        # SIGINT as at a terminal: a suite started in the background (nohup, `&`) passes SIG_IGN on to its
        # children, and Python then leaves Ctrl-C ignored
        p = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(float(rng.uniform(2, 9)))
        running = p.poll() is None
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        seen.append((sig.name, "running" if running else "had finished", p.returncode, err.strip()[-300:]))
        if p.returncode != 0:
            interrupted += 1
        if sig == signal.SIGINT and p.returncode == 130:
            assert "interrupted: finished stages are cached" in err and "Traceback" not in err
    assert interrupted >= 2, seen
    final = run_cli("build", "--config", small_config, "--target", targets, "--out", out)
    assert final.returncode == 0, final.stderr[-2000:]
    # Every stage in `out` was computed afresh, by a killed build or the final one, never copied: the same bytes
    # as the shared build are also the check that two clean builds give byte-identical files.
    got = artifacts(out)
    want = {name: data for name, data in artifacts(ref_out).items() if name.split("/")[0] in targets.split(",")}
    assert sorted(got) == sorted(want) and len(want) == sum(len(TARGETS[t].files) for t in targets.split(","))
    for name, data in want.items():
        assert got[name] == data, name
    again = run_cli("build", "--config", small_config, "--target", targets, "--out", out)
    assert "running" not in again.stderr


@pytest.mark.slow
def test_two_builds_into_one_folder_keep_each_others_artifacts(small_build, small_config, tmp_path):
    ref_out, _ = small_build
    out = tmp_path / "out"
    shutil.copytree(ref_out / ".cache", out / ".cache")  # both builds reuse the trained models
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                "build",
                "--config",
                str(small_config),
                "--target",
                targets,
                "--out",
                str(out),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for targets in ("tflite-int8,onnx-fp32,openvino-int8", "tflite-fp32,onnx-int8,openvino-fp16")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    manifest = json.loads((out / TINY / "manifest.json").read_text())
    assert {a["target"] for a in manifest["artifacts"]} == {
        "tflite-int8",
        "onnx-fp32",
        "openvino-int8",
        "tflite-fp32",
        "onnx-int8",
        "openvino-fp16",
    }
    built = artifacts(out)
    assert built == {k: v for k, v in artifacts(ref_out).items() if k in built}


@pytest.mark.slow
def test_the_cache_can_be_listed_and_pruned(small_build, tmp_path):
    ref_out, _ = small_build
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    stale = out / ".cache" / "train" / ".tmp-deadbeef-1-abcd"
    stale.mkdir()
    (stale / "model.h5").write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    ls = run_cli("cache", "ls", "--out", out)
    assert ls.returncode == 0 and "used" in ls.stdout and "leftover" in ls.stdout
    pruned = run_cli("cache", "prune", "--out", out)
    assert pruned.returncode == 0 and "removed 1 entries" in pruned.stdout
    assert not stale.exists()
    again = run_cli("build", "--config", ROOT / "tests" / "missing.toml", "--out", out)  # bad input: nothing changes
    assert again.returncode == 2
    everything = run_cli("cache", "prune", "--all", "--out", out)
    assert everything.returncode == 0 and not any((out / ".cache").rglob("entry.json"))


def test_a_build_says_how_much_it_stored(small_build):
    _, proc = small_build
    assert "cache: stored" in proc.stderr and "MB in" in proc.stderr
