"""`inspect ARTIFACT`: what a file is, read from the file itself (see pipeline/inspection.py)."""

from __future__ import annotations

from pathlib import Path

HELP = "show what an artifact file is: format, quantization, inputs/outputs, ops, sparsity, metadata"


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, help="an artifact file, e.g. build/digits-cnn/tflite-int8/model.tflite")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds the reader may take (default: 60)")


def run(args) -> int:
    import json

    import pipeline
    from pipeline.inspection import describe

    info = pipeline.inspect(args.artifact, timeout=args.timeout)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else describe(info))
    return 0
