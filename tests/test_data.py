"""Data loaders: every source the users bring, and every way it can be wrong."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.config import DataConfig
from pipeline.errors import DataError

FASHION = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_an_npz_with_x_and_y_is_split_stratified_and_scaled(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (100, 6, 6), dtype=np.uint8), np.repeat(np.arange(4), 25)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = data.load(DataConfig(path=str(tmp_path / "d.npz"), calibration_samples=10), seed=0)
    # 24 held out for test; of the other 76, 12 (3 per class) held apart for validation, never trained on
    assert ds.x_train.shape == (64, 6, 6, 1) and ds.x_test.shape == (24, 6, 6, 1) and ds.x_val.shape == (12, 6, 6, 1)
    assert list(np.bincount(ds.y_test)) == [6, 6, 6, 6] and list(np.bincount(ds.y_val)) == [3, 3, 3, 3]
    seen = {a.tobytes() for a in ds.x_train}
    assert not any(a.tobytes() in seen for a in ds.x_val)
    assert ds.x_train.max() <= 1.0 and ds.preprocessing["scale"] == 1 / 255
    assert ds.labels == ("0", "1", "2", "3") and ds.labelled


def test_an_npz_holding_only_x_is_unlabelled(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((40, 4, 4, 3), dtype=np.float32))
    ds = data.load(DataConfig(path=str(tmp_path / "d.npz"), calibration_samples=5), seed=0)
    assert not ds.labelled and ds.y_train is None and ds.y_test is None
    assert ds.preprocessing["labelled"] is False


def test_mean_and_std_are_applied_per_channel(tmp_path):
    x = np.full((20, 2, 2, 3), 255, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x)
    cfg = DataConfig(path=str(tmp_path / "d.npz"), mean=(0.5, 0.5, 0.0), std=(0.5, 0.25, 1.0), calibration_samples=5)
    ds = data.load(cfg, seed=0)
    assert np.allclose(ds.x_train[0, 0, 0], [1.0, 2.0, 1.0])


def test_pickled_npz_files_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="without pickled objects"):
        data.load(DataConfig(path=str(tmp_path / "d.npz")), seed=0)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.array([[np.nan, 1.0]] * 10, dtype=np.float32)}, "NaN or inf"),
        ({"x": np.array([[np.inf, 1.0]] * 10, dtype=np.float32)}, "NaN or inf"),
        ({"x": np.zeros((0, 4), dtype=np.float32)}, "is empty"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(9, dtype=np.int64)}, "10 samples but labels of shape (9,)"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(10, dtype=np.float32)}, "must be integer class indices"),
        ({"x": np.array(["a"] * 10)}, "samples must be numeric"),
        ({"images": np.zeros((10, 4))}, "needs arrays x_train/x_test"),
    ],
)
def test_bad_arrays_are_named_with_what_is_wrong(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError) as e:
        data.load(DataConfig(path=str(tmp_path / "d.npz")), seed=0)
    assert message in str(e.value)


def test_a_truncated_npz_is_one_clear_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((100, 8), dtype=np.float32))
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="not a readable .npz"):
        data.load(DataConfig(path=str(tmp_path / "d.npz")), seed=0)


def test_idx_files_are_read_gzipped_or_not(tmp_path):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "a-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "b-idx3-ubyte", imgs)
    assert np.array_equal(data.read_idx(tmp_path / "a-idx3-ubyte.gz"), imgs)
    assert np.array_equal(data.read_idx(tmp_path / "b-idx3-ubyte"), imgs)


def test_a_truncated_idx_file_is_refused(tmp_path):
    write_idx(tmp_path / "t-idx3-ubyte", np.zeros((10, 4, 4), dtype=np.uint8))
    raw = (tmp_path / "t-idx3-ubyte").read_bytes()
    (tmp_path / "t-idx3-ubyte").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(tmp_path / "t-idx3-ubyte")
    (tmp_path / "u-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03")
    with pytest.raises(DataError, match="bad magic"):
        data.read_idx(tmp_path / "u-idx3-ubyte")


@pytest.mark.skipif(
    not __import__("os").path.isdir(FASHION), reason="Debian package dataset-fashion-mnist not installed"
)
def test_the_real_fashion_mnist_folder_loads_with_its_own_test_split():
    ds = data.load(DataConfig(path=FASHION, calibration_samples=300), seed=0)
    # its own 10,000 test images; 15 % of the 60,000 training images held apart for validation
    assert ds.x_train.shape == (51000, 28, 28, 1) and ds.x_val.shape == (9000, 28, 28, 1)
    assert ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.labels == tuple(str(i) for i in range(10)) and set(np.unique(ds.y_test)) == set(range(10))
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_an_image_folder_gives_one_class_per_subfolder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = data.load(DataConfig(path=str(tmp_path), resize=(8, 8), channels="gray", calibration_samples=4), seed=0)
    assert ds.labels == ("cat", "dog") and ds.x_train.shape[1:] == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_test) == 12


def test_an_image_that_is_not_an_image_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        data.load(DataConfig(path=str(tmp_path)), seed=0)


def test_images_of_different_sizes_ask_for_resize(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("L", (5, 5)).save(tmp_path / "a" / "1.png")
    Image.new("L", (6, 5)).save(tmp_path / "a" / "2.png")
    with pytest.raises(DataError, match="set data.resize"):
        data.load(DataConfig(path=str(tmp_path)), seed=0)


def test_few_calibration_samples_warn(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 4), dtype=np.float32))
    data.load(DataConfig(path=str(tmp_path / "d.npz"), calibration_samples=20), seed=0)
    assert "only 20 calibration samples" in capsys.readouterr().err
