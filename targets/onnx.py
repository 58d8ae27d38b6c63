"""ONNX targets: tf2onnx from the Keras model, onnxruntime static QDQ quantization, and read-back.

The graph keeps the Keras model's NHWC input (tf2onnx puts the transpose to NCHW inside), so the
same samples feed every runtime. `inspect` reads the quantization from the file itself: the dtype
of each Conv/Gemm/MatMul weight initializer (through any DequantizeLinear) and whether
QuantizeLinear nodes quantize activations. onnxruntime's telemetry is already off when this module
loads: importing the `targets` package turns it off (see `targets.telemetry_off`).
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.report import step

METADATA_KEY = "edge_export"
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops between a weight initializer and the op that uses it (QDQ, layout changes).
WEIGHT_PATH_OPS = ("DequantizeLinear", "Transpose", "Reshape", "Cast", "Identity")


def to_onnx(model, opset: int):
    """The Keras `model` as an ONNX ModelProto with one input named `input`, batch dimension free."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    _stable_names(proto.graph)
    return proto


def _stable_names(graph) -> None:
    """tf2onnx names the nodes it inserts `name__N`, N from a process-wide counter: renumber N by rank,
    so the file does not depend on what this process converted before (a resumed build exports fewer
    targets than a clean one)."""
    suffix = re.compile(r"__(\d+)(?=(:\d+)?$)")
    named = [*graph.node, *graph.initializer, *graph.input, *graph.output, *graph.value_info]
    dims = [
        d for v in [*graph.input, *graph.output, *graph.value_info] for d in v.type.tensor_type.shape.dim if d.dim_param
    ]  # a free dimension is `unk__N`
    strings = [s for x in named for s in [x.name, *getattr(x, "input", ()), *getattr(x, "output", ())]]
    strings += [d.dim_param for d in dims]
    numbers = sorted({int(m.group(1)) for s in strings if (m := suffix.search(s))})
    rank = {n: i + 1 for i, n in enumerate(numbers)}

    def fix(s):
        return suffix.sub(lambda m: f"__{rank[int(m.group(1))]}", s)

    for x in named:
        x.name = fix(x.name)
    for node in graph.node:
        node.input[:] = [fix(s) for s in node.input]
        node.output[:] = [fix(s) for s in node.output]
    for d in dims:
        d.dim_param = fix(d.dim_param)


ORT_KINDS = {
    "u8u8": ("QUInt8", "QUInt8", False),
    "s8s8": ("QInt8", "QInt8", False),
    "s8s8-7bit": ("QInt8", "QInt8", True),
}
"""onnxruntime quantize_static's activation type, weight type and reduce_range (7-bit weights) by name. U8U8
files are exact everywhere too but run through a slower kernel (benchmarks/results/ort_kinds.md)."""


def ort_kind(deploy_cpu: str) -> str:
    """The onnxruntime QDQ kind for files that run exactly on `deploy_cpu` (targets.ptq.DEPLOY_CPUS), in
    onnxruntime and in OpenVINO (which runs a QDQ file's asymmetric u8 weights through other kernels per ISA:
    digits' outputs differed by 0.06 between AVX-512 VNNI and AVX2)."""
    return "s8s8" if deploy_cpu == "vnni" else "s8s8-7bit"


def pre_processed(src: Path, tmp: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference + graph optimization, MatMul+Add -> Gemm) of `src`,
    written inside `tmp`: shape inference of a large model writes sym_shape_infer_temp.onnx (+ .data) into the
    current folder, never the user's."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    with contextlib.chdir(tmp):
        try:
            quant_pre_process(src, pre)
        except Exception as e:
            # "Incomplete symbolic shape inference" (seen on PP-OCR's detector): ONNX's own shape
            # inference is enough for static CNN graphs, the symbolic pass is for dynamic shapes.
            if "symbolic shape inference" not in str(e):
                raise
            quant_pre_process(src, pre, skip_symbolic_shape=True)
    return pre


