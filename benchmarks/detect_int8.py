"""int8 on YOLO-family detectors, judged by their boxes: this project's post-training choice against each peer's
plain default.

    .venv/bin/python -m benchmarks.detect_int8 [--models yolov8n_320,yolo11n_320,yolov5nu_320] [--cal 64]
        [--val 32] [--test 60] [--targets onnx-int8,...] [--only ...] [--skip ...]

Detectors (DETECTORS, env EDGE_EXPORT_DETECTORS, default /tmp/detectors): `NAME.onnx` beside `data_IMGSZ.npz`
and `data_IMGSZ/` (IMGSZ: NAME's suffix), as scripts/make_detector.py writes them. Recreate one (a throwaway
venv with torch and ultralytics, AGPL-3.0: it makes the benchmark's model, the package never imports it):

    /tmp/yolo-venv/bin/python scripts/make_detector.py /tmp/detectors --arch yolov8n --imgsz 320 --epochs 12 --images 240

Data: the npz's `x` (its val pictures, never trained on) is the test split; calibration and validation samples
(what the choice sees) are pictures of its train folder, read as the ONNX file takes them (RGB, 0..1, NCHW).

Every file (the peers' and this project's) runs on the test split in its own runtime; its output is decoded and
NMS'd (score 0.25, IoU 0.45, targets/detect.py), and its boxes are compared with the ORIGINAL ONNX model's boxes
on the same pictures: F1 (a box matches an original box of the same class at IoU >= 0.5) and mAP50 with the
original's boxes as ground truth.

Peers, each with its plain defaults:
  onnx:     onnxruntime quantize_static (QDQ, per-channel, MinMax) after quant_pre_process; NNCF on the ONNX graph;
  openvino: NNCF `nncf.quantize` on the OpenVINO model, default and MIXED preset;
  tflite:   TFLiteConverter full-int8 of the Keras model the tflite targets start from (onnx2tf's).
This project: what `pipeline.build` with default settings makes of the user's ONNX file, read back from its
artifacts (`user_build`). Goal per int8 target: box F1 >= GOAL_F1 and >= the best peer's of that target +
GOAL_POINTS (the best peer of any target is shown beside it).
Results: benchmarks/results/detect_int8.{md,json}, with the CPU they ran on (pipeline.isa).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import built_artifacts

ROOT = Path(__file__).resolve().parent.parent
DETECTORS = Path(os.environ.get("EDGE_EXPORT_DETECTORS", "/tmp/detectors"))
RESULTS = ROOT / "benchmarks" / "results"
GOAL_F1, GOAL_POINTS = 0.95, 0.03
"""Issue 28: every int8 target's box F1 vs the original >= 0.95 and >= the best peer default + 3 points."""
OURS = "this project: pipeline.build, defaults"


def detector(name: str):
    """The ONNX file, and its pictures: (train pictures for calibration/validation, test pictures), NCHW 0..1."""
    from PIL import Image

    path = DETECTORS / f"{name}.onnx"
    size = int(name.split("_")[1])  # ARCH_IMGSZ[_dynamic]
    if not path.exists():
        sys.exit(
            f"error: {path} missing; make it with: /tmp/yolo-venv/bin/python scripts/make_detector.py {DETECTORS} "
            f"--arch {name.split('_')[0]} --imgsz {size}{' --dynamic' if name.endswith('_dynamic') else ''}"
        )
    with np.load(DETECTORS / f"data_{size}.npz") as z:
        test = z["x"].astype(np.float32)
    pictures = sorted((DETECTORS / f"data_{size}" / "train" / "images").glob("*.png"))
    train = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) / 255 for p in pictures])
    return path, train, test


def boxes_of(outs: list[np.ndarray]) -> list:
    """Each picture's boxes after decode and NMS (targets/detect.py's defaults)."""
    from targets import detect

    return detect.decode(outs[0], detect.layout_of(outs[0].shape))


def figures(outs, ref_boxes) -> dict:
    from targets import detect

    got = boxes_of(outs)
    return {
        "box_f1": round(detect.box_f1(ref_boxes, got), 4),
        "map50": round(detect.map50(ref_boxes, got), 4),
        "boxes": int(sum(len(b[0]) for b in got)),
    }


def outputs(kind: str, model, x: np.ndarray) -> list[np.ndarray]:
    from targets.ptq import onnx, openvino, tflite

    if kind == "onnx":
        return onnx.onnx_outputs(model, x)
    if kind == "openvino":
        return openvino.openvino_outputs(model, x)
    return tflite.tflite_outputs(model, x.transpose(0, 2, 3, 1) if _nhwc(model) else x)


