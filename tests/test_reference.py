"""The user's model is the reference: every figure and every gate is end to end, against the model as
brought (or the trained built-in one), never against one of the pipeline's intermediate models.

Figures are computed here from the original model itself, never read back from the manifest.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_PTQ_CHOICE, ROOT, run_cli

from pipeline.util import sha256_file

pytestmark = pytest.mark.slow

ASSETS = Path(os.environ.get("EDGE_EXPORT_TEST_ASSETS", ROOT / ".venv" / "test-assets"))
needs_assets = pytest.mark.skipif(not (ASSETS / "READY").exists(), reason="run scripts/fetch_test_assets.sh first")


def original_outputs(model_path: Path, x: np.ndarray) -> np.ndarray:
    from pipeline import stages

    _, keras = stages.tf_setup(0)
    return stages.predict(keras.models.load_model(model_path, compile=False), x)[0]


def artifact_outputs(out: Path, model: str, target: str, x_file: Path, tmp: Path) -> np.ndarray:
    from pipeline import runner
    from pipeline.gate import load_outputs
    from targets import TARGETS

    t = TARGETS[target]
    res = runner.run(t.runner_path, out / model / target / t.filename, ["--inputs", x_file, "--outputs", tmp / "o.npz"])
    assert res["ok"], res.get("error")
    return load_outputs(tmp / "o.npz")[0]


def held_out(out: Path, model: str) -> tuple[Path, np.ndarray | None]:
    import pipeline

    b = pipeline.built(out=out)
    x = b.eval_inputs()
    y = x.with_name("y_test.npy")
    return x, np.load(y) if y.exists() else None


@pytest.fixture(scope="module")
def users_classifier(tmp_path_factory):
    """A labelled Keras classifier of the user's own (trained here, saved as .h5) and its data."""
    from sklearn.datasets import load_digits

    from pipeline import stages

    folder = tmp_path_factory.mktemp("user")
    _, keras = stages.tf_setup(0)
    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64)
    np.savez(folder / "digits.npz", x=x, y=y)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=4, verbose=0)
    model.save(folder / "my_classifier.h5")
    return folder


