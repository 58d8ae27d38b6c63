"""Build and bench every target, for the default model and a realistic edge vision model, side by
side with the routes a user would otherwise take; write benchmarks/results/.

    .venv/bin/python -m benchmarks.run [--size 96] [--alpha 0.35] [--threads 1,2] [--min-seconds 1]

Models, both built and benched through the Python API (`pipeline.built`, `pipeline.bench`: what
`python -m pipeline bench --target all --legacy` does):
  digits-cnn    the default config.
  mobilenet-v2  Keras' MobileNetV2 (random init, width `--alpha`, `--size` px grey input), trained
                by this script on a Fashion-MNIST subset (a few epochs: a benchmark fixture, not a
                state of the art), then handed to the pipeline as a pretrained model
                (`[model] path`) with the same images as an .npz (`[data] path`); the pipeline
                prunes, fine-tunes with PQAT, exports and verifies it like any user model.
Peers, from the same float model (trained, not pruned), calibrated on the same samples:
  ptq-int8      plain post-training full-integer quantization (TFLiteConverter; no pruning, no QAT).
  onnx2tf-int8  tf2onnx (NCHW input) -> onnx2tf full-integer quantization, calibrated with `-cind`.
Each .tflite also runs in its legacy runtime (tflite-runtime 2.14, `bench --legacy`): what many boards run.
Then `python -m benchmarks.fidelity` compares our harness with benchmark_app / a bare LiteRT loop.

Outputs (small, commit-worthy): results/bench.json, bench.csv, results.md, chart.png, fidelity.json.
Work files (models, builds, caches) go to benchmarks/.work/ (not for committing).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pipeline
from benchmarks.common import FIDELITY_COLUMNS, float_mobilenet, log
from pipeline import benchmark as bench
from pipeline.releases.card import md_table
from pipeline.util import atomic_write_bytes, atomic_write_json, gzip_size, sha256_file
from targets import TARGETS, Target

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

RESULTS = HERE / "results"
WORK = HERE / ".work"
LEGACY = TARGETS["tflite-int8"].legacy_runner  # the peers are .tflite files too
PEERS = {
    "ptq-int8": "peer: plain PTQ int8 of the float model (TFLiteConverter; no pruning, no QAT)",
    "onnx2tf-int8": "peer: tf2onnx -> onnx2tf full-integer int8 of the float model",
}


def route(name: str, made_from: str | None = None) -> str:
    """`made_from`: the manifest's record of which file shipped (an int8 target keeps QAT's file or
    post-training int8 of the pruned model, whichever is closer to the original)."""
    if name in PEERS:
        return "peer"
    if made_from == "qat":
        return "pipeline: pruned + PQAT" + ("" if TARGETS[name].source == "qat" else " weights, post-training int8")
    return "pipeline: pruned, post-training int8" if TARGETS[name].needs_qat else "pipeline: pruned float"


# -- artifacts ------------------------------------------------------------------------------------


def artifact_row(target, path: Path, verified: dict) -> dict:
    row = {"target": target.name, "path": str(path), **verified}
    if path.exists():
        row.update(bytes=path.stat().st_size, gzip_bytes=gzip_size(path), sha256=sha256_file(path))
    return row


def ptq_int8(float_model, calib, out: Path, metadata: dict) -> Target:
    """Peer 1: the same converter settings as tflite-int8, applied to the float model as trained."""
    from targets import tflite

    t = Target(
        "ptq-int8",
        "tflite",
        PEERS["ptq-int8"],
        "model.tflite",
        "float",
        "run_litert.py",
        "int8",
        {"mode": "int8"},
        legacy_runner=LEGACY,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tflite.export(t, float_model, calib, out, metadata)
    return t


def onnx2tf_int8(float_model, calib, out: Path, work: Path) -> Target:
    """Peer 2: Keras -> tf2onnx (NCHW input, as onnx2tf expects) -> onnx2tf -oiqt, calibrated on our data."""
    import tensorflow as tf
    import tf2onnx

    t = Target(
        "onnx2tf-int8",
        "tflite",
        PEERS["onnx2tf-int8"],
        "model.tflite",
        "float",
        "run_litert.py",
        "int8",
        {},
        legacy_runner=LEGACY,
    )
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = (tf.TensorSpec((1, *float_model.input_shape[1:]), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(float_model, input_signature=spec, opset=17, inputs_as_nchw=["input"])
    (work / "model.onnx").write_bytes(proto.SerializeToString())
    shutil.copy(work / "model.onnx", work / "copy.onnx")  # onnx2tf overwrites its input with the simplified graph
    np.save(work / "calib.npy", calib.astype(np.float32))  # NHWC: "dimension order after conversion to TF"
    # onnx2tf 1.28.8 runs a test inference on this file name and tries to download it if absent.
    np.save(
        work / "calibration_image_sample_data_20x128x128x3_float32.npy",
        np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32),
    )
    venv_bin = str(Path(sys.executable).parent)  # onnxsim must be on PATH or onnx2tf silently skips it
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [
        str(Path(venv_bin) / "onnx2tf"),
        "-i",
        "copy.onnx",
        "-o",
        "out",
        "-oiqt",
        "-qt",
        "per-channel",
        "-cind",
        "input",
        "calib.npy",
        "[[[[0.0]]]]",
        "[[[[1.0]]]]",
    ]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    produced = work / "out" / "copy_full_integer_quant.tflite"
    if proc.returncode != 0 or not produced.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"onnx2tf failed ({proc.returncode}): {' | '.join(tail)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(produced, out)
    return t


def peers(b: pipeline.Build, folder: Path):
    """(target, artifact row, path) for each peer, made from the build's float model (trained, not
    pruned), calibrated on its samples and verified as its own artifacts; a peer that fails to convert
    is a failed row."""
    from pipeline import stages

    stages.tf_setup(b.config.build.seed)
    float_model = stages.load_model(b.stage_file("train", "model.h5"))
    calib = np.load(b.stage_file("data", "x_cal.npy"))
    m = b.manifest  # what the pipeline embeds in its own files
    metadata = {
        "model": m["model"],
        "version": m["model_version"],
        "target": "tflite-int8",
        "labels": m["labels"],
        "preprocessing": m["preprocessing"],
        "config_hash": m["config_hash"],
    }
    items = []
    for name, make in (
        ("ptq-int8", lambda p: ptq_int8(float_model, calib, p, metadata)),
        ("onnx2tf-int8", lambda p: onnx2tf_int8(float_model, calib, p, WORK / "onnx2tf" / folder.name)),
    ):
        path = folder / name / "model.tflite"
        log(f"{folder.name}: peer {name}")
        try:
            t = make(path)
        except Exception as e:
            t = Target(
                name, "tflite", PEERS[name], "model.tflite", "float", "run_litert.py", "int8", {}, legacy_runner=LEGACY
            )
            items.append((t, {"target": name, "status": "failed_build", "reason": str(e)[:300]}, None))
            continue
        items.append((t, artifact_row(t, path, b.verify_file(t, path)), path))
    return items


# -- the two models ---------------------------------------------------------------------------------


def mobilenet_config(args) -> Path:
    """Train the float MobileNetV2 once (kept by a key of its settings) and write the build config."""
    folder = float_mobilenet(WORK, args.size, args.alpha, args.epochs, args.train_samples, 1000)
    model_file, data_file = folder / "float.h5", folder / "data.npz"
    config = folder / "build.toml"
    config.write_text(f"""# Written by benchmarks/run.py
