"""tflite-int8's candidates: TFLiteConverter's full-integer file and empirical bias correction of it (Nagel et al.;
nothing in the field offers it for TFLite files); for a detector, the same with its head's decode left float and
float outputs (head_float). Mixed precision: each layer ranked by its own quantization error
(QuantizationDebugger), the worst left float."""

from __future__ import annotations

import contextlib
import io
import time
import warnings

import numpy as np

from targets import ptq
from targets.ptq import BIAS_CORRECTION_SAMPLES, BUDGET, Candidate, Settings
from targets.runners.runner_common import dequantize, quantize
from targets.silence import stderr_silenced
from targets.tflite import in_output_order, pack, unpack

_BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


class Backend(ptq.Backend):
    """The float Keras model `keras_model`, quantized with `calibration`. `check(bytes)` may refuse a full-int8
    candidate (raise) before it is scored. With mixed precision, the 1, 2, 4, ... layers with the largest own
    quantization error (`sensitivity`) stay float, up to `max_float_layers`."""

    def __init__(self, keras_model, calibration: np.ndarray, check=None, max_float_layers: int = 8):
        self.keras_model, self.calibration, self.max_float_layers = keras_model, calibration, max_float_layers
        self.check = check or (lambda m: m)
        self.float = float_tflite(keras_model)
        self._converted, self._head = None, None
        self.head = head_tail(self.float)

    def converter(self):
        """TFLiteConverter's file (made once: bias correction starts from it)."""
        if self._converted is None:
            self._converted = self.check(converter_int8(self.keras_model, self.calibration))
        return self._converted

    def bias_corrected(self):
        return bias_corrected(self.converter(), self.float, self.calibration[:BIAS_CORRECTION_SAMPLES])

    def bias_corrected_all_samples(self):
        return bias_corrected(self.converter(), self.float, self.calibration)

    def detector(self) -> bool:
        return bool(self.head)

    def head_float(self):
        """int8 but a detector's head_tail, whose ops run float, and float outputs: the box coordinates (pixels)
        and class scores (0..1) of its one output never share an int8 scale, which erases the scores."""
        if self._head is None:
            self._head = selective_int8(self.keras_model, self.calibration, self.head, float_output=True)
        return self._head

    def head_float_bias_corrected(self):
        return bias_corrected(self.head_float(), self.float, self.calibration[:BIAS_CORRECTION_SAMPLES])

    def head_float_bias_corrected_all_samples(self):
        return bias_corrected(self.head_float(), self.float, self.calibration)

    def float_model(self):
        return self.float

    def run(self, model, x):
        return tflite_outputs(model, x)

    def restore(self, settings, model, record):
        ref, _ = ptq._reference(settings.reference, lambda: tflite_outputs(self.float, settings.validation))
        budget, x = settings.budget, settings.validation
        record = {**record, "candidates": list(record["candidates"])}
        start = time.perf_counter()
        # A detector's head stays float (head_float: one int8 scale over pixels and scores keeps no box); the
        # layers ranked are the rest.
        ranked = [r for r in sensitivity(self.keras_model, self.calibration) if r["layer"] not in set(self.head)]
        record["sensitivity"] = ranked[: self.max_float_layers]
        tried, k = [], 1
        while k <= min(self.max_float_layers, len(ranked)) and max([t[0] for t in tried], default=0) < budget:
            layers = [r["layer"] for r in ranked[:k]]
            m = selective_int8(self.keras_model, self.calibration, [*self.head, *layers], float_output=self.detector())
            tried.append((ptq.agreement(ref, tflite_outputs(m, x)), m, layers))
            record["candidates"].append(
                {
                    "method": f"tflite-converter-{k}-float-layers",
                    "agreement": round(tried[-1][0], 4),
                    "seconds": round(time.perf_counter() - start, 2),
                }
            )
            k *= 2
        a, m, layers = max(tried, key=lambda t: t[0], default=(0, None, []))
        if a > record["agreement"]:
            record.update(
                chosen=f"tflite-converter-{len(layers)}-float-layers",
                agreement=round(a, 4),
                float_layers=layers,
                mixed=True,
                why=f"the best full-int8 method ({record['chosen']}) agreed {record['agreement']:.4f} < budget "
                f"{budget} on the validation split; keeping the {len(layers)} layers with the largest own "
                f"quantization error in float: {a:.4f}",
            )
            model = m
        return model, record


