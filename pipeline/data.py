"""Datasets as numpy arrays: float32 samples, int labels (or none), a fixed seeded split.

Sources: the built-in digits, an .npz, IDX files (as MNIST and Fashion-MNIST ship them, gzipped
or not), or an image folder (one subfolder per class, or images directly for unlabelled data).
Preprocessing (resize, channels, scale, mean/std) is applied here once; training, calibration,
verification and the runners all see the same arrays, and it is recorded in the manifest.
"""

from __future__ import annotations

import gzip
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MIN_CALIBRATION = 100


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    x_cal: np.ndarray
    labels: tuple[str, ...]
    preprocessing: dict
    x_val: np.ndarray | None = None
    """Carved from the training samples (data.validation_fraction), never trained on: choosing settings."""
    y_val: np.ndarray | None = None
    boxes_test: dict | None = None
    """A detector's labelled boxes on the test samples: `boxes` xyxy pixels, `classes`, `image` (index in x_test)."""

    ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_cal", "x_val", "y_val", "boxes_test")

    @property
    def labelled(self) -> bool:
        return self.y_train is not None


@dataclass(frozen=True)
class Raw:
    """What a loader found, before preprocessing. `test` is None when the source has no test split."""

    x: np.ndarray
    y: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    labels: tuple[str, ...]
    source: str
    boxes: dict | None = None
    """Labelled boxes of a detection set (.npz `boxes`, `classes`, `image`: the index in `x` of each box's picture)."""


BOX_KEYS = ("boxes", "classes", "image")


def _digits() -> Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    # Values are 0..16: scale 1/16 (set in load) puts them in [0, 1].
    return Raw(
        d.images.astype(np.float32)[..., None],
        d.target.astype(np.int64),
        None,
        None,
        tuple(str(i) for i in range(10)),
        "scikit-learn load_digits",
    )


def _npz(path: Path) -> Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz without pickled objects ({e})") from None
    if {"x_train", "x_test"} <= arrays.keys():
        return Raw(arrays["x_train"], arrays.get("y_train"), arrays["x_test"], arrays.get("y_test"), (), str(path))
    if "x" in arrays:
        boxes = _boxes(arrays, len(arrays["x"]), path) if "boxes" in arrays else None
        return Raw(arrays["x"], arrays.get("y"), None, None, (), str(path), boxes)
    raise DataError(
        f"{path}: an .npz needs arrays x_train/x_test (with y_train/y_test) or x (with y); found {sorted(arrays)}"
    )


