"""The native runner (targets/native/edge_bench.c) measured: against OpenVINO's benchmark_app, against
the Python runners on the same artifacts, and in instructions on the emulated Pi 4 and Pi 5.

    .venv/bin/python -m benchmarks.native_fidelity [--out DIR] [--rounds 5] [--no-emu]

Builds every target of the default digits model into --out (default build/native-fidelity/, a
cache hit after the first run), then, on its first 100 held-out samples, 1 thread:
  1. OpenVINO IRs: native p50 / benchmark_app median (sync, 1 request, 1 stream, -hint none,
     -nthreads 1, f32: benchmarks/common.py, as benchmarks/fidelity.py calls it), goal within 5 %;
  2. every target: Python runner p50 / native p50 (what the Python binding and its harness add);
  1 and 2 alternate, back to back, for --rounds rounds; each ratio is the median over rounds.
  3. emu:rpi4 and emu:rpi5: guest instructions per inference, native and Python, every target (the
     devices' own sections: 3 x 10 inferences after 2 warm-up runs, median), and int8 / fp32 per runtime.
Writes benchmarks/results/native_fidelity.{json,md}. Imports TensorFlow only when --out holds no build.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pipeline
from benchmarks.common import benchmark_app_p50
from pipeline import benchmark as bench
from pipeline import native, runner
from pipeline.devices.emulated import EmuDevice
from targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "digits-cnn"
GOAL = 0.05
INT8_PAIRS = {
    "litert": ("tflite-int8", "tflite-fp32"),
    "onnxruntime": ("onnx-int8", "onnx-fp32"),
    "openvino": ("openvino-int8", "openvino-fp32"),
}


def build(out: Path) -> tuple[dict[str, Path], Path]:
    """Every target of the default model in `out` (the recorded build, or built): artifacts and held-out samples."""
    b = pipeline.built(targets="all", out=out)
    return {n: a.path for n, a in b.artifacts.items() if a.status == "ok"}, b.eval_inputs()


def p50(res: dict) -> float:
    if not res.get("ok"):
        raise RuntimeError(res.get("error"))
    return res["latency"]["p50_ms"]


def x86_round(arts: dict[str, Path], x: Path, xs: np.ndarray, seconds: float) -> dict[str, dict]:
    args = ["--inputs", x, "--bench", "--threads", "1", "--warmup", "50", "--runs", "1000", "--min-seconds", seconds]
    out = {}
    for name, path in arts.items():
        t = TARGETS[name]
        nat = p50(native.run_local(t.runner_path, path, args, 120))
        # both in f32, as the runners are by default: benchmark_app's -infer_precision f32
        app = benchmark_app_p50(path, xs, 1, seconds) if t.runner == "run_openvino.py" else None
        py = runner.run(t.runner_path, path, args, timeout=120)
        out[name] = {
            "native_p50_ms": nat,
            "python_p50_ms": p50(py),
            "benchmark_app_p50_ms": app,
            "python_runtime_p50_ms": (py.get("runtime_latency") or {}).get("p50_ms"),
        }
    return out


def emu_counts(arts: dict[str, Path], x: Path) -> dict:
    settings = bench.Settings(runs=10, min_seconds=0, warmup=2, samples=100)
    items = [(TARGETS[n], {}, p) for n, p in arts.items()]
    out = {}
    for profile in ("emu:rpi4", "emu:rpi5"):
        for harness, device in (("native", native.get_device(profile)), ("python", EmuDevice(profile))):
            for row in bench.bench_artifacts(items, [device], x, [1], settings):
                out.setdefault(profile, {}).setdefault(row["target"], {})[harness] = {
                    "instructions_per_inference": row.get("instructions_per_inference"),
                    "top1_agreement_vs_x86": row.get("top1_agreement_vs_x86"),
                    "max_abs_diff_vs_x86": row.get("max_abs_diff_vs_x86"),
                    "status": row["status"],
                    "error": row.get("error"),
                }
    return out


def _ratio(a: dict, b: dict) -> float | None:
    n, d = a["instructions_per_inference"], b["instructions_per_inference"]
    return n / d if n and d else None


def markdown(res: dict) -> str:
    lines = [
        f"# Native runner fidelity ({res['model']}, 1 thread, {res['rounds']} rounds, {res['seconds']} s each)",
        "",
        f"`{res['command']}`; {res['cpu']}, load {res['loadavg_1m']} at the start; {res['elapsed_s']:.0f} s.",
        "",
        "| target | native p50 ms | Python runner p50 ms | Python / native | benchmark_app p50 ms | native / benchmark_app |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["x86"].items():
        app = (
            f"{r['benchmark_app_p50_ms']:.4f} | {r['native_vs_benchmark_app']:.3f}"
            if r["benchmark_app_p50_ms"]
            else " | "
        )
        lines.append(
            f"| {name} | {r['native_p50_ms']:.4f} | {r['python_p50_ms']:.4f} | {r['python_vs_native']:.2f} | {app} |"
        )
    for profile, rows in res.get("emu", {}).items():
        lines += [
            "",
            f"## {profile}: guest instructions per inference",
            "",
            "| target | native | Python runner | Python - native | native top-1 vs x86 |",
            "|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            n, p = r["native"]["instructions_per_inference"], r["python"]["instructions_per_inference"]
            cell = {h: f"{v:,}" if v else f"failed: {r[h]['error']}" for h, v in (("native", n), ("python", p))}
            diff = f"{p - n:,}" if n and p else ""
            lines.append(
                f"| {name} | {cell['native']} | {cell['python']} | {diff} | {r['native']['top1_agreement_vs_x86']} |"
            )
        lines += ["", "| runtime | int8 / fp32 native | int8 / fp32 Python |", "|---|---|---|"]
        for rt, ratio in res["int8_fp32"][profile].items():
            lines.append(f"| {rt} | {ratio['native'] or float('nan'):.2f} | {ratio['python'] or float('nan'):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "native-fidelity")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per measurement (default 1)")
    p.add_argument("--no-emu", action="store_true", help="skip the emulated boards")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    arts, eval_inputs = build(args.out)
    xs = np.load(eval_inputs)[:100]
    x = args.out / "x100.npy"
    np.save(x, xs)
    rounds = [x86_round(arts, x, xs, args.seconds) for _ in range(args.rounds)]
    x86 = {}
    for name in arts:
        rs = [r[name] for r in rounds]
        row = {k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None for k in rs[0]}
        row["python_vs_native"] = statistics.median(r["python_p50_ms"] / r["native_p50_ms"] for r in rs)
        if row["benchmark_app_p50_ms"]:
            row["native_vs_benchmark_app"] = statistics.median(
                r["native_p50_ms"] / r["benchmark_app_p50_ms"] for r in rs
            )
            row["within_goal"] = abs(row["native_vs_benchmark_app"] - 1) <= GOAL
        row["rounds"] = rs
        x86[name] = row
    first = runner.run(TARGETS["tflite-fp32"].runner_path, arts["tflite-fp32"], ["--inputs", x])
    res = {
        "model": MODEL,
        "command": "python -m benchmarks.native_fidelity " + " ".join(argv or sys.argv[1:]),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "cpu": first["conditions"]["cpu"],
        "loadavg_1m": first["conditions"]["loadavg_1m"],
        "x86": x86,
    }
    if not args.no_emu:
        res["emu"] = emu_counts(arts, x)
        res["int8_fp32"] = {
            profile: {
                rt: {h: _ratio(rows[i8][h], rows[f32][h]) for h in ("native", "python")}
                for rt, (i8, f32) in INT8_PAIRS.items()
            }
            for profile, rows in res["emu"].items()
        }
    res["elapsed_s"] = time.monotonic() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "native_fidelity.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "native_fidelity.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
