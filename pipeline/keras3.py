"""Models written by Keras 3 (the `keras` TensorFlow 2.21 installs), brought into the tf_keras pipeline.

tfmot (prune, QAT) only works on tf_keras (Keras 2) models, and tf_keras cannot read Keras 3's files
(`.keras`: "parent module tf_keras.src.models.functional cannot be imported"; `.h5`: InputLayer's
`batch_shape`). So a Keras 3 `.keras` / `.h5` is loaded by Keras 3 itself (the reference of every
figure), its functional graph rebuilt in tf_keras from its config and its weights copied: the rebuilt
model runs every stage. A graph tf_keras cannot rebuild (custom or Keras-3-only layers, Lambda), or
whose rebuilt outputs differ from Keras 3's, is exported by Keras 3 as a SavedModel instead.

A SavedModel without Keras layers (Keras 3's `model.export()`, `tf.saved_model.save`) holds the
computation, not the layers: it is run through its `serving_default` signature inside a one-layer
tf_keras model, which the converters take as any other; there is nothing for tfmot to prune or
quantization-aware train (the stages say so). Its outputs are the signature's, in natural key order
(`output_0`, `output_1`, ... : the Keras model's order for `model.export()`).
"""

from __future__ import annotations

import inspect
import json
import re
import zipfile
from pathlib import Path

from pipeline.errors import ModelLoadError

SAVEDMODEL = "savedmodel"
"""A stage's model without Keras layers: this SavedModel folder, beside (instead of) its model.h5."""


class Unrebuildable(Exception):
    """The Keras 3 graph has no faithful tf_keras counterpart; the message says why."""


def version(path: Path, kind: str) -> str | None:
    """The Keras version that wrote a .keras or .h5 file, as it recorded it (None if it did not)."""
    if kind == "keras":
        try:
            with zipfile.ZipFile(path) as z:
                return str(json.loads(z.read("metadata.json")).get("keras_version")) or None
        except (zipfile.BadZipFile, KeyError, ValueError, OSError):
            return None  # not a Keras 3 zip: the Keras 2 loader says what is wrong with it
    if kind == "h5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                v = f.attrs.get("keras_version")
        except OSError:
            return None
        return (v.decode() if isinstance(v, bytes) else str(v)) if v is not None else None
    return None


def is_keras3(v: str | None) -> bool:
    return bool(v) and v.split(".")[0].isdigit() and int(v.split(".")[0]) >= 3


def has_keras_layers(folder: Path) -> bool:
    """tf_keras writes keras_metadata.pb into the SavedModels it saves; Keras 3's export and tf.saved_model do not."""
    return (folder / "keras_metadata.pb").is_file()


def load(path: Path, trust: bool):
    """The Keras 3 model in the file, loaded by Keras 3 (safe mode unless `trust`)."""
    import keras

    if not is_keras3(keras.__version__):
        raise Unrebuildable(f"written by Keras 3, but this environment's `keras` is {keras.__version__}")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except ValueError as e:
        if "safe_mode=False" not in str(e):
            raise
        raise ModelLoadError(
            f"{path}: holds Python code (a Lambda layer) that would run on load; "
            "pass --trust-model only if you trust this file"
        ) from None


# -- rebuilding the functional graph in tf_keras -------------------------------------------------

# Layer keyword arguments tf_keras's base Layer takes beyond its subclasses' own __init__ parameters.
LAYER_KWARGS = {"batch_input_shape", "input_shape", "batch_size", "input_dim", "activity_regularizer", "weights"}


def rebuild(original):
    """A tf_keras model computing what the Keras 3 `original` computes: same graph, layer names, weights.
    Raises Unrebuildable with the reason when it cannot be made."""
    import tf_keras

    cls = type(original).__name__
    if cls not in ("Functional", "Sequential"):
        raise Unrebuildable(f"a subclassed model ({cls}) has no graph to rebuild")
    try:
        config = _model_config(cls, original.get_config())
        model = tf_keras.layers.deserialize({"class_name": cls, "config": config})
    except Unrebuildable:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise Unrebuildable(f"tf_keras cannot rebuild the graph ({type(e).__name__}: {_first_line(e)})") from None
    source = {layer.name: layer for layer in original.layers}
    for layer in model.layers:
        weights = source[layer.name].get_weights()
        if weights or layer.weights:
            try:
                layer.set_weights(weights)
            except ValueError as e:
                raise Unrebuildable(f"layer '{layer.name}': the weights do not fit ({_first_line(e)})") from None
    return model


