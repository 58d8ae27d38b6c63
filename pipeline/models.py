"""Bring-your-own models: load .keras, .h5/.hdf5, SavedModel folders and .onnx as tf_keras models.

Runs inside a stage (TensorFlow already imported by stages.tf_setup). Foreign files are treated as
untrusted: Keras safe mode, no Lambda layers from HDF5 unless `model.trust`, and every way a file
can be broken ends in one ModelLoadError line naming the file. Files written by Keras 3 and SavedModels
without Keras layers go through pipeline/keras3.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline import keras3, report
from pipeline.errors import ConversionError, ModelLoadError

SUFFIXES = (".keras", ".h5", ".hdf5", ".onnx")


def kind(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{path}: a folder without saved_model.pb is not a SavedModel")
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the model file is empty")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelLoadError(
            f"{path}: unknown model format '{suffix}': use {', '.join(SUFFIXES)} or a SavedModel folder"
        )
    return {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".onnx": "onnx"}[suffix]


def _h5_has_lambda(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
    except OSError as e:
        raise ModelLoadError(f"{path}: not a readable HDF5 model file ({e})") from None
    if config is None:
        raise ModelLoadError(f"{path}: HDF5 file holds no Keras model (weights only?): save the whole model")
    config = config.decode() if isinstance(config, bytes) else config
    return '"class_name": "Lambda"' in config or "'class_name': 'Lambda'" in config


def load(path: str | Path, trust: bool = False, onnx_input_shape=(), workdir: Path | None = None, out=None):
    """Returns (tf_keras model, info dict for the manifest, the Keras 3 model or None). A file written by
    Keras 3 comes with the Keras 3 model it holds: the reference, run by the Keras that wrote it. `out`: where
    a Keras 3 model that tf_keras cannot rebuild is exported to (see keras3_export)."""
    import tf_keras

    path = Path(path)
    k = kind(path)
    info = {"path": str(path), "format": k}
    original = None
    try:
        if k == "h5" and _h5_has_lambda(path) and not trust:
            raise ModelLoadError(
                f"{path}: contains Lambda layers whose code would run on load; "
                "pass --trust-model only if you trust this file"
            )
        written_by = keras3.version(path, k)
        if keras3.is_keras3(written_by):
            original = keras3.load(path, trust)
            info["keras"] = written_by
            try:
                model, info["keras3"] = keras3.rebuild(original), "rebuilt in tf_keras (weights copied)"
            except keras3.Unrebuildable as e:
                model, info = keras3_export(original, info, str(e), out)
        elif k == "savedmodel" and not keras3.has_keras_layers(path):
            model = keras3.signature_model(path)
            info["keras3"] = "SavedModel without Keras layers: its serving_default signature"
            info["output_names"] = model.edge_export_output_names
        elif k == "keras":
            model = tf_keras.models.load_model(path, compile=False, safe_mode=not trust)
        elif k in ("h5", "savedmodel"):
            model = tf_keras.models.load_model(path, compile=False)
        else:
            model, info = _from_onnx(path, onnx_input_shape, workdir), {**info, "converter": "onnx2tf"}
    except ModelLoadError:
        raise
    except keras3.Unrebuildable as e:
        raise ModelLoadError(f"{path}: cannot load as a {k} model ({e})") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: cannot load as a {k} model ({type(e).__name__}: {first})") from None
    if not isinstance(model, tf_keras.Model):
        raise ModelLoadError(f"{path}: loaded object is not a Keras model; save it with Keras or export ONNX")
    if len(model.inputs) != 1:
        raise ModelLoadError(
            f"{path}: the model has {len(model.inputs)} inputs; only single-input models are supported"
        )
    info["input_shape"] = [None if d is None else int(d) for d in model.input_shape]
    return model, info, original


def keras3_export(original, info: dict, reason: str, out: Path):
    """The Keras 3 model exported by Keras 3 as a SavedModel into `out` and run through its signature: what a
    graph tf_keras cannot rebuild faithfully still builds (no fine-tuning, pruning or QAT). Returns (model, info)."""
    if out is None:
        raise keras3.Unrebuildable(reason)
    dest = Path(out) / keras3.SAVEDMODEL
    shutil.rmtree(dest, ignore_errors=True)
    original.export(str(dest), verbose=False)
    model = keras3.signature_model(dest)
    note = f"keras 3: {reason}; the model runs as Keras 3's own SavedModel export (no fine-tuning, pruning or QAT)"
    return model, {**info, "keras3": "exported by Keras 3 (SavedModel signature)", "fallbacks": [note]}


def _onnx_shape(path: Path, override) -> tuple[str, list[int]]:
    from pipeline.interface import load_onnx

    m = load_onnx(path)
    init = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ModelLoadError(f"{path}: the model has {len(inputs)} inputs; only single-input models are supported")
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim]
    if override:
        if len(override) != len(dims):
            raise ModelLoadError(f"model.onnx_input_shape has {len(override)} dims but the model input has {len(dims)}")
        dims = list(override)
    if any(d <= 0 for d in dims):
        raise ModelLoadError(
            f"{path}: input '{inputs[0].name}' has dynamic dimensions {dims}: "
            "set model.onnx_input_shape or --input-shape, e.g. 1,3,224,224"
        )
    return inputs[0].name, dims


def _from_onnx(path: Path, override, workdir: Path | None):
    """onnx2tf turns the NCHW ONNX graph into an NHWC tf_keras model (TFOpLambda layers)."""
    import onnx2tf

    name, dims = _onnx_shape(path, override)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        # onnx2tf overwrites its input with the simplified graph: it gets a copy (each attempt), never the user's file.
        # For 3-channel inputs onnx2tf runs a sanity inference on sample images it would download;
        # a seeded random file of that name in its working folder keeps it offline.
        np.save(
            tmp / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32),
        )
        cwd, path_env = os.getcwd(), os.environ.get("PATH", "")
        source = Path(path).resolve()  # a path relative to where the user ran us, read after the chdir
        os.chdir(tmp)
        # onnx2tf fixes the input shape and simplifies by running the `onnxsim` program; without it
        # on PATH it silently keeps the dynamic shape. It sits beside our interpreter.
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path_env])
        head = _without_const_sub(source, tmp / "source.onnx")
        replace = []
        try:
            with report.step("convert", f"ONNX -> Keras (onnx2tf, input {name} {dims})"):
                for attempt in range(CONCAT_RETRIES + 1):
                    # Always a replacement file, even empty: without one onnx2tf searches for one after a failure
                    # (minutes, and it never finds the fix for a YOLO head).
                    (tmp / "replace.json").write_text(json.dumps({"format_version": 1, "operations": replace}))
                    shutil.copyfile(tmp / "source.onnx", tmp / "model.onnx")
                    try:
                        # onnx2tf prints a failure's trace on stdout (the build's table) even when a retry fixes it
                        with contextlib.redirect_stdout(io.StringIO()):
                            model = onnx2tf.convert(
                                input_onnx_file_path="model.onnx",
                                output_folder_path="saved_model",
                                overwrite_input_shape=[f"{name}:{','.join(map(str, dims))}"],
                                non_verbose=True,
                                param_replacement_file="replace.json",
                                # the Keras model is all we keep: no SavedModel or .tflite files of onnx2tf's own (time;
                                # and a SavedModel refuses some op names, e.g. YOLO11's)
                                disable_model_save=True,
                                # a detector's head (one 3-D output): YOLO11's attention has a depthwise conv that
                                # onnx2tf otherwise makes a layer holding a tf.Variable, which the Keras model
                                # cannot be saved with (VariableSpec is not JSON); as separable convolutions it can
                                disable_group_convolution=head,
                            )
                        break
                    except (Exception, SystemExit) as e:  # onnx2tf ends some failures with sys.exit(1)
                        more = _transposed_concat_inputs(e, tmp / "model.onnx") if attempt < CONCAT_RETRIES else []
                        if not more:
                            raise
                        replace += more
        except (Exception, SystemExit) as e:
            raise ConversionError(f"{path}: onnx2tf cannot convert it ({_onnx2tf_reason(e)})") from None
        finally:
            os.chdir(cwd)
            os.environ["PATH"] = path_env
    return model


def _without_const_sub(path: Path, dest: Path) -> bool:
    """The user's graph with each `Sub(constant, x)` written `Add(Neg(x), constant)` (the same values; constant:
    what does not depend on the samples' values, once the input's shape is fixed), saved to
    `dest`. Through onnx2tf, a Sub whose first operand is a constant computes x - constant in the TFLite file
    made from the Keras model (the Keras model itself is right): a YOLOv8 head's box corners (anchor - distance)
    came out swapped, max |diff| 459 px on yolov8n at 160 px; with Add(Neg) it is 2e-4. Returns whether the graph
    has one 3-D output (a detector's head): only such graphs are rewritten."""
    import onnx
    from onnx import helper

    m = onnx.load(path)
    g = m.graph
    head = len(g.output) == 1 and len(g.output[0].type.tensor_type.shape.dim) == 3
    if not head:  # seen on detectors' heads; other graphs go to onnx2tf as they are (not measured on them yet)
        onnx.save(m, dest)
        return False
    # What the samples' values flow into; a Shape's output is not (the input's shape is fixed from the data):
    # a dynamic export computes a YOLO head's anchors from its feature maps' shapes.
    varies = {i.name for i in g.input} - {i.name for i in g.initializer}
    for n in g.node:  # graph nodes are in topological order
        if n.op_type != "Shape" and any(i in varies for i in n.input):
            varies.update(n.output)
    nodes = []
    for n in g.node:
        if n.op_type == "Sub" and n.input[0] not in varies and n.input[1] in varies:
            neg = f"{n.output[0]}__neg"
            nodes.append(helper.make_node("Neg", [n.input[1]], [neg], name=f"{n.name or n.output[0]}__neg"))
            nodes.append(helper.make_node("Add", [neg, n.input[0]], list(n.output), name=n.name))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, dest)
    return True


