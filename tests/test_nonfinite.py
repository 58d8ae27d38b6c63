"""No NaN or Inf passes: a model whose outputs are not finite fails at its stage with one line, and QAT
that diverges falls back to post-training int8 of the float model, saying so."""

import json
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np
import pytest
import tf_keras as keras
from conftest import run_cli

from pipeline.config import BuildConfig
from pipeline.devices.agreement import agreement
from pipeline.gate import budget_reasons, legacy_verdict, nonfinite

L = keras.layers


def small_cnn(path, nan: bool = False):
    """Two layers that multiply: a huge learning rate overflows them to Inf within one step."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.Flatten(),
            L.Dense(10, activation="softmax", name="scores"),
        ]
    )
    if nan:
        kernel, bias = m.get_layer("conv").get_weights()
        kernel[0, 0, 0, 0] = np.nan
        m.get_layer("conv").set_weights([kernel, bias])
    m.save(path)
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("nonfinite")
    d = load_digits()
    np.savez(folder / "digits.npz", x=(d.images[:300, ..., None] / 16).astype(np.float32), y=d.target[:300])
    return folder


def config(folder, **sections) -> str:
    path = folder / f"c{len(list(folder.glob('c*.toml')))}.toml"
    # An untrained model's accuracy (about 0.1) moves by whole samples: the gate is not what is tested here.
    body = '[model]\nname = "nan"\n[ptq]\nchoose = false\n[build]\nmax_accuracy_drop = 100.0\n'
    body += "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in sections.items())
    path.write_text(body)
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error", "internal error", "Traceback"))]


def test_nan_outputs_and_nan_figures_never_keep_the_budget():
    nan = np.array([[0.1, 0.9], [np.nan, 0.5], [0.2, 0.8]], dtype=np.float32)
    assert nonfinite([nan], "m", ["scores"]) == "m: NaN or Inf in output 0 'scores' on 1 of 3 samples"
    assert nonfinite([np.ones((3, 2), np.float32)], "m") is None
    build = BuildConfig()
    assert budget_reasons({"top1_agreement": 1.0, "cosine": float("nan")}, build) != []
    assert budget_reasons({"top1_agreement": 1.0, "cosine": 1.0}, build) == []
    # tflite-runtime's verdict and a board's agreement with x86: NaN is named, never "ok" by argmax.
    ref = np.array([[0.1, 0.9], [0.5, 0.4], [0.2, 0.8]], dtype=np.float32)
    assert legacy_verdict(None, [nan], [ref], "x86") == "loads, but outputs: NaN or Inf in output 0 on 1 of 3 samples"
    assert agreement([nan], [ref]) == {
        "agreement_error": "the board's outputs: NaN or Inf in output 0 on 1 of 3 samples"
    }
    assert agreement([ref], [ref])["top1_agreement_vs_x86"] == 1.0


def test_an_original_model_with_nan_outputs_stops_at_the_train_stage_in_one_line(digits):
    model = small_cnn(digits / "nan.h5", nan=True)
    proc = run_cli("build", "--model", model, "--data", digits / "digits.npz", "--out", digits / "o1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: the original model on the held-out split: NaN or Inf in output 0 on ")
    assert "check the model" in line


@pytest.mark.slow
def test_a_stage_that_diverges_fails_there_or_falls_back_saying_so(digits):
    """Pruning at an absurd learning rate stops the build at prune; QAT at one falls back to post-training int8."""
    model = small_cnn(digits / "ok.h5")
    data, out = digits / "digits.npz", digits / "o2"
    cfg = config(digits, prune={"sparsity": 0.5, "epochs": 1, "learning_rate": 1e30})
    proc = run_cli("build", "--model", model, "--data", data, "--config", cfg, "--target", "tflite-fp32", "--out", out)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: prune: the pruned model on the held-out split: NaN or Inf in output 0 on ")
    assert line.endswith("lower prune.learning_rate")

    cfg = config(digits, qat={"epochs": 1, "learning_rate": 1e30})
    proc = run_cli(
        "build",
        "--model",
        model,
        "--data",
        data,
        "--config",
        cfg,
        "--prune",
        "none",
        "--target",
        "tflite-int8",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning: qat: diverged")]
    assert len(warned) == 1 and "int8 targets use post-training quantization of the float model" in warned[0]
    (row,) = json.loads((out / "nan" / "manifest.json").read_text())["artifacts"]
    assert row["status"] == "ok" and row["method"] == "ptq" and row["made_from"] == "prune"
    assert any(f.startswith("qat: diverged") for f in row["fallbacks"])
