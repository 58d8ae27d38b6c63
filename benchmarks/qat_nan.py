"""Issue 31's case: QAT of a Keras MobileNetV2 1.0 at 224 px with its seeded initial weights, on 40 photo crops,
benched on the emulated Raspberry Pi 4. Before the fix its QAT model's outputs were NaN and passed the stage
gate; tflite-int8 then failed to build and bench ended in an internal error.

    python -m benchmarks.qat_nan [--work DIR] [--timeout SECONDS]

Makes the model (`tf_keras.applications.MobileNetV2(weights=None)`, seed 0; offline) and the crops (random square
crops of scikit-image's sample photos, resized to 224, scaled to [-1, 1] as MobileNetV2 expects), runs

    python -m pipeline bench --model m.h5 --data crops.npz --prune none --target tflite-fp32,tflite-int8
        --device emu:rpi4 --harness native

and writes benchmarks/results/qat_nan.md and .json: the QAT stage's line, each artifact's figures against the
original and each emulated-board row. Needs `python -m pipeline device setup emu:rpi4` first (README, ARM boards).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import log

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CROPS, SIZE = 40, 224

BEFORE = {
    "commit": "b96e192",
    "qat_line": "qat: vs original: top-1 agreement 1.0000, cosine nan, max |diff| nan",
    "qat_loss": "nan in every epoch",
    "tflite-int8": "failed_build: RuntimeError: tensorflow/lite/kernels/conv.cc:372 "
    "affine_quantization->zero_point->data[i] != 0 (-128 != 0) Node number 1 (CONV_2D) failed to prepare",
    "bench": "internal error: KeyError: 'harness'",
}
"""Measured on this machine with the code before the fix (the same command, `build` then `bench`)."""


def make_inputs(work: Path) -> tuple[Path, Path]:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from skimage import data
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    crops = []
    for i in range(CROPS):
        im = photos[i % len(photos)]
        h, w = im.shape[:2]
        s = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crops.append(resize(im[y : y + s, x : x + s], (SIZE, SIZE), anti_aliasing=True).astype(np.float32) * 2 - 1)
    np.savez(work / "crops.npz", x=np.stack(crops))
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    tf_keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None).save(work / "m.h5")
    return work / "m.h5", work / "crops.npz"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/edge-export-qat-nan"))
    p.add_argument("--timeout", type=float, default=1500.0, help="per emulated run (fp32 at 224 under qemu is slow)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, crops = make_inputs(args.work)
    cmd = [sys.executable, "-m", "pipeline", "bench", "--model", model, "--data", crops, "--prune", "none"]
    cmd += ["--target", "tflite-fp32,tflite-int8", "--device", "emu:rpi4", "--harness", "native"]
    cmd += ["--out", args.work / "out", "--timeout", args.timeout, "--json", args.work / "rows.json"]
    log(" ".join(map(str, cmd)))
    t0 = time.perf_counter()
    proc = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    text = proc.stdout + proc.stderr
    manifest = json.loads((args.work / "out" / "m" / "manifest.json").read_text())
    rows = json.loads((args.work / "rows.json").read_text()) if (args.work / "rows.json").exists() else []
    keep = ("target", "status", "method", "made_from", "top1_agreement", "cosine", "max_abs_diff", "reason")
    after = {
        "qat_line": next((line for line in text.splitlines() if line.startswith("qat: ")), None),
        "qat_loss": re.findall(r"qat +\[#+\] \d+/\d+ loss (\S+)", text),
        "qat_stage": {k: manifest["stages"]["qat"].get(k) for k in ("method", "reason", "vs_original", "seconds")},
        "artifacts": [{k: a.get(k) for k in keep} for a in manifest["artifacts"]],
        "board_rows": [{k: r.get(k) for k in ("target", "device", "harness", "status", "summary")} for r in rows],
        "exit_code": proc.returncode,
        "internal_error": "internal error" in text,
        "seconds": seconds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qat_nan.json").write_text(json.dumps({"before": BEFORE, "after": after}, indent=2))
    lines = [
        "# QAT of an untrained MobileNetV2 1.0 at 224 px (issue 31)",
        "",
        f"`python -m benchmarks.qat_nan` ({seconds} s on a shared 2-core machine); the command it runs:",
        "",
        "    python -m pipeline bench --model m.h5 --data crops.npz --prune none \\",
        "        --target tflite-fp32,tflite-int8 --device emu:rpi4 --harness native",
        "",
        "| | before (" + BEFORE["commit"] + ") | after |",
        "|---|---|---|",
        f"| QAT stage | `{BEFORE['qat_line']}`, loss {BEFORE['qat_loss']} | `{after['qat_line']}`, "
        f"loss {', '.join(after['qat_loss'])} |",
    ]
    for a in after["artifacts"]:
        was = BEFORE.get(a["target"], "ok")
        now = f"{a['status']} ({a['method']} from {a['made_from']}), top-1 {a['top1_agreement']}, cosine {a['cosine']}"
        lines.append(f"| {a['target']} | {was} | {now} |")
    for r in after["board_rows"]:
        lines.append(f"| {r['target']} on {r['device']} ({r['harness']}) | - | {r['status']}: {r['summary']} |")
    lines.append(f"| bench | `{BEFORE['bench']}` | exit {proc.returncode}, internal error: {after['internal_error']} |")
    (RESULTS / "qat_nan.md").write_text("\n".join(lines) + "\n")
    log(f"results: {RESULTS / 'qat_nan.md'}")
    return 0 if not after["internal_error"] else 1


if __name__ == "__main__":
    sys.exit(main())