def _nhwc(model: bytes) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    shape = Interpreter(model_content=bytes(model)).get_input_details()[0]["shape"]
    return shape[-1] == 3


def saved(kind: str, model, folder: Path, name: str) -> Path:
    """The model written as its target writes it (to read its size and quantization back)."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "tflite":
        path = folder / f"{name}.tflite"
        path.write_bytes(bytes(model))
    elif kind == "onnx":
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
    else:
        from targets.openvino import import_openvino

        path = folder / f"{name}.xml"
        import_openvino().save_model(model, str(path), compress_to_fp16=False)
    return path


def evaluate(kind: str, model, test: np.ndarray, ref_boxes, folder: Path, name: str) -> dict:
    import targets.onnx
    import targets.openvino
    import targets.tflite

    t = time.perf_counter()
    outs = outputs(kind, model, test)
    ms = (time.perf_counter() - t) * 1000 / len(test)
    path = saved(kind, model, folder, name)
    info = {"onnx": targets.onnx, "openvino": targets.openvino, "tflite": targets.tflite}[kind].inspect(path)
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if kind == "openvino" else 0)
    return {
        **figures(outs, ref_boxes),
        "bytes": size,
        "ms_per_picture": round(ms, 2),
        "quantization": info["quantization"],
    }


def user_build(name: str, src: Path, cal, val, test, targets, out: Path, log):
    """`pipeline.build` as a user runs it: the user's ONNX file, default settings, the int8 targets, the calibration
    and validation pictures as the data to build from (it splits them itself), the test pictures held out."""
    import pipeline

    out.mkdir(parents=True)
    np.savez(out / "data.npz", x_train=np.concatenate([cal, val]), x_test=test)
    log(f"{name}: pipeline.build {','.join(targets)} (defaults)")
    t = time.perf_counter()
    manifest = pipeline.build(
        {"model": {"name": name}}, targets=targets, out=out, model=str(src), data=str(out / "data.npz")
    ).manifest
    log(f"  built in {time.perf_counter() - t:.0f} s")
    return built_artifacts(out, manifest)


def peers(src: Path, cal: np.ndarray, keras_model) -> list[tuple[str, str, object]]:
    """(target, who, make) of every peer default."""
    from targets.openvino import float_ir, import_nncf
    from targets.ptq import onnx as ptq_onnx
    from targets.ptq import openvino as ptq_openvino
    from targets.ptq import tflite as ptq_tflite

    def nncf_onnx():
        import onnx

        nncf = import_nncf()
        proto = onnx.load(str(src))
        name = proto.graph.input[0].name
        data = nncf.Dataset(cal, lambda x: {name: x[None].astype(np.float32)})
        return nncf.quantize(proto, data, subset_size=len(cal))

    def nncf_ov(**kw):
        return ptq_openvino.nncf_openvino(lambda: float_ir(src), cal, advanced_parameters=None, **kw)

    rows = [
        (
            "onnx-int8",
            "peer: onnxruntime quantize_static per-channel",
            lambda: ptq_onnx.ort_static(src, cal, kind="s8s8"),
        ),
        ("onnx-int8", "peer: NNCF on the ONNX graph", nncf_onnx),
        ("openvino-int8", "peer: NNCF on the OpenVINO model", nncf_ov),
        (
            "openvino-int8",
            "peer: NNCF on the OpenVINO model, MIXED preset",
            lambda: nncf_ov(preset=import_nncf().QuantizationPreset.MIXED),
        ),
    ]
    if keras_model is not None:
        rows.insert(
            0,
            (
                "tflite-int8",
                "peer: TFLiteConverter full-int8",
                lambda: ptq_tflite.converter_int8(keras_model, cal.transpose(0, 2, 3, 1)),
            ),
        )
    return rows


DIRECT = "this project: targets.ptq's choice, called directly"


def direct(src: Path, cal: np.ndarray, val: np.ndarray, keras_model) -> list[tuple[str, object]]:
    """(target, make) of this project's post-training choice called without pipeline.build (`--direct`: for a model
    the build stops on): the same candidates and box-F1 ranking, on this run's calibration and validation
    pictures, against the original ONNX model's outputs on them."""
    from targets import ptq
    from targets.openvino import float_ir
    from targets.ptq import onnx as ptq_onnx
    from targets.ptq import openvino as ptq_openvino
    from targets.ptq import tflite as ptq_tflite

    settings = ptq.Settings(val, reference=ptq_onnx.onnx_outputs(src, val))
    rows = [
        ("onnx-int8", lambda: ptq.choose(ptq_onnx.Backend(src, cal), settings)),
        (
            "openvino-int8",
            lambda: ptq.choose(ptq_openvino.Backend(lambda path=src: float_ir(path), cal, src), settings),
        ),
    ]
    if keras_model is not None:
        nhwc = ptq.Settings(val.transpose(0, 2, 3, 1), reference=settings.reference)
        backend = lambda: ptq_tflite.Backend(keras_model, cal.transpose(0, 2, 3, 1))
        rows.insert(0, ("tflite-int8", lambda: ptq.choose(backend(), nhwc)))
    return rows


