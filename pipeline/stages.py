"""The TensorFlow stages: train, prune, quantization-aware training. Plain functions.

Each takes its inputs (data, a model file) and its own config section, writes its outputs into
a folder given by the cache, and returns metadata for the manifest. TensorFlow is imported only
when a stage really runs, so a fully cached build never pays for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from pipeline import report

# Bump a stage's version when its meaning changes: every cached output of it becomes stale.
VERSIONS = {"data": 1, "train": 1, "prune": 2, "qat": 1, "export": 1, "verify": 1}


@contextlib.contextmanager
def stderr_silenced():
    """TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) ignores TF_CPP_MIN_LOG_LEVEL."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tf_setup(seed: int):
    """Import TensorFlow with legacy Keras (tfmot needs it) and make training deterministic."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
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

    if qat:
        import tensorflow_model_optimization as tfmot

        with tfmot.quantization.keras.quantize_scope():
            return tf_keras.models.load_model(path, compile=False)
    return tf_keras.models.load_model(path, compile=False)


def _progress_callback(keras, label: str, epochs: int):
    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            extra = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy"))
            report.progress(label, epoch + 1, epochs, extra)

    return Progress()


def _fit(keras, model, ds, epochs, lr, batch_size, label, callbacks=()):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
              callbacks=[*callbacks, _progress_callback(keras, label, epochs)])


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=-1) == y))


def default_model(keras, input_shape, n_classes: int, filters: int):
    """A small CNN for small images: two conv blocks, a dense layer, softmax."""
    L = keras.layers
    return keras.Sequential([
        keras.Input(shape=input_shape),
        L.Conv2D(filters, 3, padding="same", activation="relu"),
        L.Conv2D(filters * 2, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Conv2D(filters * 4, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(64, activation="relu"),
        L.Dense(n_classes, activation="softmax"),
    ], name="digits_cnn")


def train(ds, cfg, seed: int, out: Path) -> dict:
    tf, keras = tf_setup(seed)
    model = default_model(keras, ds.x_train.shape[1:], len(ds.labels), cfg.model.filters)
    _fit(keras, model, ds, cfg.train.epochs, cfg.train.learning_rate, cfg.train.batch_size, "train")
    model.save(out / "model.h5")
    probs = model.predict(ds.x_test, verbose=0)
    return {"accuracy": accuracy(probs, ds.y_test), "params": int(model.count_params())}


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


def prune(ds, cfg, seed: int, model_path: Path, out: Path) -> dict:
    """Magnitude pruning to cfg.prune.sparsity, then strip; saves the reference outputs on the test set."""
    tf, keras = tf_setup(seed)
    import tensorflow_model_optimization as tfmot

    model = load_model(model_path)
    p = cfg.prune
    if p.sparsity > 0:
        steps = int(np.ceil(len(ds.x_train) / cfg.train.batch_size)) * p.epochs
        end = max(1, int(steps * 0.6))
        # tfmot's default frequency (100 steps) would skip the schedule entirely on short runs.
        schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=p.sparsity,
                                                        begin_step=0, end_step=end, frequency=max(1, end // 10))
        wrapped = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        _fit(keras, wrapped, ds, p.epochs, p.learning_rate, cfg.train.batch_size, "prune",
             callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        model = tfmot.sparsity.keras.strip_pruning(wrapped)
    model.save(out / "model.h5")
    probs = model.predict(ds.x_test, verbose=0).astype(np.float32)
    np.save(out / "reference_outputs.npy", probs)
    return {"accuracy": accuracy(probs, ds.y_test), "sparsity": round(weight_sparsity(model), 4),
            "params": int(model.count_params())}


def qat(ds, cfg, seed: int, model_path: Path, out: Path) -> dict:
    """Quantization-aware fine-tuning that keeps the pruned zeros (PQAT)."""
    tf, keras = tf_setup(seed)
    import tensorflow_model_optimization as tfmot

    model = load_model(model_path)
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    scheme = (tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme() if cfg.prune.sparsity > 0
              else tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme())
    q = tfmot.quantization.keras.quantize_apply(annotated, scheme)
    _fit(keras, q, ds, cfg.qat.epochs, cfg.qat.learning_rate, cfg.train.batch_size, "qat")
    q.save(out / "model.h5")
    probs = q.predict(ds.x_test, verbose=0)
    return {"accuracy": accuracy(probs, ds.y_test), "sparsity": round(weight_sparsity(q), 4)}
