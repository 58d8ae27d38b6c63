"""onnxruntime's int8 QDQ kinds (targets.onnx.ORT_KINDS) on one ONNX model: latency here, and whether the file
answers the same on an emulated AVX2-only CPU (no VNNI), where u8 x s8 pairs are summed in 16 bits.

    .venv/bin/python -m benchmarks.ort_kinds [--model M.onnx] [--out benchmarks/results/ort_kinds]

The model defaults to EfficientNet-Lite0 as int8_real exports it (EDGE_EXPORT_MODELS/efficientnet_lite0.onnx);
calibration and test inputs are seeded uniform [-1, 1] samples (what Lite0 takes): this measures arithmetic,
not accuracy (int8_real and int8_cpus do that). Needs Debian's qemu-user (`qemu-x86_64`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import log

RUN = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([s.run(None, {name: xi[None]})[0] for xi in x]))
"""


def p50_ms(path: Path, x: np.ndarray, runs: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x[:1]}
    for _ in range(5):
        s.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 3)


def main() -> None:
    from pipeline.isa import avx2_only, x86_isa
    from targets.onnx import ORT_KINDS
    from targets.ptq import onnx as ptq_onnx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("EDGE_EXPORT_MODELS", Path.home() / "edge-export-models")) / "efficientnet_lite0.onnx"
    p.add_argument("--model", type=Path, default=default)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ort_kinds"))
    args = p.parse_args()
    import onnx

    shape = [d.dim_value or 1 for d in onnx.load(str(args.model)).graph.input[0].type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng(0)
    cal, test = (rng.uniform(-1, 1, (n, *shape)).astype(np.float32) for n in (8, 4))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", test)
        for kind in ORT_KINDS:
            path = tmp / f"{kind}.onnx"
            path.write_bytes(ptq_onnx.ort_static(args.model, cal, "MinMax", tail=True, kind=kind).SerializeToString())
            here, avx2 = tmp / "here.npy", tmp / "avx2.npy"
            subprocess.run([sys.executable, "-c", RUN, path, tmp / "x.npy", here], check=True)
            subprocess.run([*avx2_only(), sys.executable, "-c", RUN, path, tmp / "x.npy", avx2], check=True)
            a, b = np.load(here), np.load(avx2)
            rows.append(
                {
                    "kind": kind,
                    "p50_ms": p50_ms(path, test, args.runs),
                    "max_abs_diff_avx2": float(np.abs(a - b).max()),
                    "output_range": float(np.ptp(a)),
                }
            )
            log(f"{kind}: {rows[-1]}")
    isa = x86_isa()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"model": args.model.name, "isa": isa, "rows": rows}, indent=1))
    lines = [
        f"# onnxruntime int8 QDQ kinds on {args.model.name}",
        "",
        f"`python -m benchmarks.ort_kinds --model {args.model.name}`; x86 here: {isa['cpu']} ({isa['label']}), "
        f"1 thread, p50 of {args.runs} runs; AVX2-only: qemu-x86_64 -cpu Haswell (pipeline.isa.AVX2_ONLY), "
        f"{len(test)} seeded inputs.",
        "",
        "| kind (activations x weights) | p50 ms here | max abs diff, here vs AVX2-only | output range |",
        "|---|---|---|---|",
        *[f"| {r['kind']} | {r['p50_ms']} | {r['max_abs_diff_avx2']:.4g} | {r['output_range']:.4g} |" for r in rows],
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
