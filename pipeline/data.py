"""Datasets as numpy arrays: float32 samples in NHWC, int labels, a fixed seeded split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import DataError


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_cal: np.ndarray
    labels: tuple[str, ...]
    preprocessing: dict

    ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_cal")


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are 0..16; the model sees them scaled to [0, 1].
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    return x, d.target.astype(np.int64), tuple(str(i) for i in range(10)), {
        "source": "scikit-learn load_digits", "layout": "NHWC", "scale": 1 / 16, "mean": 0.0, "std": 1.0}


def split(x, y, test_fraction: float, seed: int):
    """Stratified, seeded split: the same config always holds out the same samples."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.extend(idx[: max(1, round(len(idx) * test_fraction))])
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    return x[~mask], y[~mask], x[mask], y[mask]


def load(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.source != "digits":
        raise DataError(f"unknown data source '{cfg.source}': use 'digits'")
    x, y, labels, prep = _digits()
    x_train, y_train, x_test, y_test = split(x, y, cfg.test_fraction, seed)
    if len(x_test) == 0 or len(x_train) == 0:
        raise DataError("data split left no training or no test samples: change data.test_fraction")
    rng = np.random.default_rng(seed + 1)
    n_cal = min(cfg.calibration_samples, len(x_train))
    x_cal = x_train[np.sort(rng.choice(len(x_train), n_cal, replace=False))]
    prep = dict(prep, calibration_split="train", calibration_samples=n_cal)
    return Dataset(x_train, y_train, x_test, y_test, x_cal, labels, prep)
