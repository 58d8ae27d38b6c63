"""Harness fidelity: does `bench` (a runner in a child process) report the latency a reference tool does?

    .venv/bin/python -m benchmarks.fidelity MODEL_DIR INPUTS.npy [MODEL_DIR INPUTS.npy ...] [--json FILE]

MODEL_DIR is a build's OUT/<model>/ folder (tflite-*/model.tflite, openvino-*/model.xml); INPUTS.npy
its held-out samples (`Build.eval_inputs()`). For each artifact, with the same threads and inputs:
  - LiteRT: our runner's p50 vs a bare loop in this process (set input, invoke, read output,
    each call timed with perf_counter; no harness in between);
  - OpenVINO: our runner's p50 (--precision f32) vs OpenVINO's own `benchmark_app` median
    (sync API, one request, one stream, -hint none, f32 inference precision). benchmark_app's
    median is OpenVINO's C++ clock of each infer (InferRequest.latency); our runner reads that
    clock too, so both the wall ratio (ours includes the Python binding) and the like-for-like
    runtime-timer ratio are reported.
Reference and runner alternate for --rounds rounds, back to back, so slow drift of a shared
machine hits both. The figure is the median over rounds of ours / reference; 1.00 is perfect.

Never imports TensorFlow (tflite-runtime and LiteRT timings must not share a process with it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import FIDELITY_COLUMNS, benchmark_app_p50
from pipeline import report, runner
from targets import TARGETS

GOAL = 0.05  # within 5 %


def litert_bare_p50(model: Path, x: np.ndarray, threads: int, warmup: int, runs: int, seconds: float) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    feeds = [s[None].astype(np.float32) for s in x]
    scale, zp = inp["quantization"]
    if inp["dtype"] != np.float32 and scale:
        info = np.iinfo(inp["dtype"])
        feeds = [np.clip(np.round(f / scale) + zp, info.min, info.max).astype(inp["dtype"]) for f in feeds]
    for i in range(warmup + 1):
        it.set_tensor(inp["index"], feeds[i % len(feeds)])
        it.invoke()
    times = []
    start = time.perf_counter()
    i = 0
    while i < runs or time.perf_counter() - start < seconds:
        x = feeds[i % len(feeds)]
        t = time.perf_counter()
        it.set_tensor(inp["index"], x)
        it.invoke()
        it.get_tensor(out["index"])
        times.append(time.perf_counter() - t)
        i += 1
    return float(np.median(times)) * 1e3


def runner_p50(
    target, model: Path, inputs: Path, threads: int, warmup: int, runs: int, seconds: float, options=()
) -> tuple[float, float | None]:
    """(wall-clock p50, the runtime's own-timer p50 or None), in ms."""
    res = runner.run(
        target.runner_path,
        model,
        [
            "--inputs",
            inputs,
            "--bench",
            "--threads",
            threads,
            "--warmup",
            warmup,
            "--runs",
            runs,
            "--min-seconds",
            seconds,
            "--limit",
            100,
            *options,
        ],
    )
    if not res["ok"]:
        raise RuntimeError(res["error"])
    return res["latency"]["p50_ms"], (res.get("runtime_latency") or {}).get("p50_ms")


def compare(model_dir: Path, inputs: Path, threads: int, rounds: int, seconds: float, only, log) -> list[dict]:
    x = np.load(inputs)[:100]
    rows = []
    for target in TARGETS.values():
        path = model_dir / target.name / target.filename
        if not path.exists() or target.family not in ("tflite", "openvino") or (only and target.name not in only):
            continue
        if target.family == "tflite":
            ref_name = "bare LiteRT loop, same process"
            reference = lambda: litert_bare_p50(path, x, threads, 10, 100, seconds)
            ours = lambda: runner_p50(target, path, inputs, threads, 10, 100, seconds)
        else:
            ref_name = "benchmark_app (sync, 1 request, f32)"
            reference = lambda: benchmark_app_p50(path, x, threads, seconds)
            ours = lambda: runner_p50(
                target,
                path,
                inputs,
                threads,
                10,
                100,
                seconds,
                ["--precision", "f32"],
            )
        mine, own, theirs = [], [], []
        try:
            for r in range(rounds):
                for fn in (ours, reference) if r % 2 == 0 else (reference, ours):
                    if fn is ours:
                        wall, timer = fn()
                        mine.append(wall)
                        own.append(timer)
                    else:
                        theirs.append(fn())
        except RuntimeError as e:
            rows.append({"model": model_dir.name, "target": target.name, "reference": ref_name, "error": str(e)})
            log(f"{model_dir.name} {target.name}: {e}")
            continue
        p_ours, p_ref = float(np.median(mine)), float(np.median(theirs))
        # Each round's two timings ran back to back: their ratio is what drift of the machine's
        # load disturbs least, so the figure is the median of the per-round ratios.
        round_ratios = [a / b for a, b in zip(mine, theirs)]
        ratio = float(np.median(round_ratios))
        row = {
            "model": model_dir.name,
            "target": target.name,
            "threads": threads,
            "reference": ref_name,
            "ours_p50_ms": p_ours,
            "reference_p50_ms": p_ref,
            "ratio": ratio,
            "within_5pct": abs(ratio - 1) <= GOAL,
            "round_ratios": round_ratios,
            "rounds": rounds,
            "seconds_each": seconds,
        }
        if None not in own:  # OpenVINO: its own clock of the same inferences, like for like with benchmark_app
            timer_ratio = float(np.median([a / b for a, b in zip(own, theirs)]))
            row.update(
                {
                    "ours_runtime_timer_p50_ms": float(np.median(own)),
                    "runtime_timer_ratio": timer_ratio,
                    "runtime_timer_within_5pct": abs(timer_ratio - 1) <= GOAL,
                }
            )
        rows.append(row)
        log(
            f"{model_dir.name} {target.name}: ours {p_ours:.4g} ms / {ref_name} {p_ref:.4g} ms = {ratio:.3f}"
            + (f"; runtime timer {row['runtime_timer_ratio']:.3f}" if "runtime_timer_ratio" in row else "")
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", help="MODEL_DIR INPUTS.npy pairs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="each timing lasts at least this long")
    p.add_argument("--targets", help="comma list of target names to compare (default: every tflite and openvino one)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    only = set(args.targets.split(",")) if args.targets else None
    if len(args.pairs) % 2:
        p.error("give MODEL_DIR INPUTS.npy pairs")
    rows = []
    for model_dir, inputs in zip(args.pairs[::2], args.pairs[1::2]):
        rows += compare(
            Path(model_dir),
            Path(inputs),
            args.threads,
            args.rounds,
            args.seconds,
            only,
            log=lambda m: print(m, file=sys.stderr),
        )
    print(report.table(rows, FIDELITY_COLUMNS))
    if args.json:
        from pipeline.util import atomic_write_json

        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