def compare(outs, reference, tolerance: float = 1e-4) -> tuple[float | None, str | None]:
    """The rebuilt model's outputs against Keras 3's: (max |diff|, why they are not equal within float
    rounding relative to each output's range, or None)."""
    import numpy as np

    if [o.shape for o in outs] != [r.shape for r in reference]:
        return None, f"outputs {[o.shape for o in outs]} are not Keras 3's {[r.shape for r in reference]}"
    diffs = [float(np.max(np.abs(o - r))) if o.size else 0.0 for o, r in zip(outs, reference)]
    for i, (d, r) in enumerate(zip(diffs, reference)):
        if not d <= tolerance * max(1.0, float(np.max(np.abs(r))) if r.size else 1.0):
            return max(diffs), f"output {i} differs from Keras 3's by up to {d:.3g}"
    return max(diffs, default=0.0), None


def _model_config(cls: str, config: dict) -> dict:
    # tf_keras counts a nested model's own Input as its node 0, so its calls here are nodes 1, 2, ...;
    # Keras 3 numbers them from 0.
    nested = {
        e["config"]["name"]
        for e in config["layers"]
        if e["class_name"] in ("Functional", "Sequential") and e["config"]["layers"][0]["class_name"] == "InputLayer"
    }
    layers = [_layer(entry, cls == "Functional", nested) for entry in config["layers"]]
    # tf_keras's reconstruction loops forever on a call it cannot resolve: every reference must exist.
    calls = {e["name"]: len(e.get("inbound_nodes", [])) + (e["name"] in nested) for e in layers}
    calls.update({e["name"]: 1 for e in layers if e["class_name"] == "InputLayer"})
    for e in layers:
        for node in e.get("inbound_nodes", []):
            for layer, index, *_ in node:
                if index >= calls.get(layer, 0):
                    raise Unrebuildable(f"layer '{e['name']}' takes call {index} of '{layer}', which tf_keras lacks")
    if cls == "Sequential":
        return {"name": config["name"], "layers": layers}
    return {
        "name": config["name"],
        "layers": layers,
        "input_layers": config["input_layers"],
        "output_layers": config["output_layers"],
    }


def _layer(entry: dict, functional: bool, nested: set) -> dict:
    cls, name = entry["class_name"], entry["config"].get("name", entry.get("name"))
    registered = entry.get("registered_name")
    if registered not in (None, cls) or not str(entry.get("module", "keras")).startswith("keras"):
        raise Unrebuildable(f"layer '{name}' is a custom class ({registered or cls}) tf_keras does not know")
    if cls in ("Functional", "Sequential"):
        config = _model_config(cls, entry["config"])
    elif cls == "Lambda":
        raise Unrebuildable(f"layer '{name}' is a Lambda: its Python code cannot move to tf_keras")
    else:
        config = _layer_config(cls, name, entry["config"])
    out = {"class_name": cls, "config": config, "name": name}
    if functional:
        out["inbound_nodes"] = [_node(name, node, nested) for node in entry.get("inbound_nodes", [])]
    return out


def _layer_config(cls: str, name: str, config: dict) -> dict:
    import tf_keras

    target = getattr(tf_keras.layers, cls, None)
    if target is None:
        raise Unrebuildable(f"layer '{name}' ({cls}) has no tf_keras counterpart")
    config = {k: _value(v) for k, v in config.items()}
    if cls == "InputLayer":
        config["batch_input_shape"] = config.pop("batch_shape", None)
        if "shape" in config:  # older Keras 3 files
            config["batch_input_shape"] = [None, *config.pop("shape")]
    return _known(target, config, f"layer '{name}'", extra=LAYER_KWARGS)


def _known(target, config: dict, what: str, extra=()) -> dict:
    """`config` without the keys `target` does not take: only if they are unset (None, False, empty)."""
    allowed = set(extra)
    for c in inspect.getmro(target):
        if "__init__" in vars(c):
            allowed |= set(inspect.signature(c.__init__).parameters) - {"self", "args", "kwargs"}
    for k in [k for k in config if k not in allowed]:
        if config[k] not in (None, False, [], {}, ""):
            raise Unrebuildable(f"{what}: Keras 3 setting {k}={config[k]!r} has no tf_keras counterpart")
        del config[k]
    return config


