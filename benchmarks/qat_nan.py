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
"""Measured here with the code of b96e192: the QAT line, loss and tflite-int8 error by `build` with the same model
(same seed), crops and targets (3 min 14 s); bench's internal error on a build with a not-built row (every
harness and device: the row lacked `harness`)."""


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


WHY = """Why QAT diverged: `stages.calibrate_ranges` set each activation range to the calibration samples' min and max.
With its initial weights (batch norm statistics 0 / 1) every MobileNetV2 block shrinks the signal, and after the
fake-quantized blocks the classifier's logits lay within +-7e-37: that was its calibrated range. TensorFlow's
fake quantization turns NaN once (max - min) / 255 is a denormal float32 (measured: width 1e-35 quantizes, 1e-36
gives NaN), so QAT's very first forward pass was NaN, before any weight moved (neither the learning rate nor
batch-norm freezing caused it: without calibration, or with batch norm in training mode, the same step is
finite, because the ranges are then [-6, 6] or the batch-normalized activations). A range narrower than
`stages.MIN_RANGE` (1e-6) now keeps tfmot's initial one; a QAT whose loss or outputs still go NaN stops
(TerminateOnNaN) and falls back to post-training int8 of the float model, in one warning.

Caveat the figures carry: the untrained original answers 0.001 for each of the 1000 classes on every crop, so its
top-1 is a tie broken towards class 0 and every model "agrees" with it; the int8 file's output step (1/256) rounds
0.001 to 0, hence its cosine 0.0 with top-1 agreement 1.0 (the gate for score outputs is top-1 agreement)."""


def render(before: dict, after: dict) -> str:
    cell = lambda text: str(text).replace("|", "\\|")
    lines = [
        "# QAT of an untrained MobileNetV2 1.0 at 224 px (issue 31)",
        "",
        f"`python -m benchmarks.qat_nan` ({after['seconds']} s on a shared 2-core machine); the command it runs:",
        "",
        "    python -m pipeline bench --model m.h5 --data crops.npz --prune none \\",
        "        --target tflite-fp32,tflite-int8 --device emu:rpi4 --harness native",
        "",
        f"| | before ({before['commit']}) | after |",
        "|---|---|---|",
        f"| QAT stage | `{cell(before['qat_line'])}`, loss {before['qat_loss']} | `{cell(after['qat_line'])}`, "
        f"loss {', '.join(after['qat_loss'])} |",
    ]
    for a in after["artifacts"]:
        now = f"{a['status']} ({a['method']} from {a['made_from']}), top-1 {a['top1_agreement']}, cosine {a['cosine']}"
        lines.append(f"| {a['target']} | {cell(before.get(a['target'], 'ok'))} | {cell(now)} |")
    for r in after["board_rows"]:
        lines.append(
            f"| {r['target']} on {r['device']} ({r['harness']}) | - | {cell(r['status'] + ': ' + r['summary'])} |"
        )
    lines.append(
        f"| bench | `{before['bench']}` | exit {after['exit_code']}, internal error: {after['internal_error']} |"
    )
    return "\n".join([*lines, "", WHY, ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/edge-export-qat-nan"))
    p.add_argument("--timeout", type=float, default=1500.0, help="per emulated run (fp32 at 224 under qemu is slow)")
    p.add_argument("--render", action="store_true", help="only write qat_nan.md again from qat_nan.json")
    args = p.parse_args()
    if args.render:
        d = json.loads((RESULTS / "qat_nan.json").read_text())
        (RESULTS / "qat_nan.md").write_text(render(d["before"], d["after"]))
        return 0
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
    (RESULTS / "qat_nan.md").write_text(render(BEFORE, after))
    log(f"results: {RESULTS / 'qat_nan.md'}")
    return 0 if not after["internal_error"] else 1


if __name__ == "__main__":
    sys.exit(main())