def keras_of(src: Path, cal: np.ndarray, tmp: Path, log):
    """The Keras model the tflite targets start from (targets.onnx's conversion of the user's file), or None."""
    try:
        from pipeline.models import _from_onnx

        return _from_onnx(src, [1, *cal.shape[1:]], tmp)  # a free-shape export: fixed to the pictures' size
    except Exception as e:  # the tflite rows then say so
        log(f"  no Keras model from onnx2tf: {type(e).__name__}: {str(e)[:200]}")
        return None


def run_model(name: str, args, log) -> dict:
    from targets.ptq.onnx import onnx_outputs

    rng = np.random.default_rng(args.seed)
    src, train, test = detector(name)
    order = rng.permutation(len(train))
    cal, val = train[order[: args.cal]], train[order[args.cal : args.cal + args.val]]
    test = test[: args.test]
    ref_boxes = boxes_of(onnx_outputs(src, test))
    tmp = Path(tempfile.mkdtemp(prefix=f"detect_int8_{name}_"))
    rows = []
    wanted = lambda target, who: (
        (not args.targets or target in args.targets)
        and (not args.only or any(s in who for s in args.only))
        and not (args.skip and any(s in who for s in args.skip))
    )
    try:
        keras_model = keras_of(src, cal, tmp, log) if wanted("tflite-int8", "peer") else None
        jobs = [(t, w, m) for t, w, m in peers(src, cal, keras_model) if wanted(t, w)]
        ours = [t for t in ("tflite-int8", "onnx-int8", "openvino-int8") if wanted(t, OURS)]
        if ours:
            try:
                artifact = user_build(name, src, cal, val, test, ours, tmp / "build", log)
            except Exception as e:  # the build itself stopped: every row of ours says why
                failed = f"pipeline.build stopped: {type(e).__name__}: {str(e).strip()[:240]}"
                log(f"  {failed}")

                def artifact(target, failed=failed):
                    raise RuntimeError(failed)

            jobs += [(t, OURS, lambda t=t: artifact(t)) for t in ours]
        if args.direct:
            jobs += [(t, DIRECT, m) for t, m in direct(src, cal, val, keras_model) if wanted(t, DIRECT)]
        for target, who, make in jobs:
            log(f"{name}: {target} {who}")
            t = time.perf_counter()
            try:
                made = make()
                model, record = made if isinstance(made, tuple) else (made, None)
                seconds = round(time.perf_counter() - t, 1)
                if who == OURS:
                    seconds, record = record["build_seconds"], {**(record.get("ptq") or {}), "status": record["status"]}
                slug = f"{target}-{who.split(':')[-1].strip().replace(' ', '_').replace(',', '')}"[:60]
                row = {"model": name, "target": target, "who": who, "build_seconds": seconds}
                row.update(evaluate(target.split("-")[0], model, test, ref_boxes, tmp / "files", slug))
            except Exception as e:  # one method failing on a model is a result; the others still run
                rows.append({"model": name, "target": target, "who": who, "error": f"{type(e).__name__}: {e}"[:300]})
                log(f"  failed: {rows[-1]['error']}")
                continue
            if record:
                row["choice"] = record
            rows.append(row)
            log(f"  box F1 {row['box_f1']:.4f} mAP50 {row['map50']:.4f} {row['quantization']} {row['bytes']} B")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": name,
        "original": f"ONNX {src.name} (Ultralytics export), onnxruntime fp32",
        "samples": {"calibration": len(cal), "validation": len(val), "test": len(test)},
        "original_boxes": int(sum(len(b[0]) for b in ref_boxes)),
        "rows": rows,
    }


