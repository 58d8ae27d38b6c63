"""TFLite targets: convert a Keras model with TFLiteConverter, and read a .tflite file back.

`inspect` parses the flatbuffer with the schema that ships in ai-edge-litert (no TensorFlow), so
the quantization recorded in the manifest is what the file holds, not what was asked for.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.report import step
from targets.silence import stderr_silenced

METADATA_KEY = "edge_export"


WEIGHT_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}  # weights inspect counts zeros in


def export(target, model, calibration: np.ndarray, out: Path, metadata: dict, progress=None, ptq=None) -> dict | None:
    """Write `target`'s .tflite of Keras `model` to `out`, with `metadata` embedded. With `ptq`
    (targets.ptq.Settings; a float model, no QAT) int8 is the best of several methods; returns the record."""
    import tensorflow as tf

    mode = target.options["mode"]
    if mode == "int8" and ptq is not None:
        model_bytes, choice = ptq.choose(
            "tflite", progress, keras_model=model, calibration=calibration, check=full_int8_only
        )
        out.write_bytes(embed_metadata(model_bytes, metadata))
        return choice
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8

        def representative():
            for i, x in enumerate(calibration):
                if progress:
                    progress(i + 1, len(calibration))
                yield [x[None].astype(np.float32)]

        conv.representative_dataset = representative
    elif mode != "fp32":
        raise ValueError(f"unknown tflite mode {mode!r}")
    # A block-pruned model (prune.method "block"): store its zeros sparse (conv weights behind DENSIFY,
    # Dense weights in the 1x4 blocks of the sparse FULLY_CONNECTED kernel). fp32 only, as measured with
    # ai-edge-litert 2.3: its default XNNPACK delegate refuses a sparse int8 or dynamic-range file
    # ("failed to delegate"), and a sparse fp16 file runs but outputs NaN (with or without XNNPACK).
    # The option `sparse` overrides this (the pruning benchmark measures what a sparse int8 file costs).
    if target.options.get("sparse", mode == "fp32" and getattr(model, "edge_export_sparse", False)):
        conv.optimizations = [*conv.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    # stderr_silenced: the MLIR quantizer prints its settings on stderr; errors still raise.
    with step("convert", f"Keras -> TFLite ({target.options['mode']})"), stderr_silenced():
        model_bytes = in_output_order(conv.convert(), model.output_names)
    out.write_bytes(embed_metadata(model_bytes, metadata))


def full_int8_only(model: bytes) -> bytes:
    """A full-int8 candidate must read back as int8: ai-edge-quantizer's default recipe leaves some ops
    float on some graphs (PP-OCR's detector), and such a file is int8-mixed, never the int8 promised."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.tflite"
        path.write_bytes(model)
        q = inspect(path)["quantization"]
    if q != "int8":
        raise ValueError(f"reads back as {q}, not int8")
    return model


def embed_metadata(model_bytes: bytes, metadata: dict) -> bytes:
    """Add `metadata` as a JSON entry in the model's own metadata table (read back by inspect)."""
    from ai_edge_litert import schema_py_generated as schema

    m = unpack(model_bytes)
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), dtype=np.uint8)
    m.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(m.buffers) - 1
    m.metadata = [e for e in (m.metadata or []) if e.name != METADATA_KEY.encode()] + [entry]
    return pack(m, len(model_bytes))


def unpack(model_bytes: bytes):
    """The model as an editable schema.ModelT. Constants stored after the flatbuffer (offset/size, as
    ai-edge-quantizer writes them) are taken inline: Pack() writes only the flatbuffer, and a repacked
    file would point past its own end ('Constant buffer N specified an out of range offset')."""
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    for buf in m.buffers or []:
        if (getattr(buf, "offset", 0) or 0) > 1:
            buf.data = np.frombuffer(model_bytes[buf.offset : buf.offset + buf.size], dtype=np.uint8)
            buf.offset = buf.size = 0
    return m


def pack(m, size_hint: int) -> bytes:
    """The schema.ModelT `m` as .tflite bytes."""
    import flatbuffers

    b = flatbuffers.Builder(size_hint + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def in_output_order(model: bytes, names) -> bytes:
    """The file with its outputs in the Keras model's order (`names`: model.output_names) and under its names.
    TFLiteConverter lists a model's outputs in its own order (its signature names them: [(N, 10), (N, 2),
    (N, 4)] for a model whose outputs are [(N, 4), (N, 10), (N, 2)]); mapped by the signature's output
    names, never by position. One output: the file as it is."""
    names = list(names)
    if len(names) < 2:
        return model
    m = unpack(model)
    sig = (m.signatureDefs or [None])[0]
    text = lambda b: b.decode() if isinstance(b, bytes) else b
    by_name = {text(t.name): int(t.tensorIndex) for t in (sig.outputs or [])} if sig is not None else {}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"the .tflite signature names its outputs {sorted(by_name)}, not the model's {missing}")
    g = m.subgraphs[sig.subgraphIndex or 0]
    g.outputs = [by_name[n] for n in names]
    sig.outputs = sorted(sig.outputs, key=lambda t: names.index(text(t.name)))
    for n in names:
        g.tensors[by_name[n]].name = n.encode()
    return pack(m, len(model))


_DTYPES = None


