"""onnx-int8's candidates: onnxruntime `quantize_static` QDQ files (MinMax, Percentile) and empirical bias
correction of the MinMax file (Nagel et al.; NNCF does it for OpenVINO/ONNX graphs, nothing in the field for
onnxruntime QDQ files). Every candidate keeps its float_tail; a detector's head candidates its head_tail too.
Mixed precision: NNCF accuracy control."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from targets import ptq
from targets.onnx import ORT_KINDS, WEIGHTED_OPS, calibration_reader, ort_kind, pre_processed
from targets.ptq import BIAS_CORRECTION_SAMPLES, BUDGET, Candidate, Settings


class Backend(ptq.Backend):
    """The float ONNX file `src`, quantized with `calibration` for `deploy_cpu` (targets.ptq.DEPLOY_CPUS)."""

    def __init__(self, src: Path, calibration: np.ndarray, deploy_cpu: str = "any"):
        self.src, self.calibration, self.deploy_cpu = Path(src), calibration, deploy_cpu
        self.kind, self._minmax, self._head, self._detector = ort_kind(deploy_cpu), None, None, None

    def minmax(self):
        """onnxruntime's MinMax QDQ file (made once: bias correction starts from it)."""
        if self._minmax is None:
            self._minmax = ort_static(self.src, self.calibration, "MinMax", tail=True, kind=self.kind)
        return self._minmax

    def percentile(self):
        return ort_static(self.src, self.calibration, "Percentile", tail=True, kind=self.kind)

    def minmax_bias_corrected(self):
        return minmax_bias_corrected(self.minmax(), self.src, self.calibration)

    def detector(self) -> bool:
        """Whether `src` has a YOLO detector's head (head_tail): its head candidates compete."""
        if self._detector is None:
            import onnx

            self._detector = bool(head_tail(onnx.load(str(self.src), load_external_data=False)))
        return self._detector

    def minmax_head(self):
        """MinMax with the detector's head_tail float (made once: bias correction starts from it)."""
        if self._head is None:
            self._head = ort_static(self.src, self.calibration, "MinMax", tail=True, kind=self.kind, head=True)
        return self._head

    def percentile_head(self):
        return ort_static(self.src, self.calibration, "Percentile", tail=True, kind=self.kind, head=True)

    def minmax_head_bias_corrected(self):
        return minmax_bias_corrected(self.minmax_head(), self.src, self.calibration)

    def minmax_head_bias_corrected_all_samples(self):
        return minmax_bias_corrected(self.minmax_head(), self.src, self.calibration, len(self.calibration))

    def nncf_head(self):
        """NNCF on the ONNX graph with the head as ignored scope (its YOLOv8 example), exact on `deploy_cpu`."""
        import onnx

        from targets.openvino import import_nncf, nncf_advanced

        nncf, proto = import_nncf(), onnx.load(str(self.src))
        name = proto.graph.input[0].name
        data = nncf.Dataset(self.calibration, lambda x: {name: x[None].astype(np.float32)})
        scope = nncf.IgnoredScope(names=head_tail(proto), validate=False)
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(
                proto,
                data,
                subset_size=len(self.calibration),
                ignored_scope=scope,
                advanced_parameters=nncf_advanced(self.deploy_cpu),
            )

    def float_model(self):
        return self.src

    def run(self, model, x):
        return onnx_outputs(model, x)

    def restore(self, settings, model, record):
        import onnx

        proto = onnx.load(str(self.src))
        name = proto.graph.input[0].name
        feed = lambda x: {name: x[None].astype(np.float32)}
        return ptq.nncf_accuracy_control(self, settings, model, record, proto, feed, self.deploy_cpu)


Backend.CANDIDATES = (
    Candidate("onnxruntime-minmax-per-channel-head-float", Backend.minmax_head, Backend.detector, mixed=True),
    Candidate("onnxruntime-percentile-per-channel-head-float", Backend.percentile_head, Backend.detector, mixed=True),
    Candidate(
        "onnxruntime-minmax-head-float-bias-correction",
        Backend.minmax_head_bias_corrected,
        Backend.detector,
        mixed=True,
    ),
    Candidate(
        "onnxruntime-minmax-head-float-bias-correction-all-samples",
        Backend.minmax_head_bias_corrected_all_samples,
        lambda b: len(b.calibration) > BIAS_CORRECTION_SAMPLES and b.detector(),
        mixed=True,
    ),
    # NNCF on the ONNX graph is the best onnx-int8 peer default on every detector here (0.974-0.977 box F1)
    Candidate("nncf-head-float", Backend.nncf_head, Backend.detector, mixed=True),
    Candidate("onnxruntime-minmax-per-channel-float-tail", Backend.minmax),
    Candidate("onnxruntime-percentile-per-channel-float-tail", Backend.percentile),
    Candidate("onnxruntime-minmax-float-tail-bias-correction", Backend.minmax_bias_corrected),
)


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
    the original model's outputs on `validation` (Settings.reference)."""
    settings = Settings(validation, mixed=mixed, budget=budget, reference=reference)
    return ptq.choose(Backend(src, calibration, deploy_cpu), settings, progress)