def test_a_users_classifier_is_named_after_its_file_and_every_figure_is_against_it(users_classifier, tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "c.toml"
    cfg.write_text(NO_PTQ_CHOICE)  # otherwise the defaults
    proc = run_cli(
        "build",
        "--config",
        cfg,
        "--model",
        users_classifier / "my_classifier.h5",
        "--data",
        users_classifier / "digits.npz",
        "--target",
        "tflite-fp32,tflite-int8",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "original: accuracy" in proc.stderr and "vs original:" in proc.stderr
    m = json.loads((out / "my_classifier" / "manifest.json").read_text())
    x_file, y = held_out(out, "my_classifier")
    x = np.load(x_file)
    original = original_outputs(users_classifier / "my_classifier.h5", x)
    original_acc = float(np.mean(original.argmax(-1) == y))
    assert m["stages"]["train"]["accuracy"] == pytest.approx(original_acc, abs=1e-9)
    assert m["stages"]["prune"]["auto"]["chosen"] in (0.75, 0.5, 0.25, 0.0)
    for a in m["artifacts"]:
        out_a = artifact_outputs(out, "my_classifier", a["target"], x_file, tmp_path)
        acc = float(np.mean(out_a.argmax(-1) == y))
        assert a["status"] == "ok"
        assert a["reference_accuracy"] == pytest.approx(original_acc, abs=1e-9)
        assert a["accuracy"] == pytest.approx(acc, abs=1e-9)
        assert (original_acc - acc) * 100 <= 1.0  # the default budget, end to end


def test_a_destructive_setting_fails_at_the_prune_stage_with_both_figures(users_classifier, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[prune]\nsparsity = 0.95\nepochs = 1\n")
    out = tmp_path / "out"
    proc = run_cli(
        "build",
        "--config",
        cfg,
        "--model",
        users_classifier / "my_classifier.h5",
        "--data",
        users_classifier / "digits.npz",
        "--target",
        "tflite-int8",
        "--out",
        out,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: prune: the pruned model already breaks the build's budget"), last
    assert "vs the original model's" in last and "lower prune.sparsity (now 0.95)" in last
    assert not (out / "my_classifier" / "tflite-int8").exists()


def test_bench_and_release_on_a_brought_models_build_leave_it_untouched(users_classifier, tmp_path):
    out, dist = tmp_path / "out", tmp_path / "dist"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[prune]\nmethod = "none"\n[qat]\nepochs = 0\n')
    proc = run_cli(
        "build",
        "--config",
        cfg,
        "--model",
        users_classifier / "my_classifier.h5",
        "--data",
        users_classifier / "digits.npz",
        "--target",
        "tflite-int8,onnx-fp32",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted((out / "my_classifier").rglob("*"))
    before = {p: sha256_file(p) for p in files if p.is_file() and p.name != ".lock"}
    proc = run_cli("bench", "--out", out, "--target", "tflite-int8", "--runs", "5", "--min-seconds", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "digits-cnn").exists()  # the demo was not trained into the user's folder
    proc = run_cli("bench", "--out", out, "--model", users_classifier / "my_classifier.h5", "--target", "tflite-int8")
    assert proc.returncode == 2 and "holds a build of another config" in proc.stderr
    assert run_cli("release", "--out", out, "--version", "0.1.0", "--dist", dist).returncode == 0
    again = run_cli("release", "--out", out, "--version", "0.1.0", "--dist", dist)
    assert again.returncode == 2 and "never replaced" in again.stderr and "--force" in again.stderr
    assert run_cli("release", "--out", out, "--version", "0.1.0", "--dist", dist, "--force").returncode == 0
    after = {p: sha256_file(p) for p in files if p.is_file() and p.name != ".lock"}
    assert after == before
    card = (dist / "my_classifier-0.1.0" / "MODEL_CARD.md").read_text()
    prune_row = next(line for line in card.splitlines() if line.startswith("| prune |"))
    assert prune_row.split(" | ")[2] == "method none"  # no setting of a method that did not run
    assert "channels_fraction" not in card
    qat_row = next(line for line in card.splitlines() if line.startswith("| qat |"))
    assert "ran no" in qat_row and "post-training quantization" in qat_row


@needs_assets
def test_a_brought_pretrained_model_with_default_settings_builds_ok_against_the_original(tmp_path):
    """The fer mini-Xception on real faces without labels: defaults must not damage it. (prune.epochs 2 instead
    of 6 keeps the test's three trial prunings short; the choice it makes is the same: none keeps the budget.)"""
    from skimage.data import lfw_subset

    np.savez(tmp_path / "faces.npz", x=lfw_subset().astype(np.float32)[..., None])
    cfg = tmp_path / "fer.toml"
    cfg.write_text("[data]\nresize = [64, 64]\nscale = 2.0\nmean = [1.0]\n[prune]\nepochs = 2\n")
    out = tmp_path / "out"
    model = ASSETS / "fer_emotion_model.hdf5"
    proc = run_cli(
        "build",
        "--config",
        cfg,
        "--model",
        model,
        "--data",
        tmp_path / "faces.npz",
        "--target",
        "tflite-fp32,tflite-int8",
        "--out",
        out,
        timeout=1800,
    )
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    m = json.loads((out / "fer_emotion_model" / "manifest.json").read_text())
    x_file, _ = held_out(out, "fer_emotion_model")
    original = original_outputs(model, np.load(x_file))
    assert m["stages"]["prune"]["auto"]["chosen"] == 0.0  # no sparsity tried kept the budget: left whole
    arts = {a["target"]: a for a in m["artifacts"]}
    assert arts["tflite-fp32"]["status"] == "ok"
    for name, a in arts.items():
        agree = float(
            np.mean(
                artifact_outputs(out, "fer_emotion_model", name, x_file, tmp_path).argmax(-1) == original.argmax(-1)
            )
        )
        assert a["top1_agreement"] == pytest.approx(agree, abs=1e-9)
        # ok means within the budget against the original; below it, the build says so and fails
        assert (a["status"] == "ok") == (agree >= 0.97), (name, agree, a["status"])
    assert (proc.returncode == 0) == all(a["status"] == "ok" for a in arts.values())
