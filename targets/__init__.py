"""The registry of deployment targets. Every command (build, bench, release, `targets`) reads it.

A target is data, not code: which family module exports and inspects it (`targets/<family>.py`),
which model it is made from, which runner script runs it, and what quantization the file must
turn out to have when it is read back. Importing this module must stay cheap (no TensorFlow).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

RUNNERS = Path(__file__).parent / "runners"


@dataclass(frozen=True)
class Target:
    name: str
    family: str
    description: str
    filename: str
    source: str
    """Which model it is converted from: `float` (the pruned float model) or `qat`."""
    runner: str
    quantization: str
    """What `inspect` must read back from the file; anything else fails verification."""
    options: dict = field(default_factory=dict)

    @property
    def module(self):
        return importlib.import_module(f"targets.{self.family}")

    @property
    def runner_path(self) -> Path:
        return RUNNERS / self.runner


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("tflite-fp32", "tflite", "TFLite, float32 weights and activations", "model.tflite",
               "float", "run_litert.py", "fp32", {"mode": "fp32"}),
        Target("tflite-fp16", "tflite", "TFLite, float16 weights, float32 compute", "model.tflite",
               "float", "run_litert.py", "fp16", {"mode": "fp16"}),
        Target("tflite-dynamic", "tflite", "TFLite dynamic-range: int8 weights, float activations and I/O",
               "model.tflite", "float", "run_litert.py", "dynamic-range", {"mode": "dynamic"}),
        Target("tflite-int8", "tflite", "TFLite full integer from the QAT model: int8 weights, activations, I/O",
               "model.tflite", "qat", "run_litert.py", "int8", {"mode": "int8"}),
    ]
}


def resolve(spec: str | list[str] | tuple[str, ...]) -> list[Target]:
    """`name`, `a,b`, or `all` to targets, in registry order. Unknown names raise UsageError."""
    from pipeline.config import closest
    from pipeline.errors import UsageError

    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UsageError("no target given: pass --target NAME (see `python -m pipeline targets`)")
    if "all" in names:
        return list(TARGETS.values())
    for n in names:
        if n not in TARGETS:
            raise UsageError(f"unknown target '{n}'{closest(n, TARGETS)}; "
                             f"`python -m pipeline targets` lists them")
    return [t for t in TARGETS.values() if t.name in names]