CONCAT_RETRIES = 3
"""At most this many Concats of 3-D tensors (a detector's head) are put right by re-running onnx2tf."""


def _transposed_concat_inputs(e: BaseException, simplified: Path) -> list[dict]:
    """onnx2tf's parameter replacements for a Concat it stopped at because it made some of its 3-D inputs
    channels-last ([N, A, 4] against [N, C, A]: a YOLO head's box and class branches) and not the others: each
    such input is transposed back to the ONNX layout before the Concat. Empty when the failure is another one.
    `simplified`: the graph onnx2tf converted (it writes the simplified, fixed-shape graph over its input)."""
    import onnx

    node = getattr(e, "onnx_op_name", None)
    found = re.search(r"with input shapes: (.*?)(?: and |\.|$)", str(e))
    if not node or not found or not simplified.exists():
        return []
    tf_shapes = [[int(d) for d in s.split(",") if d] for s in re.findall(r"\[([\d,]*)\]", found[1])]
    graph = onnx.shape_inference.infer_shapes(onnx.load(simplified)).graph
    concat = next((n for n in graph.node if n.name == node and n.op_type == "Concat"), None)
    if concat is None:
        return []
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    fixes = []
    for name, tf_shape in zip(concat.input, tf_shapes):
        s = shapes.get(name)
        if s and len(s) == 3 and tf_shape == [s[0], s[2], s[1]] and tf_shape != s:
            op = {"op_name": node, "param_target": "inputs", "param_name": name}
            fixes.append({**op, "pre_process_transpose_perm": [0, 2, 1]})
    return fixes


def _onnx2tf_reason(e: BaseException) -> str:
    """onnx2tf's failure in one line, with the ONNX node it stopped at (it attaches `onnx_op_name`)."""
    name = getattr(e, "name", None) or ""
    if isinstance(e, ModuleNotFoundError) and name.startswith("onnx2tf.ops."):
        what = f"no converter for the ONNX op {name.rsplit('.', 1)[1]}"
    elif isinstance(e, SystemExit):
        what = "it stopped with exit code 1"
    else:
        text = str(e).strip()
        what = f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
    node = getattr(e, "onnx_op_name", None)
    return f"{what}, at node '{node}'" if node else what


def describe_outputs(model) -> list[dict]:
    return [{"name": t.name, "shape": [None if d is None else int(d) for d in t.shape]} for t in model.outputs]


def is_classifier(model, n_labels: int) -> bool:
    """One output whose last dimension is the number of classes: accuracy applies."""
    from targets.metrics import is_classifier as classifier

    return classifier([tuple(o.shape) for o in model.outputs], n_labels)