def _boxes(arrays: dict, n: int, path: Path) -> dict:
    """A detection set's labels (`boxes` [M, 4] xyxy pixels, `classes` [M], `image` [M] index into `x`), checked."""
    missing = [k for k in BOX_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: labelled boxes need arrays {', '.join(BOX_KEYS)}; missing {', '.join(missing)}")
    b, c, i = (np.asarray(arrays[k]) for k in BOX_KEYS)
    if b.ndim != 2 or b.shape[1] != 4 or len(c) != len(b) or len(i) != len(b):
        raise DataError(f"{path}: boxes must be [M, 4] (x0, y0, x1, y1) with one class and one image index per box")
    if len(i) and (i.min() < 0 or i.max() >= n):
        raise DataError(f"{path}: image indices of the boxes must be in [0, {n}) (the samples of x)")
    return {"boxes": b.astype(np.float32), "classes": c.astype(np.int64), "image": i.astype(np.int64)}


def _test_boxes(boxes: dict, test_index: np.ndarray) -> dict:
    """The labelled boxes of the test samples, their image index renumbered to the position in x_test."""
    where = np.full(int(max(test_index.max(initial=-1), boxes["image"].max(initial=-1))) + 1, -1)
    where[test_index] = np.arange(len(test_index))
    keep = where[boxes["image"]] >= 0
    return {"boxes": boxes["boxes"][keep], "classes": boxes["classes"][keep], "image": where[boxes["image"][keep]]}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (the MNIST format): magic 0 0 dtype ndim, then big-endian dims, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(dtypes[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != need:
        raise DataError(f"{path}: IDX file is truncated or padded ({len(body)} data bytes, header says {need})")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _idx(path: Path) -> Raw:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    found = {}
    for f in files:
        name = f.name.lower()
        split = "test" if name.startswith(("t10k", "test")) else "train" if name.startswith("train") else None
        kind = (
            "images" if "images" in name or "idx3" in name else "labels" if "labels" in name or "idx1" in name else None
        )
        if split and kind and "idx" in name:
            found[(split, kind)] = f
    if ("train", "images") not in found:
        raise DataError(f"{path}: no IDX training images found (expected train-images-idx3-ubyte[.gz])")
    x = read_idx(found[("train", "images")])[..., None]
    y = read_idx(found[("train", "labels")]).astype(np.int64) if ("train", "labels") in found else None
    xt = read_idx(found[("test", "images")])[..., None] if ("test", "images") in found else None
    yt = read_idx(found[("test", "labels")]).astype(np.int64) if ("test", "labels") in found else None
    return Raw(x, y, xt, yt if xt is not None else None, (), str(path))


def _image_folder(path: Path, cfg: DataConfig) -> Raw:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups = (
        [
            (i, sorted(p for p in (path / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
            for i, c in enumerate(classes)
        ]
        if classes
        else [(None, sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))]
    )
    mode = {"gray": "L", "rgb": "RGB", "bgr": "RGB", "": "RGB"}[cfg.channels]
    xs, ys = [], []
    for label, files in groups:
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    if cfg.resize:
                        im = im.resize((cfg.resize[1], cfg.resize[0]), Image.BILINEAR)
                    xs.append(np.asarray(im))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{f}: not a readable image ({e})") from None
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: no images found (expected class subfolders of {', '.join(sorted(IMAGE_SUFFIXES))})")
    if len({x.shape for x in xs}) > 1:
        raise DataError(f"{path}: images have different sizes: set data.resize = [height, width]")
    x = np.stack(xs)
    x = x[..., None] if x.ndim == 3 else x
    if cfg.channels == "bgr":
        x = x[..., ::-1]
    y = np.asarray(ys, dtype=np.int64) if classes else None
    return Raw(x, y, None, None, tuple(classes), str(path))


def _find(cfg: DataConfig) -> Raw:
    if not cfg.path:
        if cfg.source != "digits":
            raise DataError(f"unknown data source '{cfg.source}': use 'digits' or set data.path")
        return _digits()
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".npz":
        return _npz(path)
    if "idx" in path.name.lower() or (path.is_dir() and any("idx" in p.name.lower() for p in path.iterdir())):
        return _idx(path)
    if path.is_dir():
        return _image_folder(path, cfg)
    raise DataError(f"{path}: unknown data format: use .npz, IDX files, or a folder of images")


def split(x, y, test_fraction: float, seed: int):
    """Seeded split (stratified when labelled): the same config always holds out the same samples."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if y is not None else [np.arange(len(x))]
    test = []
    for idx in groups:
        rng.shuffle(idx)
        test.extend(idx[: max(1, round(len(idx) * test_fraction))])
    mask = np.zeros(len(x), dtype=bool)
    mask[test] = True
    pick = (lambda a: (a[~mask], a[mask])) if y is not None else None
    yt = pick(y) if pick else (None, None)
    return x[~mask], yt[0], x[mask], yt[1]


def _resize(x: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of NHWC arrays (images from folders are resized as they are read)."""
    from PIL import Image

    out = []
    for img in x:
        chans = [
            np.asarray(
                Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR)
            )
            for c in range(img.shape[-1])
        ]
        out.append(np.stack(chans, axis=-1))
    return np.stack(out)


def _check(name: str, x: np.ndarray, y: np.ndarray | None, where: str) -> None:
    if x.size == 0 or len(x) == 0:
        raise DataError(f"{where}: {name} is empty")
    if x.dtype.kind not in "uif":
        raise DataError(f"{where}: {name} has dtype {x.dtype}; samples must be numeric")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{where}: {name} contains NaN or inf values: clean the data first")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{where}: {len(x)} samples but labels of shape {y.shape}; labels must be one int per sample"
            )
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: labels have dtype {y.dtype}; they must be integer class indices")
        if y.min() < 0:
            raise DataError(f"{where}: labels must be class indices >= 0")


def preprocess(x: np.ndarray, cfg: DataConfig, default_scale: float) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if cfg.resize and x.ndim == 4 and tuple(x.shape[1:3]) != tuple(cfg.resize):
        x = _resize(x, cfg.resize)
    x = x.astype(np.float32) * np.float32(cfg.scale or default_scale)
    if cfg.mean:
        x = x - np.asarray(cfg.mean, dtype=np.float32)
    if cfg.std:
        x = x / np.asarray(cfg.std, dtype=np.float32)
    return x


def load_several(cfg: DataConfig, seed: int, inputs: list[dict]) -> Dataset:
    """Data for a model with several inputs: an .npz with one array per input name (entry i of each is
    call i; the same first dimension), and optionally `y`. Taken as it is: no preprocessing, no layout change.
    x_train, x_test and x_cal are dicts of arrays, in the model's input order."""
    names = [p["name"] for p in inputs]
    path = Path(cfg.path)
    if not cfg.path or path.suffix != ".npz" or not path.is_file():
        raise DataError(
            f"a model with inputs {names} takes an .npz with one array per input name; got {cfg.path or 'no --data'}"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz without pickled objects ({e})") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(
            f"{path}: the model's inputs are {names} but the .npz has no array {missing} (found {sorted(arrays)})"
        )
    x, y = {n: arrays[n] for n in names}, arrays.get("y")
    if len({len(a) for a in x.values()}) > 1:
        raise DataError(
            f"{path}: the input arrays hold different numbers of samples "
            f"{ {n: len(a) for n, a in x.items()} }: entry i of each is one call"
        )
    for n, a in x.items():
        _check(n, a, y, str(path))
    train, _, test, _ = split(np.arange(len(x[names[0]])), y, cfg.test_fraction, seed)
    if len(train) == 0 or len(test) == 0:
        raise DataError("data split left no training or no test samples: change data.test_fraction")
    n_cal = min(cfg.calibration_samples, len(train))
    if n_cal < MIN_CALIBRATION:
        print(
            f"warning: only {n_cal} calibration samples (fewer than {MIN_CALIBRATION}): int8 ranges may be poor",
            file=sys.stderr,
        )
    cal = train[np.sort(np.random.default_rng(seed + 1).choice(len(train), n_cal, replace=False))]
    pick = lambda idx: {n: a[idx] for n, a in x.items()}
    yt = (y[train], y[test]) if y is not None else (None, None)
    labels = tuple(str(i) for i in range(int(y.max()) + 1)) if y is not None else ()
    prep = {
        "source": str(path),
        "layout": "as given",
        "data_layout": "as given",
        "inputs": names,
        "input_shape": {n: list(a.shape[1:]) for n, a in x.items()},
        "preprocessing": "none (several inputs)",
        "labelled": y is not None,
        "calibration_split": "train",
        "calibration_samples": n_cal,
    }
    return Dataset(pick(train), yt[0], pick(test), yt[1], pick(cal), labels, prep)


def load(cfg: DataConfig, seed: int, model_input: dict | None = None) -> Dataset:
    """`model_input`: the user's model's input (pipeline.interface), whose layout the data may come in."""
    raw = _find(cfg)
    where = raw.source
    given = "as stored"
    if model_input:
        from pipeline.interface import samples_to_internal

        x, given = samples_to_internal(raw.x, model_input)
        xt = samples_to_internal(raw.x_test, model_input)[0] if raw.x_test is not None else None
        raw = Raw(x, raw.y, xt, raw.y_test, raw.labels, raw.source, raw.boxes)
    _check("x", raw.x, raw.y, where)
    if raw.x_test is not None:
        _check("x_test", raw.x_test, raw.y_test, where)
        if raw.x_test.shape[1:] != raw.x.shape[1:]:
            raise DataError(f"{where}: test samples are {raw.x_test.shape[1:]} but training samples {raw.x.shape[1:]}")
        if (raw.y is None) != (raw.y_test is None):
            raise DataError(f"{where}: labels for only one of train/test: give both or neither")
    n_channels = raw.x.shape[-1] if raw.x.ndim == 4 else 1
    for name, vals in (("mean", cfg.mean), ("std", cfg.std)):
        if vals and len(vals) not in (1, n_channels):
            raise DataError(f"data.{name} has {len(vals)} values but the samples have {n_channels} channels")
    default_scale = 1 / 16 if raw.source.startswith("scikit-learn") else 1 / 255 if raw.x.dtype == np.uint8 else 1.0
    boxes_test = None
    if raw.x_test is None:
        x_train, y_train, x_test, y_test = split(raw.x, raw.y, cfg.test_fraction, seed)
        if raw.boxes is not None:  # the same seeded split, of the sample indices
            boxes_test = _test_boxes(raw.boxes, split(np.arange(len(raw.x)), raw.y, cfg.test_fraction, seed)[2])
    else:
        x_train, y_train, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError("data split left no training or no test samples: change data.test_fraction")
    x_val = y_val = None
    if cfg.validation_fraction > 0 and len(x_train) >= 10:
        x_train, y_train, x_val, y_val = split(x_train, y_train, cfg.validation_fraction, seed + 2)
        x_val = preprocess(x_val, cfg, default_scale)
    x_train, x_test = preprocess(x_train, cfg, default_scale), preprocess(x_test, cfg, default_scale)
    rng = np.random.default_rng(seed + 1)
    n_cal = min(cfg.calibration_samples, len(x_train))
    if n_cal < MIN_CALIBRATION:
        print(
            f"warning: only {n_cal} calibration samples (fewer than {MIN_CALIBRATION}): int8 ranges may be poor",
            file=sys.stderr,
        )
    x_cal = x_train[np.sort(rng.choice(len(x_train), n_cal, replace=False))]
    n_classes = int(max(y_train.max(), y_test.max())) + 1 if y_train is not None else 0
    labels = raw.labels or tuple(str(i) for i in range(n_classes))
    # `layout`: of the arrays inside the pipeline; `data_layout`: of the samples as the user gave them.
    prep = {
        "source": raw.source,
        "layout": "NHWC" if x_train.ndim == 4 else "N...",
        "data_layout": given,
        "input_shape": list(x_train.shape[1:]),
        "resize": list(cfg.resize),
        "channels": cfg.channels or "as stored",
        "scale": cfg.scale or default_scale,
        "mean": list(cfg.mean) or [0.0],
        "std": list(cfg.std) or [1.0],
        "labelled": y_train is not None,
        "calibration_split": "train",
        "calibration_samples": n_cal,
        "samples": {"train": len(x_train), "validation": 0 if x_val is None else len(x_val), "test": len(x_test)},
    }
    if boxes_test is not None:
        prep["labelled_boxes"] = len(boxes_test["boxes"])
    return Dataset(x_train, y_train, x_test, y_test, x_cal, labels, prep, x_val, y_val, boxes_test)
