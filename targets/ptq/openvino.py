"""openvino-int8's candidates: NNCF's post-training quantization (its defaults, exact on the deployment CPU),
and the bias-corrected onnxruntime MinMax QDQ file converted by OpenVINO. Mixed precision: NNCF accuracy
control."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from targets import ptq
from targets.openvino import import_nncf, import_openvino, nncf_advanced
from targets.ptq import BUDGET, Candidate, Settings
from targets.ptq import onnx as ptq_onnx


class Backend(ptq.Backend):
    """The float model `convert()` returns (targets.openvino.float_ir of the float ONNX file `src`; `convert(path)`
    converts another ONNX file the same way), quantized with `calibration` for `deploy_cpu`. With `src`, a
    bias-corrected onnxruntime QDQ file of it, converted, competes too."""

    def __init__(self, convert, calibration: np.ndarray, src: Path | None = None, deploy_cpu: str = "any"):
        self.convert, self.calibration, self.src, self.deploy_cpu = convert, calibration, src, deploy_cpu

    def nncf(self):
        return nncf_openvino(self.convert, self.calibration, self.deploy_cpu)

    def qdq_bias_corrected(self):
        qdq = ptq_onnx.Backend(self.src, self.calibration, self.deploy_cpu).minmax_bias_corrected()
        return _openvino_of_qdq(self.convert, qdq)

    def detector(self) -> bool:
        return self.src is not None and ptq_onnx.Backend(self.src, self.calibration).detector()

    def head_scope(self):
        """The detector's head_tail as NNCF's ignored scope (OpenVINO keeps the ONNX node names), as NNCF's YOLOv8
        example ignores the head's decode."""
        import onnx

        tail = ptq_onnx.head_tail(onnx.load(str(self.src), load_external_data=False))
        return import_nncf().IgnoredScope(names=tail, validate=False)

    def nncf_head(self):
        return nncf_openvino(self.convert, self.calibration, self.deploy_cpu, ignored_scope=self.head_scope())

    def nncf_mixed_head(self):
        """The head float and NNCF's MIXED preset (asymmetric activations: SiLU's outputs are mostly positive)."""
        preset = import_nncf().QuantizationPreset.MIXED
        scope = self.head_scope()
        return nncf_openvino(self.convert, self.calibration, self.deploy_cpu, ignored_scope=scope, preset=preset)

    def qdq_head(self):
        return _openvino_of_qdq(
            self.convert, ptq_onnx.Backend(self.src, self.calibration, self.deploy_cpu).minmax_head()
        )

    def float_model(self):
        return self.convert()

    def run(self, model, x):
        return openvino_outputs(model, x)

    def restore(self, settings, model, record):
        feed = lambda x: x[None].astype(np.float32)
        return ptq.nncf_accuracy_control(self, settings, model, record, self.convert(), feed, self.deploy_cpu)


Backend.CANDIDATES = (
    Candidate("nncf-head-float", Backend.nncf_head, Backend.detector, mixed=True),
    Candidate("nncf-mixed-head-float", Backend.nncf_mixed_head, Backend.detector, mixed=True),
    Candidate("onnxruntime-minmax-head-float", Backend.qdq_head, Backend.detector, mixed=True),
    Candidate("nncf", Backend.nncf),
    Candidate("onnxruntime-minmax-float-tail-bias-correction", Backend.qdq_bias_corrected, lambda b: b.src is not None),
)


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
    """The best int8 OpenVINO model of the float model `convert()` returns (Backend), and the record of the
    choice. `reference`: the original model's outputs on `validation` (Settings.reference)."""
    settings = Settings(validation, mixed=mixed, budget=budget, reference=reference)
    return ptq.choose(Backend(convert, calibration, src, deploy_cpu), settings, progress)


def file_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return openvino_outputs(str(path), x)


def run_openvino(model, x: np.ndarray, threads: int = 0) -> np.ndarray:
    """The first output of an OpenVINO model (ov.Model or CompiledModel) on every sample."""
    return openvino_outputs(model, x, threads)[0]


def openvino_outputs(model, x: np.ndarray, threads: int = 0) -> list[np.ndarray]:
    """Every output of an OpenVINO model (ov.Model, CompiledModel or path) on every sample, in f32 precision (the
    CPU plugin would run bf16 on a bf16-capable CPU)."""
    ov = import_openvino()
    if not isinstance(model, ov.CompiledModel):
        cfg = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        model = ov.Core().compile_model(model, "CPU", cfg)
    outs = [model(xi[None].astype(np.float32)) for xi in x]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(model.outputs))]


def nncf_openvino(convert, calibration: np.ndarray, deploy_cpu: str = "any", **kwargs):
    """NNCF post-training quantization of `convert()` (a fresh float ov.Model, as the target converts it), exact
    on `deploy_cpu` (targets.ptq.DEPLOY_CPUS; `kwargs` override)."""
    nncf = import_nncf()
    kwargs = {"advanced_parameters": nncf_advanced(deploy_cpu), **kwargs}
    data = nncf.Dataset(calibration, lambda x: x[None].astype(np.float32))
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(convert(), data, subset_size=len(calibration), **kwargs)


def _openvino_of_qdq(convert, qdq):
    """OpenVINO's conversion of an onnxruntime QDQ ModelProto (its Q/DQ pairs become FakeQuantize, run in int8
    by the CPU plugin)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qdq.onnx"
        path.write_bytes(qdq.SerializeToString())
        return convert(path)  # its weights are mapped from the file: the mapping outlives the unlinked file
