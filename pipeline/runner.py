"""Run a runner script in a child process: a runtime that crashes or hangs fails one target only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

DEFAULT_TIMEOUT_S = 300.0


def child_env() -> dict:
    env = dict(os.environ)
    # The runner must not see our package or anything TensorFlow would pick up.
    env.pop("PYTHONPATH", None)
    env["PYTHONHASHSEED"] = "0"
    env.setdefault("OPENVINO_TELEMETRY_OPTOUT", "1")
    return env


def parse_result(stdout: str) -> dict | None:
    """The runner's result: the last line of its stdout that is a JSON object with `ok` (a runtime may print too)."""
    for line in reversed([ln for ln in stdout.splitlines() if ln.startswith("{")]):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and "ok" in result:
            return result
    return None


def run(
    runner: Path, model: Path, args: list[str] = (), timeout: float = DEFAULT_TIMEOUT_S, prefix: list[str] | None = None
) -> dict:
    """Run `runner model args...`; always returns the runner's JSON, or one with ok=False and why."""
    return run_command([*(prefix or [sys.executable]), str(runner), str(model), *map(str, args)], timeout)


def run_command(cmd: list, timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run any runner command line (a script, or the native runner of pipeline/native.py) the same way."""
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s (runtime hung), killed"}
    except OSError as e:
        return {"ok": False, "error": f"could not start runner: {e}"}
    result = parse_result(proc.stdout)
    if result is not None:
        return result
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        why = f"runtime crashed with {sig}"
    else:
        why = f"runner exited {proc.returncode} without a result"
    tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
    return {"ok": False, "error": why + (f": {tail[0][:300]}" if tail else "")}