Backend.CANDIDATES = (
    Candidate("tflite-converter-head-float", Backend.head_float, Backend.detector, mixed=True),
    Candidate(
        "tflite-converter-head-float-bias-correction", Backend.head_float_bias_corrected, Backend.detector, mixed=True
    ),
    # yolo11n 160 px, 25 held-out pictures: box F1 0.972 against 0.958 with 16 samples (backbone noise is what is
    # left once the head is float; keeping its 8 or 16 most sensitive layers float too did not do better)
    Candidate(
        "tflite-converter-head-float-bias-correction-all-samples",
        Backend.head_float_bias_corrected_all_samples,
        lambda b: len(b.calibration) > BIAS_CORRECTION_SAMPLES and b.detector(),
        mixed=True,
    ),
    # A detector's full-int8 files put box pixels and class scores under one output scale: no box survives
    # (yolov8n 160 px: box F1 0.0 for all three), so they compete only for other models.
    Candidate("tflite-converter", Backend.converter, lambda b: not b.detector()),
    Candidate("tflite-converter-bias-correction", Backend.bias_corrected, lambda b: not b.detector()),
    # cheap here (a few interpreter runs per layer): with more calibration samples, both
    Candidate(
        "tflite-converter-bias-correction-all-samples",
        Backend.bias_corrected_all_samples,
        lambda b: len(b.calibration) > BIAS_CORRECTION_SAMPLES and not b.detector(),
    ),
)


def tflite_int8(
    keras_model,
    calibration: np.ndarray,
    validation: np.ndarray,
    *,
    budget: float = BUDGET,
    mixed: bool = False,
    max_float_layers: int = 8,
    progress=None,
    check=None,
    reference: np.ndarray | None = None,
):
    """The best int8 .tflite (bytes) of the float Keras model, and the record of the choice (Backend).
    `reference`: the original model's outputs on `validation` (Settings.reference)."""
    settings = Settings(validation, mixed=mixed, budget=budget, reference=reference)
    return ptq.choose(Backend(keras_model, calibration, check, max_float_layers), settings, progress)


def file_outputs(path, x: np.ndarray) -> list[np.ndarray]:
    return tflite_outputs(path.read_bytes(), x)


