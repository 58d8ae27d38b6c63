"""Models saved by Keras 3 (the `keras` TensorFlow 2.21 installs), written here by Keras 3 itself.

Keras 3 writes them in a child process without TF_USE_LEGACY_KERAS, as a user's script would: a three-head
model (softmax score [2], regressions [4] and [10], PReLU) and a one-output classifier, each as `.keras`,
`.h5` and `model.export()` SavedModel; beside them its outputs on the test samples, the reference every
build must take.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

from targets import TARGETS

pytestmark = pytest.mark.slow

FORMS = {"keras": "{}.keras", "h5": "{}.h5", "export": "{}_export"}

WRITE = """
import sys
import numpy as np, keras
from sklearn.datasets import load_digits

out = sys.argv[1]
assert keras.__version__.startswith("3."), keras.__version__
d = load_digits()
x, y = (d.images / 16.0).astype("float32")[..., None], d.target
np.savez(f"{out}/digits.npz", x_train=x[:1200], y_train=y[:1200], x_test=x[1200:], y_test=y[1200:])
keras.utils.set_random_seed(0)
L = keras.layers


def heads():  # also what rebuilding must get right: a residual Add, Concatenate, a nested model, Dropout
    inp = keras.Input((8, 8, 1), name="pixels")
    h = L.PReLU(shared_axes=[1, 2])(L.Conv2D(8, 3, padding="same")(inp))
    h = L.Add()([h, L.DepthwiseConv2D(3, padding="same")(h)])
    h = L.PReLU(shared_axes=[1, 2])(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(L.MaxPooling2D()(h))))
    block = keras.Sequential([keras.Input((4, 4, 16)), L.Conv2D(8, 1), L.PReLU()], name="block")
    h = L.Concatenate()([h, block(h)])
    h = L.PReLU()(L.Dense(16)(L.Dropout(0.1)(L.Flatten()(h))))
    m = keras.Model(inp, [L.Dense(2, activation="softmax", name="score")(h), L.Dense(4, name="box")(h),
                          L.Dense(10, name="marks")(h)])
    m.compile("adam", ["sparse_categorical_crossentropy", "mse", "mse"])
    m.fit(x[:1200], [y[:1200] % 2, np.stack([y[:1200] / 9.0] * 4, 1), np.eye(10)[y[:1200]]], epochs=3, verbose=0)
    return m


def single():
    m = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu"),
                          L.MaxPooling2D(), L.Flatten(), L.Dense(16, activation="relu"),
                          L.Dense(10, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x[:1200], y[:1200], epochs=6, verbose=0)
    return m


def rms():  # RMSNormalization exists in Keras 3 only: tf_keras cannot rebuild it
    inp = keras.Input((8, 8, 1))
    h = L.RMSNormalization()(L.Flatten()(inp))
    return keras.Model(inp, L.Dense(10, activation="softmax")(h))


for name, m in {"heads": heads(), "single": single(), "rms": rms()}.items():
    m.save(f"{out}/{name}.keras")
    m.save(f"{out}/{name}.h5")
    m.export(f"{out}/{name}_export", verbose=False)
    np.savez(f"{out}/{name}_keras3.npz", *m.predict(x[1200:], verbose=0) if name == "heads" else
             [m.predict(x[1200:], verbose=0)])
inp = keras.Input((8, 8, 1))
keras.Model(inp, L.Lambda(lambda t: t * 2.0)(inp)).save(f"{out}/lambda.keras")
"""


@pytest.fixture(scope="session")
def keras3_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras3")
    env = {"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", WRITE, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def keras3_outputs(files: Path, name: str) -> list[np.ndarray]:
    with np.load(files / f"{name}_keras3.npz") as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def build(files, tmp_path, name, form, targets, *extra, config="[ptq]\nchoose = false\n"):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config)
    model = files / FORMS[form].format(name)
    proc = run_cli(
        "build", "--config", cfg, "--model", model, "--data", files / "digits.npz",
        "--target", targets, "--out", tmp_path / "out", *extra,
    )  # fmt: skip
    manifest = tmp_path / "out" / model.stem / "manifest.json"
    m = json.loads(manifest.read_text()) if manifest.exists() else None
    return proc, m


def reference(tmp_path) -> list[np.ndarray]:
    """The train stage's reference outputs (what every artifact was measured against)."""
    (path,) = (tmp_path / "out" / ".cache" / "train").glob("*/reference_outputs.npz")
    with np.load(path) as z:
        return [z[f"output_{i}"] for i in range(len(z.files))]


