"""The user's model as it is: its layout (NCHW data for an NCHW ONNX model), its interface kept on the
ONNX and OpenVINO artifacts, several inputs. Small ONNX models are made here with onnx.helper."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline import data, interface
from pipeline.config import DataConfig


def conv_model(path, dynamic=True, seed=0):
    """image [N,3,H,W] -> Conv 3x3 (8) -> Relu -> Conv 1x1 (2) -> mask [N,2,H,W]: a tiny NCHW segmenter."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (2, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["mask"])]
    h, w = ("H", "W") if dynamic else (16, 16)
    g = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, h, w])],
                          [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 2, h, w])], [w1, b1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return path


def test_an_onnx_models_interface_is_read_with_its_layout_and_free_dimensions(tmp_path):
    io = interface.onnx_interface(conv_model(tmp_path / "m.onnx"))
    assert io["inputs"] == [{"name": "image", "shape": [None, 3, None, None], "dtype": "float32", "layout": "NCHW"}]
    assert io["outputs"] == [{"name": "mask", "shape": [None, 2, None, None], "dtype": "float32"}]


def test_nchw_data_for_an_nchw_model_is_taken_and_converted_to_channels_last(tmp_path):
    x = np.random.default_rng(0).random((40, 3, 16, 12), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    port = interface.onnx_interface(conv_model(tmp_path / "m.onnx"))["inputs"][0]
    ds = data.load(DataConfig(path=str(tmp_path / "d.npz"), calibration_samples=5, mean=[0.5, 0.4, 0.3]), 0, port)
    assert ds.x_train.shape[1:] == (16, 12, 3) and ds.preprocessing["data_layout"] == "NCHW"
    # mean is per channel, after the conversion: channel 1 of the user's data lost 0.4
    back = ds.x_test.transpose(0, 3, 1, 2) + np.float32([0.5, 0.4, 0.3])[:, None, None]
    assert any(np.allclose(back[0], s) for s in x)


def test_channels_last_data_for_an_nchw_model_is_still_taken_as_it_is(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 16, 16, 3), dtype=np.float32))
    port = interface.onnx_interface(conv_model(tmp_path / "m.onnx"))["inputs"][0]
    ds = data.load(DataConfig(path=str(tmp_path / "d.npz"), calibration_samples=5), 0, port)
    assert ds.x_train.shape[1:] == (16, 16, 3) and ds.preprocessing["data_layout"] == "NHWC"
