"""ONNX, OpenVINO and NCNN artifacts of a user's ONNX model that keep its interface (see pipeline/interface.py).

`original`: the Keras side changed nothing (no weight fine-tuned or pruned), or there is no Keras side (several
inputs, or a graph onnx2tf cannot convert), so the artifact is made from the user's own file: onnx-fp32 is that graph, onnx-int8 and openvino-int8 quantize it,
openvino-* and ncnn-* convert it. Names, layout and every free dimension stay as they were, and TensorFlow is
never imported. `restored`: the model changed, so the artifact is made from the converted model
(Keras -> tf2onnx) and given the original interface back (interface.restore); its spatial
dimensions are the ones the conversion fixed, its batch dimension stays free if it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import interface
from targets.progress import step


@dataclass(frozen=True)
class Original:
    """What an export keeping the user's interface needs of the build."""

    path: str
    """The user's ONNX file."""
    interface: dict
    """Its inputs and outputs (pipeline/interface.py)."""
    reference_outputs: Path
    """The reference's outputs on the held-out samples (their shapes)."""
    converted: bool
    """Whether the Keras stages ran: the reference is then the converted model's (channels-last outputs)."""
    seed: int
    ptq_settings: Callable
    """The post-training choice's settings (targets.ptq.Settings or None), made only when an int8 target needs them."""


def export_keeping_interface(
    source: Original, target, route: str, model_h5: Path, calibration: np.ndarray, out: Path, metadata: dict, progress
) -> dict:
    """Write the artifact; returns the export stage's metadata, with the artifact's interface."""
    original = source.interface
    if len(original["inputs"]) > 1:
        import onnx

        proto = onnx.load(source.path)
        n_in, n_out = len(original["inputs"]), len(original["outputs"])
        calib = [calibration[p["name"]] for p in original["inputs"]]
        target.module.write(target, proto, calib, out, metadata, progress)
        return {
            "source": "original",
            "method": "ptq" if target.options["mode"] == "int8" else "convert",
            "route": route,
            "input_perms": [None] * n_in,
            "output_perms": [None] * n_out,
            "input_layout": metadata["input_layout"],
        }
    if route == "original":
        import onnx

        proto = onnx.load(source.path)
        in_perms = [
            interface.to_first(len(p["shape"])) if interface.channels_first(p) else None for p in original["inputs"]
        ]
        with np.load(source.reference_outputs, allow_pickle=False) as z:
            shapes = [list(z[f"output_{i}"].shape) for i in range(len(z.files))]
        if source.converted:  # the converted model's outputs: channels-last where onnx2tf made them so
            out_perms = [interface.output_perm(p["shape"], s) for p, s in zip(original["outputs"], shapes)]
        else:  # the user's file's own (original_outputs)
            out_perms = [None] * len(shapes)
        made_from, method = "original", "ptq" if target.options["mode"] == "int8" else "convert"
    else:
        from pipeline import stages
        from targets.onnx import to_onnx

        stages.tf_setup(source.seed)
        model = stages.load_model(model_h5)
        with step("convert", "Keras -> ONNX (tf2onnx)"):
            proto = to_onnx(model, target.options["opset"])
        proto, in_perms, out_perms = interface.restore(proto, original)
        made_from, method = "prune", "ptq" if target.options["mode"] == "int8" else "convert"
    calib = [interface.to_artifact(calibration, in_perms[0])]
    ptq = _in_artifact_layout(source.ptq_settings(), in_perms[0], out_perms) if method == "ptq" else None
    choice = target.module.write(target, proto, calib, out, metadata, progress, ptq=ptq)
    return {
        "source": made_from,
        "method": method,
        **({"ptq": choice} if choice else {}),
        "route": route,
        "input_perms": in_perms,
        "output_perms": out_perms,
        "input_layout": metadata["input_layout"],
    }


def _in_artifact_layout(settings, in_perm, out_perms):
    """The post-training choice's validation samples and the original's outputs on them (targets.ptq.Settings,
    internal layout) in the artifact's own layout, so candidates are scored as the artifact runs."""
    if settings is None:
        return None
    ref = settings.reference
    if ref is not None:  # every head, each by its own output's perm: the inverse of from_artifact's transpose
        ref = [r.transpose(np.argsort(p)) if p else r for r, p in zip(ref, out_perms or [None] * len(ref))]
    return replace(settings, validation=interface.to_artifact(settings.validation, in_perm), reference=ref)


def original_outputs(model: str, data: Path, original: dict, labels, why: str, folder: Path) -> dict:
    """The reference when no Keras stage runs (several inputs, or a model onnx2tf cannot convert: `why`): the
    user's own file run in onnxruntime on the held-out and validation samples of the data stage's folder
    `data`, fed in the model's own layout; its outputs are in that layout too (output_perms None)."""
    import tempfile

    from pipeline import runner
    from pipeline.errors import ModelLoadError
    from pipeline.stages import REFERENCE_OUTPUTS, REFERENCE_VAL_OUTPUTS
    from targets import RUNNERS
    from targets.metrics import is_classifier, load_outputs

    port = original["inputs"][0]
    perm = (
        interface.to_first(len(port["shape"]))
        if len(original["inputs"]) == 1 and interface.channels_first(port)
        else None
    )
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, dest in (("test", REFERENCE_OUTPUTS), ("val", REFERENCE_VAL_OUTPUTS)):
            x = data / f"x_{split}.npz"
            if (data / f"x_{split}.npy").exists():  # one input: internal (channels-last) samples
                x = Path(tmp) / f"x_{split}.npy"
                np.save(x, interface.to_artifact(np.load(data / f"x_{split}.npy"), perm))
            if not x.exists():
                continue
            res = runner.run(RUNNERS / "run_onnxruntime.py", Path(model), ["--inputs", x, "--outputs", folder / dest])
            if not res["ok"]:
                raise ModelLoadError(f"{model}: onnxruntime cannot run it on the data: {res['error']}")
    outs = load_outputs(folder / REFERENCE_OUTPUTS)
    y = data / "y_test.npy"
    classifier = outs[0].ndim == 2 and is_classifier([o.shape for o in outs], len(labels)) and y.exists()
    skipped = "no fine-tuning, pruning, QAT or TFLite target (they work on the single-input Keras conversion)"
    return {
        "accuracy": float(np.mean(outs[0].argmax(-1) == np.load(y))) if classifier else None,
        "outputs": len(res["outputs"]),
        "inputs": res["inputs"],
        "method": "none",
        "pruned_layers": 0,
        "fallbacks": [f"{why}: {skipped}"],
    }