@pytest.mark.parametrize("form", FORMS)
def test_a_keras3_three_head_prelu_model_loads_in_each_form_and_keras3_is_its_reference(keras3_files, tmp_path, form):
    # Default settings (the int8 choice on): what "its int8 targets pass the default gates" means.
    proc, m = build(keras3_files, tmp_path, "heads", form, "all", "--prune", "none", config="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = m["stages"]["train"]["source_model"]
    if form == "export":
        assert "serving_default" in source["keras3"] and source["output_names"] == ["output_0", "output_1", "output_2"]
    else:
        assert source["keras"].startswith("3.") and source["keras3"].startswith("rebuilt in tf_keras")
        assert source["max_abs_diff_vs_keras3"] < 1e-5
    for ours, theirs in zip(reference(tmp_path), keras3_outputs(keras3_files, "heads"), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    rows = {a["target"]: a for a in m["artifacts"]}
    assert len(rows) == len(TARGETS) and all(a["status"] == "ok" for a in rows.values()), rows
    assert rows["onnx-fp32"]["max_abs_diff"] < 1e-5
    names = source["output_names"] if form == "export" else ["score", "box", "marks"]
    for a in rows.values():  # each head measured by its own figure, in the original's order
        assert [h["name"] for h in a["heads"]] == names, a["heads"]
        assert [h["kind"] for h in a["heads"]] == ["scores", "regression", "regression"], a["heads"]


@pytest.mark.parametrize("form", FORMS)
def test_a_keras3_classifier_in_each_form_builds_float_and_int8_targets(keras3_files, tmp_path, form):
    targets = "tflite-fp32,onnx-fp32,openvino-fp32,tflite-int8"
    config = "[prune]\nepochs = 1\nsparsity = 0.3\n[qat]\nepochs = 1\n[ptq]\nchoose = false\n[build]\nmax_accuracy_drop = 5.0\n"
    proc, m = build(keras3_files, tmp_path, "single", form, targets, config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ours,), (theirs,) = reference(tmp_path), keras3_outputs(keras3_files, "single")
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    rows = {a["target"]: a for a in m["artifacts"]}
    assert all(rows[t]["status"] == "ok" for t in targets.split(",")), rows
    prune, qat = m["stages"]["prune"], m["stages"]["qat"]
    if form == "export":  # no Keras layers: the int8 file is post-training quantization, and the build says why
        assert prune["pruned_layers"] == 0 and qat["method"] == "ptq"
        assert any("SavedModel without Keras layers" in f for f in rows["tflite-int8"]["fallbacks"])
    else:  # the tf_keras rebuild is what tfmot prunes and quantization-aware trains
        assert prune["pruned_layers"] > 0 and prune["sparsity"] > 0.2
        assert qat["method"] == "qat" and rows["tflite-int8"]["made_from"] == "qat"


def test_a_keras3_layer_tf_keras_lacks_builds_from_keras3s_own_export(keras3_files, tmp_path):
    proc, m = build(keras3_files, tmp_path, "rms", "keras", "onnx-fp32", "--prune", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RMSNormalization" in proc.stderr and "Keras 3's own SavedModel export" in proc.stderr
    assert m["stages"]["train"]["source_model"]["keras3"].startswith("exported by Keras 3")
    (ours,), (theirs,) = reference(tmp_path), keras3_outputs(keras3_files, "rms")
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert m["artifacts"][0]["status"] == "ok"
    assert proc.returncode == 0


def test_a_keras3_file_with_lambda_code_is_refused_in_one_line_naming_it(keras3_files, tmp_path):
    proc, _ = build(keras3_files, tmp_path, "lambda", "keras", "onnx-fp32")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "lambda.keras" in line and "--trust-model" in line
    assert "Traceback" not in proc.stderr
