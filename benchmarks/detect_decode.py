"""What decoding a YOLO head costs after the model ran, on each board: `bench`'s decode + NMS figures
(targets/detect.py's numpy decode + class-aware NMS of each row's own outputs on its first 10 held-out pictures,
timed in the runner process where the row ran: runner_common._postprocess), through the user's path
(`pipeline.built` of the detector, `pipeline.bench` on every device), 1 thread.

    .venv/bin/python -m benchmarks.detect_decode --model M.onnx --data D.npz [--target onnx-fp32]
        [--device local,emu:rpi4,emu:rpi5] [--work build/detect_decode] [--out benchmarks/results/detect_decode]

`--data`: a detection set as `build --data` takes it (scripts/make_detector.py writes one), at the [detect]
defaults (score 0.25, IoU 0.45). On `local` (and ssh boards) the figures are measured (p50 per image); on an
emulated board they are guest instructions per image and their ESTIMATE at the board's clock, priced as the
row's own `estimated_p50_ms` (compute only), never a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (key, header, format) of the table: a measured row fills the first of each pair, an emulated row the second
COLUMNS = [
    ("device", "board", "{}"),
    ("target", "file", "{}"),
    (("p50_ms", "estimated_p50_ms"), "model p50 ms", "{:.2f}"),
    (("postprocess_ms", "estimated_postprocess_ms"), "decode + NMS ms per image", "{:.3f}"),
    (("end_to_end_ms", "estimated_end_to_end_ms"), "end-to-end ms", "{:.2f}"),
    ("share", "decode + NMS share", "{:.1%}"),
    ("postprocess_instructions", "decode + NMS instructions per image", "{:,}"),
    ("postprocess_boxes_per_image", "boxes per image", "{:.1f}"),
]


def value(row: dict, key):
    if isinstance(key, tuple):
        return next((row[k] for k in key if row.get(k) is not None), None)
    return row.get(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--target", default="onnx-fp32")
    ap.add_argument("--device", default="local,emu:rpi4,emu:rpi5")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "detect_decode")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/detect_decode"))
    a = ap.parse_args()

    import pipeline

    targets = a.target.split(",")
    b = pipeline.built(
        targets=targets,
        out=a.work,
        model=str(a.model.resolve()),
        data=str(a.data.resolve()),
        overrides={"prune.method": "none"},
    )
    rows = pipeline.bench(b, targets=targets, devices=a.device.split(","), threads=[1], samples=20, log=print)
    for r in rows:
        model, end = value(r, COLUMNS[2][0]), value(r, COLUMNS[4][0])
        r["share"] = (end - model) / end if model is not None and end else None
    failed = [
        f"{r['target']} on {r['device']}: {r['error'] or r.get('postprocess_error')}"
        for r in rows
        if r["status"] != "ok" or r.get("postprocess_error")
    ]
    lines = [
        "# Decode + NMS of a YOLO head per board (issue 28)",
        "",
        f"`.venv/bin/python -m benchmarks.detect_decode {' '.join(sys.argv[1:])}`: `pipeline.bench` of "
        f"{b.name}'s {', '.join(targets)} on {a.device}, 1 thread. Each row's runner decodes its own file's "
        "outputs on 10 held-out pictures with targets/detect.py (numpy; score 0.25, IoU 0.45, class-aware NMS) "
        "after timing the model. local: measured p50 per image on this machine "
        f"({next((r['cpu'] for r in rows if r['device'] == 'local' and r.get('cpu')), '-')}, shared: indicative). "
        "emu:*: guest instructions per image under qemu and the ESTIMATED ms at the board's clock (compute only, "
        "as the model's `estimated_p50_ms`: an estimate, never a measurement).",
        "",
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = [value(r, k) for k, _, _ in COLUMNS]
        lines.append(
            "| " + " | ".join("-" if c is None else f.format(c) for c, (_, _, f) in zip(cells, COLUMNS)) + " |"
        )
    lines += ["", *(f"Failed: {f}" for f in failed)]
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text(text)
    keys = ["model", "target", "device", "cpu", "runtime", "runtime_version", "estimate_board", "share"]
    keys += [k for k, _, _ in COLUMNS[2:] for k in (k if isinstance(k, tuple) else (k,))]
    a.out.with_suffix(".json").write_text(json.dumps([{k: r.get(k) for k in keys} for r in rows], indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
