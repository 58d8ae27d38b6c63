"""What decoding a YOLO head costs on the CPU after the model ran: targets/detect.py's numpy decode + class-aware
NMS per image, on a detector's real outputs (onnxruntime on its held-out pictures), one thread, this machine.

    .venv/bin/python -m benchmarks.detect_decode --model M.onnx --data D.npz [--out benchmarks/results/detect_decode]

`--data`: an .npz with `x` [N, 3, H, W] as the model takes it (scripts/make_detector.py writes one). The figure is
per image, at the [detect] defaults (score 0.25, IoU 0.45), with the boxes each image kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from targets import detect


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/detect_decode"))
    a = ap.parse_args()

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(a.model), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    with np.load(a.data, allow_pickle=False) as z:
        x = z["x"].astype(np.float32)
    raw = np.concatenate([s.run(None, {name: xi[None]})[0] for xi in x])
    layout = detect.layout_of(raw.shape, tuple(x.shape[2:]))
    times, boxes = [], []
    for r in raw:
        start = time.perf_counter()
        for _ in range(a.repeats):
            out = detect.decode(r[None], layout)
        times.append((time.perf_counter() - start) / a.repeats * 1e3)
        boxes.append(len(out[0][0]))
    result = {
        "model": a.model.name,
        "head": list(raw.shape[1:]),
        "layout": layout,
        "images": len(x),
        "decode_nms_ms_p50": round(float(np.median(times)), 3),
        "decode_nms_ms_max": round(float(np.max(times)), 3),
        "boxes_per_image_mean": round(float(np.mean(boxes)), 2),
        "threads": 1,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