def verdict(rows: list[dict]) -> list[dict]:
    """Each of this project's rows against the best peer default of its target (as int8_real): goal
    max(GOAL_F1, best + GOAL_POINTS); and the best peer of any target, for reference."""
    ok = [r for r in rows if "error" not in r]
    peers = [r for r in ok if r["who"].startswith("peer")]
    out = []
    for r in ok:
        same = [p["box_f1"] for p in peers if p["target"] == r["target"]]
        if r["who"] not in (OURS, DIRECT) or not same:
            continue
        best = max(same)
        goal = min(max(GOAL_F1, best + GOAL_POINTS), 1.0)
        out.append(
            {
                "target": r["target"],
                "box_f1": r["box_f1"],
                "best_peer_box_f1": best,
                "points": round(100 * (r["box_f1"] - best), 2),
                "meets_goal": r["box_f1"] >= goal - 1e-9,
                "best_peer_any_target": max(p["box_f1"] for p in peers),
            }
        )
    return out


def markdown(results: list[dict], command: str, cpu: dict) -> str:
    lines = [
        "# int8 on YOLO-family detectors, judged by their boxes: this project against each peer's default",
        "",
        f"Command: `{command}`. CPU: {cpu['cpu']} ({cpu['label']}). Every figure is on the test pictures (never "
        "seen by the choice), against the ORIGINAL ONNX model's boxes (decode + NMS at score 0.25 / IoU 0.45): "
        "box F1 (same class, IoU >= 0.5) and mAP50 with the original's boxes as ground truth. Goal per int8 "
        f"target: box F1 >= {GOAL_F1} and >= the best peer default of that target + {100 * GOAL_POINTS:.0f} points.",
        "",
    ]
    for res in results:
        s = res["samples"]
        lines += [
            f"## {res['model']}",
            "",
            f"Original: {res['original']}, {res['original_boxes']} boxes on the test pictures. Pictures: calibration "
            f"{s['calibration']}, validation {s['validation']}, test {s['test']}.",
            "",
            "| target | who | quantization (read back) | box F1 | mAP50 | boxes | bytes | ms / picture | build s | chosen |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['target']} | {r['who']} | failed: {r['error']} | | | | | | | |")
                continue
            lines.append(
                f"| {r['target']} | {r['who']} | {r['quantization']} | {r['box_f1']:.4f} | {r['map50']:.4f} | "
                f"{r['boxes']} | {r['bytes']:,} | {r['ms_per_picture']} | {r['build_seconds']} | "
                f"{r.get('choice', {}).get('chosen', '')} |"
            )
        lines += [
            "",
            "| target | box F1 | best peer (same target) | points | goal met | best peer (any target) |",
            "|---|---|---|---|---|---|",
        ]
        for v in verdict(res["rows"]):
            lines.append(
                f"| {v['target']} | {v['box_f1']:.4f} | {v['best_peer_box_f1']:.4f} | {v['points']:+.2f} | "
                f"{'yes' if v['meets_goal'] else 'no'} | {v['best_peer_any_target']:.4f} |"
            )
        lines.append("")
        for r in res["rows"]:
            c = r.get("choice")
            if c and "candidates" in c:
                tried = ", ".join(
                    f"{t['method']} {t.get('box_f1', t.get('closeness', '-'))}"
                    if "error" not in t and "skipped" not in t
                    else f"{t['method']} {'skipped' if 'skipped' in t else 'failed'}"
                    for t in c["candidates"]
                )
                lines.append(f"- {r['target']}: chose **{c['chosen']}** - {c.get('why', '')}. Candidates: {tried}.")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    from pipeline.isa import x86_isa

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="yolov8n_320,yolo11n_320,yolov5nu_320")
    p.add_argument("--cal", type=int, default=64)
    p.add_argument("--val", type=int, default=32)
    p.add_argument("--test", type=int, default=1000, help="at most this many test pictures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="rows whose 'who' contains one of these")
    p.add_argument("--skip", type=lambda s: s.split(","), default=None, help="no rows whose 'who' contains these")
    p.add_argument("--targets", type=lambda s: s.split(","), default=None, help="only these int8 targets")
    p.add_argument("--out", type=Path, default=RESULTS / "detect_int8")
    p.add_argument("--direct", action="store_true", help="also this project's choice called without pipeline.build")
    args = p.parse_args()
    started = time.time()

    def log(m):
        return print(f"[{time.time() - started:6.0f}s] {m}", file=sys.stderr, flush=True)

    command = ("python -m benchmarks.detect_int8 " + " ".join(sys.argv[1:])).strip()
    cpu = x86_isa()
    results = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        log(name)
        results.append(run_model(name, args, log))
        summary = {
            "command": command,
            "cpu": cpu,
            "seconds": round(time.time() - started),
            "results": results,
            "verdict": {r["model"]: verdict(r["rows"]) for r in results},
        }
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
        args.out.with_suffix(".md").write_text(markdown(results, command, cpu))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
