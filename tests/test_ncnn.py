"""NCNN targets: pnnx converts, NCNN's runtime verifies, the files say which blob is which input and output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_PTQ_CHOICE, ROOT, build_copy, run_cli
from test_targets import W, offline, tiny_onnx

from pipeline import runner
from targets import RUNNERS, TARGETS
from targets import ncnn as ncnn_family

ASSETS = ROOT / ".venv" / "test-assets"
RUN_NCNN = RUNNERS / "run_ncnn.py"

MAKE_NCNN = """
import sys, numpy as np, onnx
from targets import TARGETS, ncnn
x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
ncnn.write(TARGETS[sys.argv[3]], onnx.load(sys.argv[1]), [x], sys.argv[2], {"model": "tiny"})
"""


def arts(out: Path, name: str) -> dict:
    return {a["target"]: a for a in json.loads((out / name / "manifest.json").read_text())["artifacts"]}


def test_targets_lists_ncnn_and_an_ncnn_int8_request_says_why_it_is_not_offered():
    listed = run_cli("targets")
    assert listed.returncode == 0 and "ncnn-fp32" in listed.stdout and "ncnn-fp16" in listed.stdout
    assert "not offered: ncnn-int8: NCNN's int8 files come from its C++ tools ncnn2table and ncnn2int8" in listed.stdout
    proc = run_cli("build", "--target", "ncnn-int8", "--out", "/nonexistent/never-written")
    assert proc.returncode == 2 and proc.stderr.startswith("error: target 'ncnn-int8' is not offered"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["ncnn-fp32", "ncnn-fp16"])
def test_pnnx_and_the_ncnn_runner_work_offline_and_compute_the_float_graph(name, tmp_path):
    """pnnx is run as the wheel's program (its Python wrapper would import torch): with the network cut it
    converts, and NCNN in fp32 arithmetic computes x @ W as onnxruntime does (fp16: to fp16 weight rounding)."""
    src, param = tiny_onnx(tmp_path / "m.onnx"), tmp_path / "model.ncnn.param"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        offline([sys.executable, "-c", MAKE_NCNN, src, param, name]), env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cmd = [sys.executable, RUN_NCNN, param, "--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "y.npz"]
    run = subprocess.run(offline(cmd), env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["inputs"][0]["name"] == "x" and result["inputs"][0]["blob"] == "in0"
    assert result["outputs"][0]["shape"] == [1, 3] and result["precision"] == "f32"
    w = W.astype(np.float16).astype(np.float32) if name == "ncnn-fp16" else W
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output_0"], x @ w, rtol=1e-5, atol=1e-5)
    info = ncnn_family.inspect(param)
    assert info["quantization"] == TARGETS[name].quantization
    assert info["weight_dtypes"] == {"float16" if name == "ncnn-fp16" else "float32": 1}
    assert info["metadata"] == {"model": "tiny"}


def test_a_file_that_is_not_ncnn_is_a_value_error_not_a_crash(tmp_path):
    bad = tmp_path / "model.ncnn.param"
    bad.write_text("7767518\n1 1\nInput in0 0 1 in0\n")
    with pytest.raises(ValueError, match="not an NCNN .param"):
        ncnn_family.inspect(bad)


@pytest.mark.slow
def test_the_demos_ncnn_files_agree_with_the_original_as_onnx_fp32_does_and_name_their_blobs(small_build, tmp_path):
    out, _ = small_build
    a = arts(out, "tiny-digits")
    onnx_fp32 = a["onnx-fp32"]
    for name in ("ncnn-fp32", "ncnn-fp16"):
        row = a[name]
        assert row["status"] == "ok" and row["quantization"] == TARGETS[name].quantization, row
        assert row["runtime"].startswith("ncnn ") and row["run_config"]["use_fp16_arithmetic"] == "0"
        # Channels-first, as NCNN apps feed an image; the blob each name maps to is recorded.
        assert row["input_layout"] == "NCHW" and row["input_perms"] == [[0, 3, 1, 2]]
        assert row["inputs"][0] | {"blob": "in0", "shape": [1, 1, 8, 8], "mat": "c=1, h=8, w=8"} == row["inputs"][0]
        assert row["outputs"][0]["blob"] == "out0" and row["outputs"][0]["shape"] == [1, 10]
        # the same answers as the ONNX file of the same model: float rounding (and fp16 weights) apart
        assert abs(row["top1_agreement"] - onnx_fp32["top1_agreement"]) <= 2 / 450
        assert abs(row["max_abs_diff"] - onnx_fp32["max_abs_diff"]) < (1e-4 if name == "ncnn-fp32" else 1e-2)
        assert "precision" in row["runtime_default"]  # NCNN's own default (fp16 where the CPU has it) recorded
    x = np.load(next((out / ".cache" / "data").glob("*/x_test.npy")))[:16]
    np.save(tmp_path / "x.npy", x.transpose(0, 3, 1, 2))
    path = out / a["ncnn-fp32"]["path"]
    run = runner.run(RUN_NCNN, path, ["--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "y.npz", "--bench"])
    assert run["ok"] and run["latency"]["p50_ms"] > 0, run
    np.save(tmp_path / "x.npy", x)
    args = ["--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "ref.npz"]
    assert runner.run(RUNNERS / "run_onnxruntime.py", out / onnx_fp32["path"], args)["ok"]
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npz")["output_0"], np.load(tmp_path / "ref.npz")["output_0"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / "torch_cnn.onnx").exists(), reason="run scripts/fetch_test_assets.sh first")
def test_a_brought_onnx_model_is_converted_from_its_own_graph_keeping_its_names(tmp_path):
    with np.load(ASSETS / "torch_cnn_io.npz") as z:
        x, logits = z["x"], z["logits"]
    np.savez(tmp_path / "d.npz", x=x, y=logits.argmax(1))
    labels = ", ".join(f'"{i}"' for i in range(10))
    (tmp_path / "c.toml").write_text(f"[model]\nname = 'torch-cnn'\nlabels = [{labels}]\n{NO_PTQ_CHOICE}")
    out = tmp_path / "o"
    args = ["--config", tmp_path / "c.toml", "--model", ASSETS / "torch_cnn.onnx", "--data", tmp_path / "d.npz"]
    proc = run_cli("build", *args, "--target", "ncnn-fp32,ncnn-fp16", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = arts(out, "torch-cnn")
    for row in a.values():
        assert row["status"] == "ok" and row["route"] == "original" and row["accuracy"] == 1.0, row
        assert [(p["name"], p["blob"], p["shape"]) for p in row["inputs"]] == [("pixels", "in0", [1, 3, 32, 32])]
        assert [(p["name"], p["blob"], p["shape"]) for p in row["outputs"]] == [("logits", "out0", [1, 10])]
    assert a["ncnn-fp32"]["max_abs_diff"] < 1e-5 and a["ncnn-fp16"]["max_abs_diff"] < 1e-3  # against PyTorch's


TWO_HEADS = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import tf_keras as keras
from sklearn.datasets import load_digits

keras.utils.set_random_seed(0)
d = load_digits()
x = (d.images / 16.0).astype("float32")[..., None]
L = keras.layers
i = keras.Input((8, 8, 1))
h = L.Conv2D(8, 3, padding="same", activation="relu")(i)
seg = L.Conv2D(2, 1, name="mask")(h)  # a channels-last map, which NCNN holds channels-first
cls = L.Dense(10, activation="softmax", name="digit")(L.Flatten()(L.MaxPooling2D()(h)))
m = keras.Model(i, [cls, seg])
m.compile(keras.optimizers.Adam(3e-3), ["sparse_categorical_crossentropy", "mse"])
m.fit(x, [d.target, x.repeat(2, -1)], epochs=3, batch_size=64, verbose=0)
m.save(sys.argv[1])
np.savez(sys.argv[2], x=x, y=d.target)
"""


