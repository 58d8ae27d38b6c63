"""ONNX and OpenVINO artifacts of a user's ONNX model that keep its interface (see pipeline/interface.py).

`original`: the Keras side changed nothing (no fine-tuning, nothing pruned), so the artifact is made
from the user's own file: onnx-fp32 is that graph, onnx-int8 and openvino-int8 quantize it,
openvino-* convert it. Names, layout and every free dimension stay as they were, and TensorFlow is
never imported. `restored`: the model changed, so the artifact is made from the converted model
(Keras -> tf2onnx) and given the original interface back (interface.restore); its spatial
dimensions are the ones the conversion fixed, its batch dimension stays free if it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import interface


def export_keeping_interface(builder, target, route: str, model_h5: Path, calibration: np.ndarray, out: Path,
                             metadata: dict, progress) -> dict:
    """Write the artifact; returns the export stage's metadata, with the artifact's interface."""
    from pipeline import report

    original = builder.interface()
    if route == "original":
        import onnx

        proto = onnx.load(builder.cfg.model.path)
        in_perms = [interface.to_first(len(p["shape"])) if interface.channels_first(p) else None
                    for p in original["inputs"]]
        reference = builder.stages["prune"].file("reference_outputs.npz")
        with np.load(reference, allow_pickle=False) as z:
            shapes = [list(z[f"output_{i}"].shape) for i in range(len(z.files))]
        out_perms = [interface.output_perm(p["shape"], s) for p, s in zip(original["outputs"], shapes)]
        source, method = "original", "ptq" if target.options["mode"] == "int8" else "convert"
    else:
        from pipeline import stages
        from targets.onnx import to_onnx

        stages.tf_setup(builder.seed)
        model = stages.load_model(model_h5)
        with report.step("convert", "Keras -> ONNX (tf2onnx)"):
            proto = to_onnx(model, target.options["opset"])
        proto, in_perms, out_perms = interface.restore(proto, original)
        source, method = "prune", "ptq" if target.options["mode"] == "int8" else "convert"
    calib = [interface.to_artifact(calibration, in_perms[0])]
    target.module.write(target, proto, calib, out, metadata, progress)
    return {"source": source, "method": method, "route": route, "input_perms": in_perms, "output_perms": out_perms,
            "input_layout": metadata["input_layout"]}