def calibration_reader(feeds):
    """onnxruntime's CalibrationDataReader over an iterable of feeds (input name -> one call's array)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    return Samples()


def quantize_qdq(proto, calibration: list[np.ndarray], progress=None, deploy_cpu: str = "any"):
    """Static QDQ: 8-bit per-channel weights and activations calibrated (min/max) on `calibration` (one array
    of samples per graph input, in the graph's own layout), of the kind exact on `deploy_cpu` (ort_kind)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from targets.runners.runner_common import one_call

    activations, weights, reduce_range = ORT_KINDS[ort_kind(deploy_cpu)]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-channel DequantizeLinear (its `axis`) needs opset 13: a user's older graph is raised to it
        from onnx import version_converter

        proto = version_converter.convert_version(proto, 13)
    init = {i.name for i in proto.graph.initializer}
    inputs = [
        {"name": v.name, "shape": list(v.type.tensor_type.shape.dim), "dtype": _dtype(v.type.tensor_type.elem_type)}
        for v in proto.graph.input
        if v.name not in init
    ]
    n = len(calibration[0])

    def feeds():
        for i in range(n):
            if progress:
                progress(i + 1, n)
            yield {inp["name"]: one_call(c[i], inp) for inp, c in zip(inputs, calibration)}

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        pre = pre_processed(src, Path(tmp))
        with contextlib.chdir(tmp):
            quantize_static(
                pre,
                out,
                calibration_reader(feeds()),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=getattr(QuantType, activations),
                weight_type=getattr(QuantType, weights),
                reduce_range=reduce_range,
            )
        return onnx.load(out)


def export(target, model, calibration: np.ndarray, out: Path, metadata: dict, progress=None, ptq=None) -> dict | None:
    """Write `target`'s .onnx of Keras `model` to `out`, with `metadata` in metadata_props. With `ptq`
    (targets.ptq.Settings) int8 is the best of several methods; returns the record of that choice."""
    with step("convert", "Keras -> ONNX (tf2onnx)"):
        proto = to_onnx(model, target.options["opset"])
    return write(target, proto, [calibration], out, metadata, progress, ptq)


def write(
    target, proto, calibration: list[np.ndarray], out: Path, metadata: dict, progress=None, ptq=None
) -> dict | None:
    """Write `target`'s .onnx of the ONNX graph `proto` (converted, or the user's own) to `out`.
    `calibration`: one array of samples per graph input, in the graph's layout. With `ptq` and one input,
    int8 is the best of several post-training methods (targets/ptq/); returns the record of that choice."""
    mode, choice = target.options["mode"], None
    deploy_cpu = target.options.get("deploy_cpu", "any")  # set by the builder from [ptq] deploy_cpu
    if mode == "int8" and ptq is not None and len(calibration) == 1:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "float.onnx").write_bytes(proto.SerializeToString())
            proto, choice = ptq.choose(
                "onnx", progress, src=Path(tmp) / "float.onnx", calibration=calibration[0], deploy_cpu=deploy_cpu
            )
    elif mode == "int8":
        proto = quantize_qdq(proto, calibration, progress, deploy_cpu)
    elif mode != "fp32":
        raise ValueError(f"unknown onnx mode {mode!r}")
    # quant_pre_process declares every domain onnxruntime knows (com.microsoft.nchwc, ...): keep
    # only those the graph uses, so other runtimes do not refuse the file for a domain it never needs.
    used = {n.domain for n in proto.graph.node} | {""}
    kept = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    set_metadata(proto, metadata)
    Path(out).write_bytes(proto.SerializeToString())
    return choice


def set_metadata(proto, metadata: dict) -> None:
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)


def inspect(path: str | Path) -> dict:
    """What the file is: quantization kind, I/O, ops, opset, sparsity, metadata."""
    import onnx
    from onnx import numpy_helper

    try:
        m = onnx.load(str(path))
    except OSError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not an ONNX model: {e}") from e
    if not m.graph.node:
        raise ValueError(f"{path} is not an ONNX model (no graph)")
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    zero_points = {}  # quantized weight initializer -> its DequantizeLinear's (zero point, axis)

    def weight(name):
        while name not in inits and name in producer and producer[name].op_type in WEIGHT_PATH_OPS:
            n = producer[name]
            name = n.input[0]
            if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                zero_points[name] = (numpy_helper.to_array(inits[n.input[2]]), axis)
        return inits.get(name)

    weighted = [
        (n, w)
        for n in g.node
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1
        for w in [weight(n.input[1])]
        if w is not None
    ]
    weights = [w for _, w in weighted]
    weight_types = Counter(_dtype(w.data_type) for w in weights)
    # A partly quantized graph: the weighted ops whose weights stayed float (read back as int8-mixed).
    float_ops = (
        [f"{n.op_type} {n.name}" for n, w in weighted if _dtype(w.data_type).startswith("float")]
        if weight_types["int8"] + weight_types["uint8"]
        else []
    )
    quantized_activations = sum(1 for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    zeros = total = 0
    for w in weights:
        # A pruned zero is stored as its channel's zero point: 0 for s8 weights, anything for asymmetric u8 ones.
        a = numpy_helper.to_array(w)
        zp, axis = zero_points.get(w.name, (np.zeros(()), 0))
        if zp.ndim:
            zp = zp.reshape([-1 if i == axis % a.ndim else 1 for i in range(a.ndim)])
        zeros += int(np.count_nonzero(a == zp))
        total += a.size
    meta = {p.key: p.value for p in m.metadata_props}
    return {
        "format": "onnx",
        "quantization": classify(weight_types, quantized_activations),
        "inputs": [_io(v) for v in g.input if v.name not in inits],
        "outputs": [_io(v) for v in g.output],
        "ops": dict(sorted(Counter(n.op_type for n in g.node).items())),
        "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "weight_dtypes": dict(sorted(weight_types.items())),
        "quantized_activations": quantized_activations,
        "float_ops": float_ops,
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "metadata": json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {},
    }


def classify(weight_types: Counter, quantized_activations: int) -> str:
    """Name the quantization from the weight dtypes and the QuantizeLinear nodes on activations."""
    int8 = weight_types["int8"] + weight_types["uint8"]
    if int8 and weight_types["float32"] + weight_types["float16"]:
        return "int8-mixed"  # some layers kept in float (`float_ops`): never called int8
    if int8:
        return "int8-qdq" if quantized_activations else "int8-weight-only"
    if quantized_activations:
        return "qdq-float-weights"  # what tf2onnx makes of a QAT model: fake-quant activations, float weights
    if weight_types["float16"]:
        return "fp16"
    return "fp32"


def _dtype(elem_type: int) -> str:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _io(v) -> dict:
    t = v.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return {"name": v.name, "shape": shape, "dtype": _dtype(t.elem_type), "scale": 0.0, "zero_point": 0}