def onnx_full_int8(src: Path, calibration, validation, progress=None, reference=None, deploy_cpu="any"):
    return ptq.full_int8(Backend(src, calibration, deploy_cpu), Settings(validation, reference=reference), progress)


def onnx_mixed(src: Path, calibration, validation, model, record, budget=BUDGET, reference=None, deploy_cpu="any"):
    """`model` (the best full-int8 choice) if it meets `budget`, else NNCF accuracy control's partly-float one."""
    settings = Settings(validation, budget=budget, reference=reference)
    return ptq.within_budget(Backend(src, calibration, deploy_cpu), settings, model, record)


def file_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return onnx_outputs(path, x)


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


def float_tail(model) -> list[str]:
    """The nodes after the last weighted op on the way to each graph output (pooling, reshape, softmax of a
    classifier head): NNCF leaves them unquantized. Quantized, a classifier's pooled logits get one int8
    scale and classes closer than it tie (measured: benchmarks/results/ptq_history.md)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    tail, todo = [], [o.name for o in model.graph.output]
    while todo:
        n = producer.get(todo.pop())
        if n is not None and n.op_type not in WEIGHTED_OPS and n.name not in tail:
            tail.append(n.name)
            todo.extend(n.input)
    return tail


def head_tail(model) -> list[str]:
    """The node names of a YOLO detector head's decode in an ONNX graph (ptq.head_tail)."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def fed_by_softmax(n) -> bool:
        return getattr(producer.get(n.input[0]), "op_type", None) == "Softmax"

    outputs = [o.name for o in model.graph.output]
    weighted = lambda n: n.op_type in WEIGHTED_OPS
    return ptq.head_tail(outputs, producer, lambda n: n.input, weighted, fed_by_softmax, lambda n: n.name)


def ort_static(
    src: Path,
    calibration: np.ndarray,
    method: str = "MinMax",
    per_channel: bool = True,
    pre_process: bool = True,
    nodes_to_exclude=(),
    tail: bool = False,
    kind: str = "s8s8-7bit",
    head: bool = False,
):
    """onnxruntime `quantize_static`, QDQ, 8-bit weights and activations of `kind` (targets.onnx.ORT_KINDS),
    with `method` calibration; with `tail`, the float_tail stays unquantized (as NNCF leaves it); with `head`, a
    detector's head_tail too."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activations, weights, reduce_range = ORT_KINDS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = pre_processed(src, tmp) if pre_process else src
        graph = onnx.load(str(inp), load_external_data=False)
        name = graph.graph.input[0].name
        excluded = [*nodes_to_exclude, *(float_tail(graph) if tail else []), *(head_tail(graph) if head else [])]
        out = tmp / "int8.onnx"
        # The Percentile calibrator writes augmented models into cwd and prints its progress on stdout.
        with contextlib.chdir(tmp), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                inp,
                out,
                calibration_reader({name: x[None].astype(np.float32)} for x in calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=getattr(QuantType, activations),
                weight_type=getattr(QuantType, weights),
                reduce_range=reduce_range,
                calibrate_method=getattr(CalibrationMethod, method),
                nodes_to_exclude=excluded,
            )
        return onnx.load(str(out))


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


def minmax_bias_corrected(qdq, src: Path, calibration: np.ndarray, samples: int = BIAS_CORRECTION_SAMPLES):
    """A bias-corrected copy of onnxruntime's MinMax QDQ model `qdq` (see onnx_bias_corrected), measured on the
    first `samples` calibration samples."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(qdq)
    return onnx_bias_corrected(copy, src, calibration[:samples])


def onnx_bias_corrected(qdq, src: Path, samples: np.ndarray):
    """Empirical bias correction (see targets.ptq.tflite.bias_corrected) of an onnxruntime QDQ ModelProto: layer
    by layer in graph order, each Conv / Gemm with an int32 bias gets its output's per-channel mean shift,
    measured after its output's QuantizeLinear -> DequantizeLinear (what the next layer sees) against the tensor
    of the same name in the float file `src`, taken out of the int32 bias (scale: input scale x weight scale)."""
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
