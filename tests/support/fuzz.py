"""Fuzz harness: mutate valid artifacts and send them through `inspect` and the runners; send builds with
failed targets through every command.

    .venv/bin/python tests/support/fuzz.py BUILD_DIR/MODEL --cases 600 --seed 0

Each case is one seeded mutation (bit flips, truncation, or a random splice) of a .tflite, .onnx,
or OpenVINO .xml/.bin file. What must hold: the main process never dies, no child outlives its
timeout, and every failure comes back as a reason. Prints a summary table and JSON.

`with_failed_targets` copies a build and fails some of its targets as a build does (no file, or a file
that failed verification); `commands_on` runs bench (ok, failed, timed-out and not-built rows), release,
verify and the model card on it: none may end in `internal error` or a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests/support/fuzz.py
sys.path.insert(0, str(ROOT))

from pipeline import runner  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.inspection import inspect_file  # noqa: E402
from targets import TARGETS  # noqa: E402

MUTATIONS = ("bitflip", "truncate", "splice")


def mutate(data: bytes, rng: np.random.Generator, kind: str) -> bytes:
    b = bytearray(data)
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 17))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        b = b[: int(rng.integers(0, len(b)))]
    else:
        n = int(rng.integers(1, max(2, len(b) // 8)))
        src, dst = int(rng.integers(0, len(b) - n + 1)), int(rng.integers(0, len(b) - n + 1))
        chunk = bytes(b[src : src + n]) if rng.random() < 0.5 else rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        b[dst : dst + n] = chunk
    return bytes(b)


def short(text: str) -> str:
    """A failure reason without the numbers that make every case unique."""
    import re

    first = text.strip().splitlines()[0] if text.strip() else "?"
    return re.sub(r"\d+", "N", re.sub(r"/\S+", "PATH", first))[:90]


def one_case(i: int, seed: int, sources: list, inputs: Path, timeout: float) -> dict:
    rng = np.random.default_rng([seed, i])
    target, folder = sources[int(rng.integers(0, len(sources)))]
    kind = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
    victim = target.files[int(rng.integers(0, len(target.files)))]
    with tempfile.TemporaryDirectory() as tmp:
        for name in target.files:
            shutil.copyfile(folder / name, Path(tmp) / name)
        (Path(tmp) / victim).write_bytes(mutate((folder / victim).read_bytes(), rng, kind))
        model = Path(tmp) / target.filename
        t0 = time.perf_counter()
        try:
            inspect_file(model, timeout)
            inspected = "ok"
        except PipelineError as e:
            inspected = "error: " + short(str(e).split(": ", 1)[-1])
        run = runner.run(
            target.runner_path,
            model,
            ["--inputs", inputs, "--limit", 2, "--outputs", Path(tmp) / "o.npz"],
            timeout=timeout,
        )
        ran = "ok" if run["ok"] else "error: " + short(run["error"])
        seconds = time.perf_counter() - t0
    return {
        "case": i,
        "target": target.name,
        "file": victim,
        "mutation": kind,
        "inspect": inspected,
        "runner": ran,
        "seconds": round(seconds, 2),
    }


def with_failed_targets(src: Path, model: str, dest: Path, seed: int = 0) -> dict[str, str]:
    """Copy build folder `src` (with its cache) to `dest` and turn some of `model`'s targets into what a build
    with failed targets records, by a seeded draw: `failed_build` (the builder's row, no files) or
    `failed_verification` (files kept, a reason). At least one of each. Returns {target: status}."""
    from pipeline.builder import clean_target_dir, failed_build

    shutil.copytree(src, dest, symlinks=True)
    path = dest / model / "manifest.json"
    m = json.loads(path.read_text())
    rng = np.random.default_rng(seed)
    rows = m["artifacts"]
    order = [int(i) for i in rng.permutation(len(rows))]
    fates = {order[0]: "failed_build", order[1]: "failed_verification"}
    fates.update({i: str(rng.choice(["ok", "failed_build", "failed_verification"])) for i in order[2:]})
    for i, fate in fates.items():
        t = TARGETS[rows[i]["target"]]
        if fate == "failed_build":
            clean_target_dir(dest, model, t.name)
            rows[i] = failed_build(t, "RuntimeError: conv.cc:372 affine_quantization->zero_point (fuzz)")
        elif fate == "failed_verification":
            rows[i] = {**rows[i], "status": "failed_verification", "reason": "outputs: NaN or Inf (fuzz)"}
    path.write_text(json.dumps(m, indent=2))
    return {r["target"]: r["status"] for r in rows}


INTERNAL = ("internal error", "Traceback")


def cli(*args, timeout: float = 600) -> dict:
    """`python -m pipeline ARGS`: its exit code and output, and whether it ended in an internal error."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    text = proc.stdout + proc.stderr
    return {
        "command": " ".join(map(str, args[:1])),
        "returncode": proc.returncode,
        "internal": any(k in text for k in INTERNAL),
        "stderr": proc.stderr[-2000:],
    }


def commands_on(out: Path, statuses: dict[str, str], tmp: Path) -> list[dict]:
    """bench (rows ok, failed, timed out, not built), release (refused, then --allow-failed with those rows),
    verify and the model card on the build in `out` whose targets have `statuses`."""
    quick = ["--runs", 2, "--min-seconds", 0, "--warmup", 0, "--samples", 2]
    runs = [cli("bench", "--out", out, *quick, "--json", tmp / "bench.json")]
    runs.append(cli("bench", "--out", out, *quick, "--timeout", 0.01, "--json", tmp / "timed_out.json"))
    rows = [
        r for f in ("bench.json", "timed_out.json") if (tmp / f).exists() for r in json.loads((tmp / f).read_text())
    ]
    (tmp / "all.json").write_text(json.dumps(rows))
    runs.append(cli("release", "--out", out, "--version", "1.0.0", "--dist", tmp / "dist"))
    allow = [a for t, s in statuses.items() if s != "ok" for a in ("--allow-failed", t)]
    release = ["release", "--out", out, "--version", "1.0.1", "--dist", tmp / "dist", *allow]
    runs.append(cli(*release, "--bench", tmp / "all.json"))
    for folder in sorted((tmp / "dist").glob("*-1.0.1")):
        runs.append(cli("verify", folder))
    for r, what in zip(runs, ("bench", "bench timed out", "release refused", "release --allow-failed", "verify")):
        r["command"] = what
    return runs


def sweep_with_a_failing_variant(src: Path, config: Path, out: Path) -> tuple[dict, list[dict]]:
    """A sweep over the build in `src` (its cache copied: nothing but the failing stage runs) whose second variant
    prunes at an absurd learning rate: its pruned model turns NaN and fails at prune. Returns (run, rows)."""
    out.mkdir(parents=True)
    shutil.copytree(src / ".cache", out / ".cache", symlinks=True)
    grid = ["--grid", "prune.learning_rate=0.001,1e30", "--target", "tflite-fp32"]  # no QAT to plan
    quick = ["--runs", 2, "--min-seconds", 0, "--samples", 2, "--json", out / "rows.json"]
    run = cli("sweep", "--config", config, *grid, "--out", out, *quick)
    run["command"] = "sweep"
    rows = json.loads((out / "rows.json").read_text()) if (out / "rows.json").exists() else []
    return run, rows


def fuzz(model_dir: Path, cases: int, seed: int = 0, timeout: float = 20.0, workers: int = 2) -> dict:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    sources = [
        (TARGETS[a["target"]], model_dir / a["target"])
        for a in manifest["artifacts"]
        if a["status"] == "ok" and a["target"] in TARGETS
    ]
    shape = manifest["artifacts"][0]["inputs"][0]["shape"][1:]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "x.npy"
        np.save(inputs, np.random.default_rng(seed).random((2, *shape), dtype=np.float32))
        crashes, results = [], []

        def guarded(i):
            try:
                return one_case(i, seed, sources, inputs, timeout)
            except Exception as e:
                crashes.append(f"case {i}: {type(e).__name__}: {e}")
                return None

        with ThreadPoolExecutor(workers) as pool:
            results = [r for r in pool.map(guarded, range(cases)) if r is not None]
    # Two children per case, each bounded by `timeout`; more than that is a hang.
    hangs = [r for r in results if r["seconds"] > 2 * timeout + 5]
    reasons = Counter(r[k] for r in results for k in ("inspect", "runner") if r[k] != "ok")
    silent = [r for r in results if r["runner"] == "error: ?" or r["inspect"] == "error: ?"]
    return {
        "cases": cases,
        "completed": len(results),
        "main_process_crashes": len(crashes),
        "crash_details": crashes,
        "hangs": len(hangs),
        "failures_without_reason": len(silent),
        "runner_failed": sum(r["runner"] != "ok" for r in results),
        "inspect_failed": sum(r["inspect"] != "ok" for r in results),
        "both_ok": sum(r["runner"] == "ok" and r["inspect"] == "ok" for r in results),
        "crashed_children": sum("crashed with SIG" in r["runner"] for r in results),
        "timeouts": sum("timed out" in r["runner"] or "timed out" in r["inspect"] for r in results),
        "distinct_reasons": len(reasons),
        "top_reasons": reasons.most_common(12),
        "by_target": dict(Counter(r["target"] for r in results)),
        "seed": seed,
        "timeout_s": timeout,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path, help="BUILD/<model> with manifest.json (build --target all first)")
    p.add_argument("--cases", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    t0 = time.perf_counter()
    s = fuzz(args.model_dir, args.cases, args.seed, args.timeout)
    s["wall_seconds"] = round(time.perf_counter() - t0, 1)
    for k in (
        "cases",
        "completed",
        "main_process_crashes",
        "hangs",
        "failures_without_reason",
        "inspect_failed",
        "runner_failed",
        "crashed_children",
        "timeouts",
        "both_ok",
        "distinct_reasons",
        "wall_seconds",
    ):
        print(f"{k:<26} {s[k]}")
    for reason, n in s["top_reasons"]:
        print(f"{n:>5}  {reason}")
    if args.json:
        args.json.write_text(json.dumps(s, indent=2))
    return 0 if s["main_process_crashes"] == 0 and s["hangs"] == 0 and s["failures_without_reason"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