def run_tflite(model: bytes, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The first output of a .tflite model on every sample, (de)quantizing integer I/O."""
    return tflite_outputs(model, x, threads)[0]


def int8_io(model: bytes) -> bytes:
    """Drop the QUANTIZE after each float input and the DEQUANTIZE before each float output, so the graph's
    I/O are the int8 tensors themselves (what TFLiteConverter's `inference_input_type = int8` makes)."""
    from ai_edge_litert import schema_py_generated as schema

    m = unpack(model)
    g = m.subgraphs[0]

    def code(op):
        return max(m.operatorCodes[op.opcodeIndex].builtinCode, m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)

    moved, dropped = {}, set()
    int8 = schema.TensorType.INT8
    for i, op in enumerate(g.operators):
        src, dst = int(op.inputs[0]), int(op.outputs[0])
        users = [o for o in g.operators if src in list(o.inputs)]
        if (
            code(op) == schema.BuiltinOperator.QUANTIZE
            and src in list(g.inputs)
            and len(users) == 1
            and g.tensors[dst].type == int8
        ):
            moved[src], dropped = dst, dropped | {i}
        elif code(op) == schema.BuiltinOperator.DEQUANTIZE and dst in list(g.outputs) and g.tensors[src].type == int8:
            moved[dst], dropped = src, dropped | {i}
    if not moved:
        return model
    g.operators = [op for i, op in enumerate(g.operators) if i not in dropped]
    g.inputs = [moved.get(int(t), int(t)) for t in g.inputs]
    g.outputs = [moved.get(int(t), int(t)) for t in g.outputs]
    for s in m.signatureDefs or []:
        for t in [*(s.inputs or []), *(s.outputs or [])]:
            t.tensorIndex = moved.get(t.tensorIndex, t.tensorIndex)
    return pack(m, len(model))


def _invoke(interpreter, x: np.ndarray) -> None:
    """One sample through the interpreter, quantized as its (first) input wants it."""
    d = interpreter.get_input_details()[0]
    x = x[None].astype(np.float32)
    scale, zp = d["quantization"]
    if d["dtype"] != np.float32 and scale:
        x = quantize(x, d["dtype"], scale, zp)
    interpreter.set_tensor(d["index"], x.astype(d["dtype"]))
    interpreter.invoke()


def bias_corrected(int8_model: bytes, float_model: bytes, samples: np.ndarray) -> bytes:
    """Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", what NNCF does for ONNX and
    OpenVINO) of an int8 .tflite; nothing in the field offers it for TFLite. Quantized weights shift each
    output channel's mean; layer by layer in graph order, every int8 CONV_2D / DEPTHWISE_CONV_2D /
    FULLY_CONNECTED gets that shift, measured on `samples` against the same tensor of the float .tflite
    (same converter, same tensor names) with every earlier layer already corrected, taken out of its int32
    bias (whose scale is input scale x weight scale). Measured after the fused activation: counting only
    elements inside its linear range did no better on fer or EfficientNet-Lite0."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    def interpreter(model: bytes):
        it = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
        it.allocate_tensors()
        return it

    with warnings.catch_warnings():  # preserve_all_tensors "is intended for debugging": it is what this needs
        warnings.simplefilter("ignore")
        ref = interpreter(bytes(float_model))
        by_name = {d["name"]: d["index"] for d in ref.get_tensor_details()}
        m = unpack(int8_model)
        g = m.subgraphs[0]
        codes = {getattr(schema.BuiltinOperator, name) for name in _BIASED_OPS}

        def corrected(op) -> bool:
            c = m.operatorCodes[op.opcodeIndex]
            if max(c.builtinCode, c.deprecatedBuiltinCode) not in codes or len(op.inputs) < 3 or op.inputs[2] < 0:
                return False
            out, bias = g.tensors[op.outputs[0]], g.tensors[op.inputs[2]]
            return (
                out.type == schema.TensorType.INT8
                and bias.type == schema.TensorType.INT32
                and out.name.decode() in by_name
            )

        layers = [op for op in g.operators if corrected(op)]
        names = [g.tensors[op.outputs[0]].name.decode() for op in layers]

        def channel_means(it, indices, dequantize=lambda t, i: t):
            sums = [0.0] * len(indices)
            for x in samples:
                _invoke(it, x)
                for k, i in enumerate(indices):
                    t = dequantize(it.get_tensor(i).astype(np.float64), i)
                    sums[k] = sums[k] + t.reshape(-1, t.shape[-1]).mean(0)
            return [s / len(samples) for s in sums]

        float_means = channel_means(ref, [by_name[n] for n in names])  # unchanged by the corrections: once
        for op, want in zip(layers, float_means):
            out, bias = g.tensors[op.outputs[0]], g.tensors[op.inputs[2]]
            scale, zp = out.quantization.scale[0], out.quantization.zeroPoint[0]
            it = interpreter(pack(m, len(int8_model)))
            [got] = channel_means(it, [op.outputs[0]], lambda t, _: (t - zp) * scale)
            buf = m.buffers[bias.buffer]
            b = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.int32).astype(np.int64)
            step = np.asarray(bias.quantization.scale, np.float64)  # per channel, or one for all
            b -= np.round((got - want) / step).astype(np.int64)
            buf.data = np.frombuffer(np.clip(b, -(2**31), 2**31 - 1).astype(np.int32).tobytes(), np.uint8)
        return pack(m, len(int8_model))


def sensitivity(keras_model, calibration: np.ndarray) -> list[dict]:
    """Each quantized layer's own quantization error, worst first: TFLite's QuantizationDebugger runs
    every int8 op beside its float version on the same (dequantized) inputs, so the error is the layer's
    alone, not what it inherits. `rmse_per_scale` is the RMS error in quantization steps of its output."""
    import csv

    import tensorflow as tf

    with stderr_silenced(), contextlib.redirect_stdout(io.StringIO()):
        dbg = tf.lite.experimental.QuantizationDebugger(
            converter=_converter(keras_model, calibration),
            debug_dataset=lambda: ([x[None].astype(np.float32)] for x in calibration),
        )
        dbg.run()
        dump = io.StringIO()
        dbg.layer_statistics_dump(dump)
    rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    layers = [
        {
            "layer": r["tensor_name"],
            "op": r["op_name"],
            "rmse_per_scale": round(float(np.sqrt(float(r["mean_squared_error"])) / float(r["scale"])), 4),
        }
        for r in rows
        if float(r["scale"]) > 0
    ]
    return sorted(layers, key=lambda r: -r["rmse_per_scale"])


def selective_int8(keras_model, calibration: np.ndarray, float_layers: list[str], float_output: bool = False) -> bytes:
    """TFLiteConverter int8 with the ops that output `float_layers` left in float (QuantizationDebugger's
    selective quantization): int8 everywhere else, int8 I/O (float outputs with `float_output`)."""
    import tensorflow as tf

    conv = _converter(keras_model, calibration, allow_float=True)
    if float_output:
        conv.inference_output_type = tf.float32
    with stderr_silenced(), contextlib.redirect_stdout(io.StringIO()):
        dbg = tf.lite.experimental.QuantizationDebugger(
            converter=conv,
            debug_dataset=lambda: ([x[None].astype(np.float32)] for x in calibration),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_layers)),
        )
        return in_output_order(dbg.get_nondebug_quantized_model(), keras_model.output_names)


_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_PASSING_OPS = ("RESHAPE", "TRANSPOSE")


def head_tail(float_model: bytes) -> list[str]:
    """The output tensor names of a YOLO detector head's decode in a float .tflite (ptq.head_tail); a SOFTMAX
    feeds the DFL's weighted op through reshapes and transposes here."""
    from targets.tflite import _op_names

    m = unpack(float_model)
    g = m.subgraphs[0]
    names = _op_names()

    def code(op) -> str:
        c = m.operatorCodes[op.opcodeIndex]
        return names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM")

    producer = {int(t): op for op in g.operators for t in op.outputs}

    def fed_by_softmax(op) -> bool:
        src = producer.get(int(op.inputs[0]))
        while src is not None and code(src) in _PASSING_OPS:
            src = producer.get(int(src.inputs[0]))
        return src is not None and code(src) == "SOFTMAX"

    return ptq.head_tail(
        [int(t) for t in g.outputs],
        producer,
        lambda op: [int(t) for t in op.inputs if t >= 0],
        lambda op: code(op) in _WEIGHTED_OPS,
        fed_by_softmax,
        lambda op: g.tensors[int(op.outputs[0])].name.decode(),
    )


def tflite_outputs(model: bytes, x: np.ndarray, threads: int | None = None) -> list[np.ndarray]:
    """Every output of a .tflite model on every sample, in the file's output order (in_output_order puts a
    converted file's in the Keras model's), (de)quantizing integer I/O."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(model), num_threads=threads)
    it.allocate_tensors()
    details = it.get_output_details()
    outs = [[] for _ in details]
    for xi in x:
        _invoke(it, xi)
        for o, out in zip(outs, details):
            y = it.get_tensor(out["index"]).astype(np.float32)
            scale, zp = out["quantization"]
            o.append(dequantize(y, scale, zp) if out["dtype"] != np.float32 and scale else y)
    return [np.concatenate(o) for o in outs]


def _converter(keras_model, calibration: np.ndarray, int16x8: bool = False, allow_float: bool = False):
    """`allow_float`: float kernels may run ops left unquantized (selective quantization needs them)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if int16x8:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int16
    else:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            *([tf.lite.OpsSet.TFLITE_BUILTINS] if allow_float else []),
        ]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    conv.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in calibration)
    return conv