@pytest.mark.slow
def test_a_brought_keras_model_with_a_map_head_builds_ncnn_each_head_against_the_original(tmp_path):
    script = tmp_path / "make.py"
    script.write_text(TWO_HEADS)
    subprocess.run([sys.executable, script, tmp_path / "m.h5", tmp_path / "d.npz"], check=True, capture_output=True)
    (tmp_path / "c.toml").write_text("[model]\nname = 'two'\n")
    out = tmp_path / "o"
    args = ["--config", tmp_path / "c.toml", "--model", tmp_path / "m.h5", "--data", tmp_path / "d.npz"]
    proc = run_cli("build", *args, "--prune", "none", "--target", "ncnn-fp32,ncnn-fp16", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in arts(out, "two").values():
        assert row["status"] == "ok", row
        assert [(o["name"], o["shape"]) for o in row["outputs"]] == [("digit", [1, 10]), ("mask", [1, 8, 8, 2])]
        # pnnx leaves out the graph's closing transpose: the blob is c=2, h=8, w=8, and the json says so
        assert row["outputs"][1]["mat"] == "c=2, h=8, w=8" and row["outputs"][1]["perm"] == [0, 2, 3, 1]
        heads = {h["name"]: h for h in row["heads"]}
        assert heads["digit"]["top1_agreement"] >= 0.99 and heads["mask"]["cosine"] >= 0.999
    assert arts(out, "two")["ncnn-fp32"]["max_abs_diff"] < 1e-4


@pytest.mark.slow
@pytest.mark.emu
def test_bench_on_an_emulated_pi_4_has_ncnn_rows_that_agree_with_x86(small_build, small_config, tmp_path):
    from pipeline.devices import emulator as emu

    try:
        emu.setup("emu:rpi4", log=print)
    except emu.EmuError as e:
        pytest.skip(f"aarch64 emulation cannot be set up here: {e}")
    out = build_copy(small_build, tmp_path / "out")
    fast = ["--samples", "10", "--runs", "10", "--min-seconds", "0", "--warmup", "1"]
    rows_file = tmp_path / "rows.json"
    proc = run_cli(
        "bench",
        *("--config", small_config, "--out", out, "--target", "ncnn-fp16", "--device", "emu:rpi4"),
        *fast,
        "--json",
        rows_file,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert [r["target"] for r in rows] == ["ncnn-fp16"]  # one row: a second costs 30 s of qemu
    for r in rows:
        assert r["status"] == "ok" and r["loads"] == "yes" and r["arch"] == "aarch64" and r["runtime"] == "ncnn"
        assert r["top1_agreement_vs_x86"] == 1.0 and r["max_abs_diff_vs_x86"] < 1e-4
        assert r["instructions_per_inference"] > 10_000


def test_the_native_runner_says_why_it_cannot_run_ncnn():
    from pipeline import native

    with pytest.raises(native.NativeError, match="exports no NCNN C API"):
        native.runtime_for("run_ncnn.py")