def _dtype_names():
    global _DTYPES
    if _DTYPES is None:
        from ai_edge_litert import schema_py_generated as schema

        _DTYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return _DTYPES


def _op_names():
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def inspect(path: str | Path) -> dict:
    """What the file is: quantization kind, I/O with scale and zero point, ops, sparsity, metadata."""
    from ai_edge_litert import schema_py_generated as schema

    raw = Path(path).read_bytes()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)")
    m = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    dtypes, opnames = _dtype_names(), _op_names()
    g = m.subgraphs[0]

    def data(t):
        b = m.buffers[t.buffer]
        if b.offset and b.offset > 1:
            return np.frombuffer(raw[b.offset : b.offset + b.size], dtype=np.uint8)
        return b.data

    const_types, act_types = Counter(), Counter()
    zeros = total = sparse_tensors = 0
    io_index = set(g.inputs) | set(g.outputs)
    for i, t in enumerate(g.tensors):
        d = data(t)
        dt = dtypes[t.type]
        if d is not None and len(d):
            const_types[dt] += 1
            w = (
                np.frombuffer(bytes(d), dtype=WEIGHT_DTYPES[dt])
                if dt in WEIGHT_DTYPES and t.shape is not None
                else None
            )
            if t.sparsity is not None:
                sparse_tensors += 1
                if w is not None:
                    # Stored: the non-zero blocks only. The zeros are the dense size minus the non-zeros kept.
                    size = int(np.prod(t.shape))
                    zeros += size - int(np.count_nonzero(w))
                    total += size
            elif w is not None and len(t.shape) >= 2:
                zp = (
                    t.quantization.zeroPoint
                    if t.quantization is not None and t.quantization.zeroPoint is not None
                    else None
                )
                # Per-channel int8 weights are symmetric (zero point 0), so zero is zero.
                zero = 0 if zp is None or np.all(np.asarray(zp) == 0) else None
                if zero is not None:
                    zeros += int(np.count_nonzero(w == zero))
                    total += w.size
        elif i not in io_index:
            act_types[dt] += 1

    def io(i):
        t = g.tensors[i]
        q = t.quantization
        scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        shape = [int(s) for s in t.shapeSignature] if t.shapeSignature is not None else [int(s) for s in t.shape]
        return {"name": name, "shape": shape, "dtype": dtypes[t.type], "scale": scale, "zero_point": zp}

    inputs, outputs = [io(i) for i in g.inputs], [io(i) for i in g.outputs]
    ops = Counter()
    versions = {}
    computed = []  # (op, output dtype) of every op but the (de)quantizing ones
    for op in g.operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = opnames.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        ops[name] += 1
        versions[name] = max(versions.get(name, 0), code.version)
        if name not in ("QUANTIZE", "DEQUANTIZE") and op.outputs is not None and len(op.outputs):
            t = g.tensors[op.outputs[0]]
            computed.append((f"{name} {t.name.decode() if isinstance(t.name, bytes) else t.name}", dtypes[t.type]))
    quantization = classify(const_types, act_types, inputs, outputs)
    meta = {}
    for e in m.metadata or []:
        if (e.name.decode() if isinstance(e.name, bytes) else e.name) == METADATA_KEY:
            meta = json.loads(bytes(m.buffers[e.buffer].data).decode())
    return {
        "format": "tflite",
        "quantization": quantization,
        # A partly quantized file: the ops that compute in float (read back as int8-mixed).
        "float_ops": [o for o, dt in computed if dt == "float32"] if quantization == "int8-mixed" else [],
        "inputs": inputs,
        "outputs": outputs,
        "ops": dict(sorted(ops.items())),
        "op_versions": dict(sorted(versions.items())),
        "weight_dtypes": dict(sorted(const_types.items())),
        "activation_dtypes": dict(sorted(act_types.items())),
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "sparse_tensors": sparse_tensors,
        "metadata": meta,
    }


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # int4, bfloat16, string, resource, variant: not numpy names
        return 2 if dtype == "bfloat16" else 1


def tensor_bytes(path: str | Path) -> int:
    """Bytes one inference moves through memory, for the latency estimate's memory term
    (pipeline/devices/estimate.py): every weight read once, every activation written once and read once."""
    from ai_edge_litert import schema_py_generated as schema

    raw = Path(path).read_bytes()
    m = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    dtypes = _dtype_names()
    moved = 0
    for t in m.subgraphs[0].tensors:
        b = m.buffers[t.buffer]
        const = (b.data is not None and len(b.data)) or (b.offset or 0) > 1
        size = int(np.prod([abs(int(d)) for d in t.shape])) if t.shape is not None else 0
        moved += size * _itemsize(dtypes[t.type]) * (1 if const else 2)
    return moved


def classify(const_types: Counter, act_types: Counter, inputs, outputs) -> str:
    """Name the quantization from the tensor types the file holds (activations exclude the I/O)."""
    io_types = {t["dtype"] for t in inputs + outputs}
    if act_types["int8"] and not act_types["float32"]:
        return "int8" if io_types <= {"int8"} else "int8-float-io"
    if act_types["int8"]:
        return "int8-mixed"  # some ops compute in float (`float_ops`): never called int8
    if const_types["int8"]:
        return "dynamic-range"
    if const_types["float16"]:
        return "fp16"
    return "fp32"