def float_tflite(keras_model) -> bytes:
    import tensorflow as tf

    with stderr_silenced():
        return in_output_order(
            tf.lite.TFLiteConverter.from_keras_model(keras_model).convert(), keras_model.output_names
        )


def converter_int8(keras_model, calibration: np.ndarray, int16x8: bool = False) -> bytes:
    """TFLiteConverter full-integer PTQ (per-channel weights, min/max activations), int8 (or int16) I/O."""
    with stderr_silenced():
        return in_output_order(_converter(keras_model, calibration, int16x8).convert(), keras_model.output_names)


def ai_edge_quantizer_int8(float_model: bytes, calibration: np.ndarray, recipe=None) -> bytes:
    """ai-edge-quantizer static quantization (default recipe: int8 per-channel weights, int8 activations)
    of a float .tflite, with its float I/O turned into the int8 I/O the int8 targets promise."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer import recipe as recipes

    sig = Interpreter(model_content=bytes(float_model)).get_signature_list()
    key = next(iter(sig))
    name = sig[key]["inputs"][0]
    qt = quantizer.Quantizer(bytes(float_model))
    qt.load_quantization_recipe(recipe if recipe is not None else recipes.static_wi8_ai8())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        result = qt.calibrate({key: [{name: x[None].astype(np.float32)} for x in calibration]})
        return int8_io(bytes(qt.quantize(result).quantized_model))