[model]
name = "mobilenet-v2"
path = "{model_file}"
[data]
path = "{data_file}"
calibration_samples = 300
[train]
batch_size = 64
[prune]
sparsity = 0.5
epochs = {args.prune_epochs}
[qat]
epochs = 1
[build]
max_accuracy_drop = 3.0
""")
    return config


def run_model(name: str, config: Path | None, args, threads: list[int]):
    """Build (or reuse) and bench every target, in its runtime and its legacy one; then the peers."""
    out = ROOT / "build" if config is None else WORK / "build"
    log(f"{name}: every target into {out}")
    b = pipeline.built(config, targets="all", out=out, log=log)
    rows = pipeline.bench(b, threads=threads, runs=args.runs, min_seconds=args.min_seconds, legacy=True, log=log)
    made_from = {a["target"]: a.get("made_from") for a in b.manifest["artifacts"]}
    for r in rows:
        r["route"] = route(r["target"], made_from.get(r["target"]))
    items = peers(b, WORK / "peers" / name)
    st = b.manifest["stages"]
    train, prune = st["train"], st["prune"]
    info = {
        "float": train.get("accuracy"),
        "pruned": prune.get("accuracy"),
        "sparsity": prune.get("sparsity"),
        "params": train.get("params"),
        "data": b.manifest["preprocessing"].get("source"),
    }
    if config is not None and (config.parent / "source.txt").exists():
        info["data"] = (config.parent / "source.txt").read_text().strip()
    return rows, items, b.eval_inputs(), out / b.name, info


# -- report ---------------------------------------------------------------------------------------


def bench_items(model: str, items, inputs: Path, threads: list[int], settings) -> list[dict]:
    from pipeline.devices import get_device

    device = get_device("local")
    rows = bench.bench_artifacts(items, [device], inputs, threads, settings, log=log)
    # Like `bench --legacy` for the pipeline's targets: the same files in the legacy runtime too.
    legacy = [(dataclasses.replace(t, runner=t.legacy_runner), a, p) for t, a, p in items if t.legacy_runner]
    rows += bench.bench_artifacts(legacy, [device], inputs, threads, settings, log=log)
    for r in rows:
        r["model"], r["route"] = model, route(r["target"])
    return rows


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for l2, a2 in points):
            front.append(i)
    return front


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5.5))
    for ax, model in zip(np.atleast_1d(axes), models):
        pts = [
            r
            for r in rows
            if r["model"] == model
            and r["status"] == "ok"
            and r["threads"] == 1
            and r["runtime"] != "tflite-runtime"
            and r.get("accuracy") is not None
        ]
        xy = [(r["p50_ms"], r["accuracy"]) for r in pts]
        front = set(pareto(xy))
        biggest = max(r["bytes"] for r in pts)
        for i, r in enumerate(pts):
            color = {"peer": "tab:red", "pipeline: pruned + PQAT": "tab:green"}.get(r["route"], "tab:blue")
            ax.scatter(
                r["p50_ms"],
                r["accuracy"],
                s=40 + 600 * r["bytes"] / biggest,
                alpha=0.55,
                color=color,
                edgecolors="black" if i in front else "none",
                linewidths=2,
            )
            ax.annotate(
                r["target"], (r["p50_ms"], r["accuracy"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        fx = sorted(xy[i] for i in front)
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "k--", lw=1, label="Pareto front (black edge)")
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, ms (1 thread, batch 1, log scale)")
        ax.set_ylabel("accuracy on the held-out split")
        ax.set_title(
            f"{model}: marker area = file size; green = pruned+PQAT, blue = pruned float, red = peers", fontsize=8
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def int8_ratios(rows: list[dict]) -> list[dict]:
    """p50(int8) / p50(fp32) per model, runtime and thread count: what integer kernels buy here."""
    out = []
    pairs = {
        "litert": ("tflite-fp32", "tflite-int8"),
        "tflite-runtime": ("tflite-fp32", "tflite-int8"),
        "onnxruntime": ("onnx-fp32", "onnx-int8"),
        "openvino": ("openvino-fp32", "openvino-int8"),
    }
    ok = {(r["model"], r["runtime"], r["target"], r["threads"]): r for r in rows if r["status"] == "ok"}
    for (model, runtime, target, threads), r in ok.items():
        if runtime in pairs and target == pairs[runtime][1]:
            fp32 = ok.get((model, runtime, pairs[runtime][0], threads))
            if fp32:
                out.append(
                    {
                        "model": model,
                        "runtime": runtime,
                        "threads": threads,
                        "fp32_p50_ms": fp32["p50_ms"],
                        "int8_p50_ms": r["p50_ms"],
                        "int8_over_fp32": r["p50_ms"] / fp32["p50_ms"],
                    }
                )
    return out


MD_COLUMNS = [
    ("target", "artifact"),
    ("route", "route"),
    ("runtime", "runtime"),
    ("threads", "thr"),
    ("status", "status"),
    ("quantization", "quantization"),
    ("kb", "KB"),
    ("accuracy", "accuracy"),
    ("load_ms", "load ms"),
    ("first_inference_ms", "first ms"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("std_ms", "std ms"),
    ("peak_rss_mb", "RSS MB"),
    ("runs", "runs"),
]


def markdown(rows, ratios, fidelity, header: str) -> str:
    md = md_table
    parts = [header]
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [
            {
                **r,
                "kb": round(r["bytes"] / 1024, 1) if r.get("bytes") else None,
                "status": r["status"] if r["status"] == "ok" else f"{r['status']}: {(r.get('error') or '')[:80]}",
            }
            for r in rows
            if r["model"] == model
        ]
        parts += [f"\n## {model}\n", md(rs, MD_COLUMNS)]
    parts += [
        "\n## int8 vs fp32 latency (p50 ratio, same runtime and threads; < 1 means int8 is faster)\n",
        md(
            ratios,
            [
                ("model", "model"),
                ("runtime", "runtime"),
                ("threads", "thr"),
                ("fp32_p50_ms", "fp32 p50 ms"),
                ("int8_p50_ms", "int8 p50 ms"),
                ("int8_over_fp32", "int8 / fp32"),
            ],
        ),
    ]
    if fidelity:
        parts += [
            "\n## Harness fidelity (median over rounds of our runner's p50 / reference p50; goal within 5 %)\n",
            md(fidelity, FIDELITY_COLUMNS),
            "\nLiteRT: the bare loop sets the input, invokes and reads the output, timed per call like the "
            "runner. OpenVINO: benchmark_app's median is `request.latency`, OpenVINO's C++ clock of each "
            "`infer()`. The wall ratio compares our per-call wall time (what a Python application pays: "
            "the binding costs 2-3 us a call) with it; the timer ratio compares the same clock read by our "
            "runner, like for like.",
        ]
    return "\n".join(parts) + "\n"


CSV_FIELDS = [
    "model",
    "target",
    "route",
    "runtime",
    "runtime_version",
    "delegate",
    "device",
    "threads",
    "status",
    "error",
    "quantization",
    "bytes",
    "gzip_bytes",
    "accuracy",
    "load_ms",
    "first_inference_ms",
    "min_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "max_ms",
    "throughput_per_s",
    "runs",
    "warmup",
    "peak_rss_mb",
    "cpu",
    "cpus_available",
    "loadavg_1m",
    "os",
    "arch",
    "python",
    "input",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96, help="MobileNetV2 input size in px (96..224)")
    p.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the float MobileNetV2")
    p.add_argument("--prune-epochs", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=3000)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--fidelity-rounds", type=int, default=5)
    args = p.parse_args(argv)
    t0 = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    threads = bench.parse_threads(args.threads)
    settings = bench.Settings(runs=args.runs, min_seconds=args.min_seconds)

    rows, infos, fidelity_args = [], {}, []
    for name, config in (("digits-cnn", None), ("mobilenet-v2", "mobilenet")):
        if config == "mobilenet":
            config = mobilenet_config(args)
        cli_rows, peer_items, inputs, model_dir, infos[name] = run_model(name, config, args, threads)
        rows += cli_rows + bench_items(name, peer_items, inputs, threads, settings)
        fidelity_args += [str(model_dir), str(inputs)]

    fid_file = RESULTS / "fidelity.json"
    log("harness fidelity")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.fidelity",
            *fidelity_args,
            "--rounds",
            str(args.fidelity_rounds),
            "--seconds",
            "1",
            "--json",
            str(fid_file),
            "--targets",
            "tflite-fp32,tflite-int8,openvino-fp32,openvino-int8",
        ],
        check=False,
        stdout=sys.stderr,
        cwd=ROOT,
    )
    fidelity = json.loads(fid_file.read_text()) if fid_file.exists() else []

    ratios = int8_ratios(rows)
    atomic_write_json(RESULTS / "bench.json", rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(RESULTS / "bench.csv", buf.getvalue().encode())
    ok = next((r for r in rows if r["status"] == "ok"), {})
    m = infos["mobilenet-v2"]
    header = (
        f"# Benchmark results\n\nMade by `.venv/bin/python -m benchmarks.run "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}` in {time.time() - t0:.0f} s on "
        f"{ok.get('cpu')} ({ok.get('cpus_available')} CPUs, shared with other jobs: load {ok.get('loadavg_1m')}), "
        f"{ok.get('os')} {ok.get('arch')}, Python {platform.python_version()}. Batch 1, real held-out "
        f"samples, {settings.warmup} warm-up runs then >= {settings.runs} runs and >= {settings.min_seconds:g} s "
        f"per row; each row is its own child process. One run on a shared 2-core machine: compare rows of "
        f"the same run, never across runs.\n\n"
        f'- digits-cnn: the default config (`pipeline.built(targets="all")`, then `pipeline.bench`).\n'
        f"- mobilenet-v2: Keras MobileNetV2 alpha {args.alpha}, {args.size}x{args.size}x1, "
        f"{m['params']} parameters, trained by benchmarks/run.py for {args.epochs} epochs on "
        f"{args.train_samples} images of {m['data']}, then given to the pipeline as a "
        f"pretrained model (`[model] path`). Float accuracy {m['float']:.4f}; pruned to "
        f"{m['sparsity']} sparsity: {m['pruned']:.4f}.\n"
        f"- Peers start from the same trained float model: {PEERS['ptq-int8']}; {PEERS['onnx2tf-int8']}.\n"
        f"- runtime tflite-runtime: the same .tflite files in the legacy tflite-runtime 2.14.\n\n"
        f"![accuracy vs latency](chart.png)\n"
    )
    text = markdown(rows, ratios, fidelity, header)
    atomic_write_bytes(RESULTS / "results.md", text.encode())
    chart(rows, RESULTS / "chart.png")
    print(text)
    log(f"done in {time.time() - t0:.0f} s: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