def _value(v):
    """A Keras 3 config value in tf_keras's form: dtype policies as their name, serialized initializers,
    regularizers and constraints as {class_name, config}, activations as their name."""
    import tf_keras

    if isinstance(v, list):
        return [_value(x) for x in v]
    if not (isinstance(v, dict) and "class_name" in v and "config" in v):
        return v
    cls, module, config = v["class_name"], str(v.get("module") or ""), v["config"]
    if cls.endswith("DTypePolicy"):
        if cls not in ("DTypePolicy", "FloatDTypePolicy"):
            raise Unrebuildable(f"dtype policy {cls} (a quantized Keras 3 model) has no tf_keras counterpart")
        return config["name"]
    if cls == "function" or module.endswith("activations"):
        return config if isinstance(config, str) else cls
    kind = module.rsplit(".", 1)[-1]
    if kind not in ("initializers", "regularizers", "constraints") or v.get("registered_name") not in (None, cls):
        raise Unrebuildable(f"{module}.{cls} has no tf_keras counterpart")
    target = getattr(getattr(tf_keras, kind), cls, None)
    if target is None:
        raise Unrebuildable(f"{module}.{cls} has no tf_keras counterpart")
    return {"class_name": cls, "config": _known(target, {k: _value(x) for k, x in config.items()}, f"{cls}")}


def _node(name: str, node: dict, nested: set) -> list:
    """Keras 3's {"args": [tensor or list of tensors], "kwargs": {...}} as tf_keras's [[layer, node, index, kwargs]...].
    `training` is dropped: Keras 3 records the value it traced with, but the call decides (as in tf_keras)."""
    args, kwargs = node.get("args", []), node.get("kwargs", {})
    if len(args) != 1:
        raise Unrebuildable(f"layer '{name}' is called with {len(args)} positional arguments")
    tensors = args[0] if isinstance(args[0], list) else [args[0]]
    if not all(_is_tensor(t) for t in tensors) or any(_is_tensor(x) for x in kwargs.values()):
        raise Unrebuildable(f"layer '{name}' is called in a way tf_keras configs cannot express")
    kwargs = {k: _value(x) for k, x in kwargs.items() if k != "training" and x is not None}
    entries = []
    for t in tensors:
        layer, index, tensor = t["config"]["keras_history"]
        entries.append([layer, index + (layer in nested), tensor, kwargs])
    return entries


def _is_tensor(x) -> bool:
    return isinstance(x, dict) and x.get("class_name") == "__keras_tensor__"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# -- a SavedModel without Keras layers -----------------------------------------------------------


def signature_model(folder: Path):
    """A tf_keras model of one layer running the SavedModel's `serving_default` signature (one float input;
    outputs in natural key order). Its variables are the layer's weights (parameter counts, sizes)."""
    import tensorflow as tf
    import tf_keras

    loaded = tf.saved_model.load(str(folder))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise Unrebuildable("the SavedModel has no serving_default signature (export with model.export())")
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise Unrebuildable(f"the signature has {len(inputs)} inputs; only single-input models are supported")
    (input_name, spec), keys = next(iter(inputs.items())), sorted(signature.structured_outputs, key=_natural)
    if spec.dtype != tf.float32 or spec.shape.rank is None or spec.shape.rank < 2:
        raise Unrebuildable(f"input '{input_name}' is {spec.dtype.name} {spec.shape}: a float32 batch is needed")

    class ServingSignature(tf_keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.saved = list(loaded.variables)  # tracked: the layer's weights
            self.loaded = loaded  # kept alive: the signature runs its functions

        def call(self, x):
            out = signature(**{input_name: x})
            return [out[k] for k in keys] if len(keys) > 1 else out[keys[0]]

    x = tf_keras.Input(batch_shape=tuple(spec.shape), name=input_name)
    outs = ServingSignature(name="serving_default")(x)
    # Each output named as the signature names it (what the converters call the artifact's outputs).
    outs = [tf_keras.layers.Activation("linear", name=k)(t) for k, t in zip(keys, outs if len(keys) > 1 else [outs])]
    model = tf_keras.Model(x, outs if len(outs) > 1 else outs[0], name=Path(folder).name)
    model.edge_export_savedmodel = Path(folder)
    model.edge_export_output_names = keys
    return model


def is_signature_model(model) -> bool:
    return getattr(model, "edge_export_savedmodel", None) is not None


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]
