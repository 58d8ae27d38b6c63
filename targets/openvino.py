"""OpenVINO targets: an IR (model.xml + model.bin) converted from the ONNX export, and read-back.

Route: Keras -> tf2onnx (as the onnx targets) -> `ov.convert_model` on that .onnx -> `ov.save_model`;
int8 goes through NNCF post-training quantization in between. `inspect` parses the .xml with the
standard library and the weights from the .bin: the element type of each Convolution/MatMul weight
constant (through its decompression Convert/Multiply) and the FakeQuantize layers on activations.
"""

from __future__ import annotations

import json
import re
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.report import step

METADATA_KEY = "edge_export"
WEIGHTED_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
# Ops between a weight constant and the op that uses it (weight decompression, layout changes).
WEIGHT_PATH_OPS = ("Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze")
ELEMENT_TYPES = {
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "i8": "int8",
    "u8": "uint8",
    "i4": "int4",
    "u4": "uint4",
    "i32": "int32",
    "i64": "int64",
    "boolean": "bool",
}
PRECISIONS = {
    "FP32": "float32",
    "FP16": "float16",
    "BF16": "bfloat16",
    "I8": "int8",
    "U8": "uint8",
    "I32": "int32",
    "I64": "int64",
    "BOOL": "bool",
}


def import_openvino():
    """openvino with its telemetry (and nncf's) off: see `targets.telemetry_off`."""
    from targets import telemetry_off

    telemetry_off()
    import openvino

    return openvino


def import_nncf():
    """nncf (OpenVINO's quantizer), its telemetry off and its logging quiet."""
    import logging

    import_openvino()
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def nncf_advanced(deploy_cpu: str):
    """NNCF's advanced quantization parameters for files that run exactly on `deploy_cpu` (targets.ptq.DEPLOY_CPUS;
    None: its defaults). Its default overflow fix (7-bit weights in the first layer only) still saturates on
    AVX2-only kernels (digits: 1.35 max |diff| between the two kernel sets); ENABLE takes every layer's weights
    to 7 bits."""
    if deploy_cpu == "vnni":
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)


def export(target, model, calibration: np.ndarray, out: Path, metadata: dict, progress=None, ptq=None) -> dict | None:
    """Write `target`'s IR of Keras `model` to `out` (.xml; the .bin beside it), `metadata` in rt_info. With
    `ptq` (targets.ptq.Settings) int8 is the best of several post-training methods; returns the record of that choice."""
    from targets.onnx import to_onnx

    with step("convert", "Keras -> ONNX (tf2onnx)"):
        proto = to_onnx(model, target.options["opset"])
    return write(target, proto, [calibration], out, metadata, progress, fix_batch=True, ptq=ptq)


def write(
    target,
    proto,
    calibration: list[np.ndarray],
    out: Path,
    metadata: dict,
    progress=None,
    fix_batch: bool = False,
    ptq=None,
) -> dict | None:
    """Write `target`'s IR of the ONNX graph `proto` (converted, or the user's own) to `out`. `calibration`:
    one array of samples per graph input, in its layout. `fix_batch`: batch 1 (see _fix_batch); a user's
    own interface keeps its free dimensions. With `ptq` and one input, int8 is the best of several
    post-training methods (targets/ptq/); returns the record of that choice."""
    ov = import_openvino()
    mode = target.options["mode"]
    deploy_cpu = target.options.get("deploy_cpu", "any")  # set by the builder from [ptq] deploy_cpu
    if mode not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown openvino mode {mode!r}")
    with tempfile.TemporaryDirectory() as tmp:  # kept until saved: the converted model may map the file
        src = Path(tmp) / "model.onnx"
        src.write_bytes(proto.SerializeToString())

        def convert(path=src):
            m = ov.convert_model(path)
            if fix_batch:
                _fix_batch(m)
            return m

        with step("convert", "ONNX -> OpenVINO"):
            ov_model = convert()
        choice = None
        if mode == "int8" and ptq is not None and len(calibration) == 1:
            ov_model, choice = ptq.choose(
                "openvino", progress, convert=convert, calibration=calibration[0], src=src, deploy_cpu=deploy_cpu
            )
        elif mode == "int8":
            ov_model = quantize(ov_model, calibration, progress, deploy_cpu)
        layout = metadata.get("input_layout") or metadata.get("preprocessing", {}).get("layout", "")
        for param in ov_model.get_parameters():
            rank = param.get_partial_shape().rank
            if rank.is_static and len(layout) == rank.get_length():  # e.g. NHWC: recorded on the input
                param.set_layout(ov.Layout(layout))
        _stable_names(ov_model)
        ov_model.set_rt_info(json.dumps(metadata, sort_keys=True), [METADATA_KEY])
        # save_model compresses every float weight to fp16 unless told not to: fp32 must stay fp32.
        ov.save_model(ov_model, str(out), compress_to_fp16=mode == "fp16")
    return choice


