"""The registry of deployment targets. Every command (build, bench, release, `targets`) reads it.

A target is data, not code: which family module exports and inspects it (`targets/<family>.py`),
which model it is made from, which runner script runs it, and what quantization the file must
turn out to have when it is read back. Importing this module must stay cheap (no TensorFlow).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

RUNNERS = Path(__file__).parent / "runners"


def telemetry_off() -> None:
    """Keep the runtimes from reporting usage. Must run before they are imported; children inherit it.

    onnxruntime >= 1.2x queues 1DS events for Microsoft's collector (~/.cache/Microsoft/DeveloperTools)
    unless ORT_DISABLE_TELEMETRY is set when it loads. openvino and nncf send events through the
    `openvino_telemetry` package (client id in ~/intel) unless an opt-out file exists; no variable
    turns that off, but when the package cannot be imported both use their built-in stubs.
    """
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    sys.modules.setdefault("openvino_telemetry", None)


telemetry_off()


@dataclass(frozen=True)
class Target:
    name: str
    family: str
    description: str
    filename: str
    source: str
    """Which model it is made from: `float` (the pruned float model), `qat` (the QAT model, its learned ranges)
    or `qat-weights` (the QAT stage's fine-tuned weights in the float model, quantized post-training: what
    onnxruntime's and NNCF's quantizers take). Either QAT source is the pruned float model when QAT did not run."""
    runner: str
    quantization: str
    """What `inspect` must read back from the file; anything else fails verification."""
    options: dict = field(default_factory=dict)
    companions: tuple[str, ...] = ()
    """Files written beside `filename` that belong to the artifact (an OpenVINO IR's model.bin)."""
    legacy_runner: str = ""
    """A second runtime that deployed devices still run (tflite-runtime 2.14): checked, recorded, not gated."""
    run_config: tuple[tuple[str, str], ...] = ()
    """Settings the runtime needs to answer as verified (the runner applies them; manifest, inspect, release
    and model card state them). `run_option` is the runner option that drops them: the runtime's own default."""
    run_option: tuple[str, str] = ()

    @property
    def needs_qat(self) -> bool:
        return self.source in ("qat", "qat-weights")

    @property
    def files(self) -> list[str]:
        """Every file of the artifact, `filename` first: what is published, sized and hashed."""
        return [self.filename, *self.companions]

    @property
    def module(self):
        return importlib.import_module(f"targets.{self.family}")

    @property
    def runner_path(self) -> Path:
        return RUNNERS / self.runner


# OpenVINO's CPU plugin runs float graphs in bf16 on CPUs that have it, unless told f32 (see STACK.md).
OPENVINO_RUN = {"run_config": (("INFERENCE_PRECISION_HINT", "f32"),), "run_option": ("precision", "default")}
# NCNN stores and computes in fp16 (and bf16) where the CPU has it (Cortex-A76, Pi 5: fp16 arithmetic) unless
# told not to: verified in fp32 arithmetic; `--precision default` is NCNN's own choice.
NCNN_RUN = {
    "run_config": tuple(
        (k, "0") for k in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage")
    ),
    "run_option": ("precision", "default"),
}

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target(
            "tflite-fp32",
            "tflite",
            "TFLite, float32 weights and activations",
            "model.tflite",
            "float",
            "run_litert.py",
            "fp32",
            {"mode": "fp32"},
            legacy_runner="run_tflite_runtime.py",
        ),
        Target(
            "tflite-fp16",
            "tflite",
            "TFLite, float16 weights, float32 compute",
            "model.tflite",
            "float",
            "run_litert.py",
            "fp16",
            {"mode": "fp16"},
            legacy_runner="run_tflite_runtime.py",
        ),
        Target(
            "tflite-dynamic",
            "tflite",
            "TFLite dynamic-range: int8 weights, float activations and I/O",
            "model.tflite",
            "float",
            "run_litert.py",
            "dynamic-range",
            {"mode": "dynamic"},
            legacy_runner="run_tflite_runtime.py",
        ),
        Target(
            "tflite-int8",
            "tflite",
            "TFLite full integer from the QAT model: int8 weights, activations, I/O",
            "model.tflite",
            "qat",
            "run_litert.py",
            "int8",
            {"mode": "int8"},
            legacy_runner="run_tflite_runtime.py",
        ),
        Target(
            "onnx-fp32",
            "onnx",
            "ONNX, float32 weights and activations (an ONNX model keeps its own interface)",
            "model.onnx",
            "float",
            "run_onnxruntime.py",
            "fp32",
            {"mode": "fp32", "opset": 17},
        ),
        Target(
            "onnx-int8",
            "onnx",
            "ONNX static QDQ: 8-bit per-channel weights and activations (7-bit weights: exact on any AVX2 x86), float32 I/O",
            "model.onnx",
            "qat-weights",
            "run_onnxruntime.py",
            "int8-qdq",
            {"mode": "int8", "opset": 17},
        ),
        Target(
            "openvino-fp32",
            "openvino",
            "OpenVINO IR, float32 weights",
            "model.xml",
            "float",
            "run_openvino.py",
            "fp32",
            {"mode": "fp32", "opset": 17},
            companions=("model.bin",),
            **OPENVINO_RUN,
        ),
        Target(
            "openvino-fp16",
            "openvino",
            "OpenVINO IR, float16 weights, float32 I/O",
            "model.xml",
            "float",
            "run_openvino.py",
            "fp16",
            {"mode": "fp16", "opset": 17},
            companions=("model.bin",),
            **OPENVINO_RUN,
        ),
        Target(
            "openvino-int8",
            "openvino",
            "OpenVINO IR: int8 weights, FakeQuantize on activations (post-training, the method chosen by measurement)",
            "model.xml",
            "qat-weights",
            "run_openvino.py",
            "int8",
            {"mode": "int8", "opset": 17},
            companions=("model.bin",),
            **OPENVINO_RUN,
        ),
        Target(
            "ncnn-fp32",
            "ncnn",
            "NCNN (pnnx), float32 weights; image inputs channels-first, blobs named in model.ncnn.json",
            "model.ncnn.param",
            "float",
            "run_ncnn.py",
            "fp32",
            {"mode": "fp32", "opset": 17},
            companions=("model.ncnn.bin", "model.ncnn.json"),
            **NCNN_RUN,
        ),
        Target(
            "ncnn-fp16",
            "ncnn",
            "NCNN (pnnx), float16 weight storage, float32 compute as verified",
            "model.ncnn.param",
            "float",
            "run_ncnn.py",
            "fp16",
            {"mode": "fp16", "opset": 17},
            companions=("model.ncnn.bin", "model.ncnn.json"),
            **NCNN_RUN,
        ),
    ]
}

# Asked for, looked for, and not made: the name and why (`targets` lists them; --target NAME says why).
NOT_OFFERED = {
    "ncnn-int8": "NCNN's int8 files come from its C++ tools ncnn2table and ncnn2int8, which no package on the "
    "index ships (pnnx writes fp32 or fp16 only, the ncnn wheels hold the runtime alone, and ncnn has no "
    "source distribution there); NCNN's int8 format is not written by hand here",
}


def resolve(spec: str | list[str] | tuple[str, ...]) -> list[Target]:
    """`name`, `a,b`, or `all` to targets, in registry order. Unknown names raise UsageError."""
    from targets.errors import UsageError, closest

    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UsageError("no target given: pass --target NAME (see `python -m pipeline targets`)")
    if "all" in names:
        return list(TARGETS.values())
    for n in names:
        if n in NOT_OFFERED:
            raise UsageError(f"target '{n}' is not offered: {NOT_OFFERED[n]}")
        if n not in TARGETS:
            raise UsageError(f"unknown target '{n}'{closest(n, TARGETS)}; `python -m pipeline targets` lists them")
    return [t for t in TARGETS.values() if t.name in names]