def float_ir(src: Path):
    """The float ONNX file as an OpenVINO model, batch fixed to 1."""
    m = import_openvino().convert_model(str(src))
    _fix_batch(m)
    return m


def _fix_batch(ov_model) -> None:
    """Batch 1, fixed: the CPU plugin runs a free batch dimension through dynamic-shape code on every
    call, 1.5x slower on the default model (22.7 vs 15.1 us); edge devices infer one sample at a time."""
    param = ov_model.get_parameters()[0]
    shape = param.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() == 0:
        return
    batch, *rest = list(shape)
    if batch.is_dynamic and all(d.is_static for d in rest):
        ov_model.reshape({param.output(0): [1, *(d.get_length() for d in rest)]})


def _stable_names(ov_model) -> None:
    """OpenVINO names a node nobody named `<Type>_<process-wide counter>` (kept when it is folded into
    a constant: `ShapeOf_2610`): renumber those in graph order, so the file does not depend on what
    this process converted before."""
    for i, op in enumerate(ov_model.get_ordered_ops()):
        auto = re.fullmatch(r"([A-Z][A-Za-z0-9]*)_\d+", op.get_friendly_name())
        if auto:
            op.set_friendly_name(f"{auto.group(1)}_{i}")


def quantize(ov_model, calibration: list[np.ndarray], progress=None, deploy_cpu: str = "any"):
    """NNCF post-training quantization (8-bit, symmetric weights), calibrated on every sample of
    `calibration` (one array per model input), exact on `deploy_cpu` (targets.ptq.DEPLOY_CPUS)."""
    import contextlib
    import io

    from targets.runners.runner_common import one_call

    nncf = import_nncf()
    n = len(calibration[0])
    inputs = [
        {"shape": list(p.get_partial_shape()), "dtype": str(p.get_element_type().to_dtype())} for p in ov_model.inputs
    ]
    seen = 0

    def sample(i):
        nonlocal seen
        seen += 1
        if progress and seen <= n:
            progress(seen, n)
        feeds = [one_call(c[i], inp) for c, inp in zip(calibration, inputs)]
        return feeds[0] if len(feeds) == 1 else feeds

    with contextlib.redirect_stdout(io.StringIO()):  # nncf draws its progress bars on stdout
        return nncf.quantize(
            ov_model, nncf.Dataset(range(n), sample), subset_size=n, advanced_parameters=nncf_advanced(deploy_cpu)
        )


def inspect(path: str | Path) -> dict:
    """What the IR is: quantization kind, I/O, ops, sparsity, metadata. Reads model.xml and model.bin."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path} is not an OpenVINO IR: {e}") from e
    weights_bin = path.with_suffix(".bin").read_bytes()
    try:
        return _read(root, weights_bin)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a well-formed OpenVINO IR: {type(e).__name__} {e}") from e


def _read(root, weights_bin: bytes) -> dict:
    layers = {l.get("id"): l for l in root.find("layers")}
    edges = {(e.get("to-layer"), e.get("to-port")): e.get("from-layer") for e in root.find("edges")}

    def inputs(layer):
        ports = layer.find("input")
        return [layers[edges[(layer.get("id"), p.get("id"))]] for p in ports] if ports is not None else []

    def weight(layer):
        """The largest constant behind the layer's weight input, and whether a zero point is subtracted."""
        consts, todo, shifted = [], [inputs(layer)[1]], False
        while todo:
            src = todo.pop()
            if src.get("type") == "Const":
                consts.append(src)
            elif src.get("type") in WEIGHT_PATH_OPS:
                shifted |= src.get("type") == "Subtract"
                todo.extend(inputs(src))
        return (max(consts, key=lambda c: _size(c)), shifted) if consts else (None, False)

    def on_activation(fq):
        src = inputs(fq)[0]
        while src.get("type") == "Convert":
            src = inputs(src)[0]
        return src.get("type") != "Const"

    weighted = [
        (l, w) for l in layers.values() if l.get("type") in WEIGHTED_OPS for w in [weight(l)] if w[0] is not None
    ]
    weights = [w for _, w in weighted]
    weight_types = Counter(_etype(c) for c, _ in weights)
    # A partly quantized IR: the weighted layers whose weights stayed float (read back as int8-mixed).
    float_ops = (
        [f"{l.get('type')} {l.get('name')}" for l, (c, _) in weighted if _etype(c).startswith("float")]
        if weight_types["int8"] + weight_types["uint8"]
        else []
    )
    fake_quantize = sum(1 for l in layers.values() if l.get("type") == "FakeQuantize" and on_activation(l))
    zeros = total = 0
    for c, shifted in weights:
        d = c.find("data")
        dtype = {"float32": np.float32, "float16": np.float16, "int8": np.int8}.get(_etype(c))
        if dtype is None or shifted:  # a zero point makes the stored zero something else
            continue
        a = np.frombuffer(weights_bin, dtype=dtype, count=_size(c), offset=int(d.get("offset")))
        zeros += int(np.count_nonzero(a == 0))
        total += a.size
    rt = root.find("rt_info")
    meta = rt.find(METADATA_KEY) if rt is not None else None
    kinds = [l.get("type") for l in layers.values()]
    return {
        "format": "openvino-ir",
        "ir_version": int(root.get("version")),
        "quantization": classify(weight_types, fake_quantize),
        "inputs": [_io(l, "output") for l in layers.values() if l.get("type") == "Parameter"],
        "outputs": [_io(l, "input") for l in layers.values() if l.get("type") == "Result"],
        "ops": dict(sorted(Counter(k for k in kinds if k not in ("Const", "Parameter", "Result")).items())),
        "weight_dtypes": dict(sorted(weight_types.items())),
        "quantized_activations": fake_quantize,
        "float_ops": float_ops,
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "metadata": json.loads(meta.get("value")) if meta is not None else {},
    }


def classify(weight_types: Counter, fake_quantize: int) -> str:
    """Name the quantization from the weight constants' element types and FakeQuantize on activations."""
    int8 = weight_types["int8"] + weight_types["uint8"]
    if int8 and weight_types["float32"] + weight_types["float16"]:
        return "int8-mixed"  # some layers kept in float (`float_ops`): never called int8
    if int8:
        return "int8" if fake_quantize else "int8-weight-only"
    if fake_quantize:
        return "fake-quant-float-weights"
    if weight_types["float16"]:
        return "fp16"
    return "fp32"


def _etype(const) -> str:
    t = const.find("data").get("element_type")
    return ELEMENT_TYPES.get(t, t)


def _size(const) -> int:
    shape = const.find("data").get("shape")
    return int(np.prod([int(s) for s in shape.split(",")])) if shape else 1


def _io(layer, side: str) -> dict:
    port = layer.find(side).find("port")
    names = (port.get("names") or layer.get("output_names") or layer.get("name")).split(",")
    return {
        "name": names[0],
        "shape": [int(d.text) for d in port.findall("dim")],
        "dtype": PRECISIONS.get(port.get("precision"), port.get("precision")),
        "scale": 0.0,
        "zero_point": 0,
    }
