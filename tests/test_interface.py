"""The user's model as it is: its layout (NCHW data for an NCHW ONNX model), its interface kept on the
ONNX and OpenVINO artifacts, several inputs. Small ONNX models are made here with onnx.helper."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import TensorProto, helper, numpy_helper

from pipeline import data, interface
from pipeline.config import DataConfig


def conv_model(path, dynamic=True, seed=0, batch="N"):
    """image [N,3,H,W] -> Conv 3x3 (8) -> Relu -> Conv 1x1 (2) -> mask [N,2,H,W]: a tiny NCHW segmenter."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (2, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["mask"]),
    ]
    h, w = ("H", "W") if dynamic else (16, 16)
    g = helper.make_graph(
        nodes,
        "seg",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 2, h, w])],
        [w1, b1, w2],
    )
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


def run_model(path, feeds: dict) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def io_of(a):
    return [(p["name"], p["shape"]) for p in a["inputs"]], [(p["name"], p["shape"]) for p in a["outputs"]]


@pytest.mark.slow
def test_an_nchw_onnx_model_with_nchw_data_keeps_its_interface_on_onnx_and_openvino_and_chooses_its_int8(tmp_path):
    import json

    from conftest import run_cli

    model = conv_model(tmp_path / "seg.onnx")
    x = np.random.default_rng(1).random((60, 3, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    targets = "onnx-fp32,onnx-int8,openvino-fp32,openvino-int8,tflite-fp32"
    proc = run_cli(
        "build", "--model", model, "--data", tmp_path / "d.npz", "--target", targets, "--out", tmp_path / "o"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "o" / "seg" / "manifest.json").read_text())
    arts = {a["target"]: a for a in m["artifacts"]}
    assert m["preprocessing"]["data_layout"] == "NCHW"
    for name in ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"):
        a = arts[name]
        assert a["status"] == "ok" and a["route"] == "original" and a["input_layout"] == "NCHW", a
        # the free batch, height and width of the original stay free
        assert io_of(a) == ([("image", [-1, 3, -1, -1])], [("mask", [-1, 2, -1, -1])]), a
        assert a["cosine"] > 0.99
    for name in ("onnx-int8", "openvino-int8"):  # the post-training choice runs on the user's own graph too
        choice = arts[name]["ptq"]
        assert choice["against"] == "original" and choice["chosen"] in [c["method"] for c in choice["candidates"]]
    assert arts["openvino-fp32"]["run_config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert arts["openvino-fp32"]["runtime_default"]["precision"] in ("bf16", "f16", "f32")
    assert arts["tflite-fp32"]["input_layout"] == "NHWC" and arts["tflite-fp32"]["inputs"][0]["shape"] == [1, 16, 16, 3]
    # drop-in: the user's own call, on a size the data never had, answers as the original does
    probe = {"image": np.random.default_rng(2).random((2, 3, 24, 20), dtype=np.float32)}
    want = run_model(model, probe)[0]
    got = run_model(tmp_path / "o" / arts["onnx-fp32"]["path"], probe)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(tmp_path / "o" / arts["openvino-fp32"]["path"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    np.testing.assert_allclose(compiled(probe)["mask"], want, atol=1e-4)


def test_input_shape_on_the_command_line_must_be_integers(tmp_path):
    from conftest import run_cli

    proc = run_cli("build", "--model", conv_model(tmp_path / "m.onnx"), "--input-shape", "1,3,x,16", "--out", tmp_path)
    assert proc.returncode == 2 and "--input-shape must be integers" in proc.stderr.splitlines()[-1]


def channels_last_copy(nchw_path, path):
    """What tf2onnx makes of the Keras conversion: input `input` NHWC, a transpose inside, output `mask` NHWC."""
    m = onnx.load(nchw_path)
    g = m.graph
    for n in g.node:
        n.input[:] = ["x_nchw" if s == "image" else s for s in n.input]
        n.output[:] = ["y_nchw" if s == "mask" else s for s in n.output]
    nodes = [
        helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]),
        *g.node,
        helper.make_node("Transpose", ["y_nchw"], ["mask"], perm=[0, 2, 3, 1]),
    ]
    del g.node[:]
    g.node.extend(nodes)
    g.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["unk__1", 16, 16, 3]))
    g.output[0].CopyFrom(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["unk__1", 16, 16, 2]))
    onnx.save(m, path)
    return m


def test_a_converted_channels_last_graph_gets_the_original_names_and_layout_back(tmp_path):
    original = conv_model(tmp_path / "seg.onnx")
    converted = channels_last_copy(original, tmp_path / "nhwc.onnx")
    proto, in_perms, out_perms = interface.restore(converted, interface.onnx_interface(original))
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp_path / "restored.onnx")
    assert in_perms == [[0, 3, 1, 2]] and out_perms == [[0, 2, 3, 1]]
    io = interface.onnx_interface(tmp_path / "restored.onnx")
    assert [(p["name"], p["shape"]) for p in io["inputs"]] == [("image", [None, 3, 16, 16])]
    assert [(p["name"], p["shape"]) for p in io["outputs"]] == [("mask", [None, 2, 16, 16])]
    probe = {"image": np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)}
    np.testing.assert_allclose(
        run_model(tmp_path / "restored.onnx", probe)[0], run_model(original, probe)[0], atol=1e-5
    )


def test_a_batch_fixed_at_one_stays_one_when_restored_and_outputs_stacked_over_samples_map_back(tmp_path):
    original = conv_model(tmp_path / "seg.onnx", dynamic=False, batch=1)
    converted = channels_last_copy(original, tmp_path / "nhwc.onnx")  # tf2onnx's free batch
    proto, _, out_perms = interface.restore(converted, interface.onnx_interface(original))
    onnx.save(proto, tmp_path / "restored.onnx")
    io = interface.onnx_interface(tmp_path / "restored.onnx")
    assert [(p["name"], p["shape"]) for p in io["inputs"]] == [("image", [1, 3, 16, 16])]
    assert [(p["name"], p["shape"]) for p in io["outputs"]] == [("mask", [1, 2, 16, 16])]
    probe = {"image": np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)}
    np.testing.assert_allclose(
        run_model(tmp_path / "restored.onnx", probe)[0], run_model(original, probe)[0], atol=1e-5
    )
    # 40 samples run one at a time through a batch-1 model, stacked: the same layout as the original's
    assert out_perms == [[0, 2, 3, 1]] and interface.output_perm([1, 2, 16, 16], [40, 16, 16, 2]) == [0, 2, 3, 1]
    assert interface.output_perm([1, 10], [40, 10]) is None
    with pytest.raises(ValueError, match="cannot map"):
        interface.output_perm([1, 10], [40, 12])


def two_input_model(path, seed=0):
    """features [N,6] and extra [N,3] -> scores [N,5] (softmax) and hidden [N,5]: two inputs, two outputs."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 5)).astype(np.float32), "W")
    v = numpy_helper.from_array(rng.normal(0, 0.5, (3, 5)).astype(np.float32), "V")
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["fa"]),
        helper.make_node("MatMul", ["extra", "V"], ["fb"]),
        helper.make_node("Add", ["fa", "fb"], ["s"]),
        helper.make_node("Relu", ["s"], ["hidden"]),
        helper.make_node("Softmax", ["hidden"], ["scores"], axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 6]),
            helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", 5]),
        ],
        [w, v],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.mark.slow
def test_a_two_input_onnx_model_builds_fp32_and_int8_targets_and_tflite_says_why_not(tmp_path):
    import json

    from conftest import run_cli

    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "d.npz", features=rng.random((80, 6), dtype=np.float32), extra=rng.random((80, 3), dtype=np.float32)
    )
    # Each head by its own measure: the softmax by top-1 agreement, `hidden` (ReLU) by cosine; int8 of this
    # 30-weight graph keeps its cosine near 0.99.
    (tmp_path / "c.toml").write_text("[build]\nmin_agreement = 0.9\nmin_cosine = 0.97\n")
    out = tmp_path / "o"
    common = ["--config", tmp_path / "c.toml", "--model", model, "--data", tmp_path / "d.npz", "--out", out]
    proc = run_cli("build", *common, "--target", "onnx-fp32,onnx-int8,openvino-fp32,openvino-int8,tflite-fp32")
    assert proc.returncode == 1, proc.stderr[-3000:]  # tflite-fp32 cannot take it; the others build
    arts = {a["target"]: a for a in json.loads((out / "two" / "manifest.json").read_text())["artifacts"]}
    assert arts["tflite-fp32"]["status"] == "failed_build" and "single-input" in arts["tflite-fp32"]["reason"]
    for name in ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"):
        a = arts[name]
        assert a["status"] == "ok", a
        assert io_of(a) == ([("features", [-1, 6]), ("extra", [-1, 3])], [("scores", [-1, 5]), ("hidden", [-1, 5])])
        assert [h["kind"] for h in a["heads"]] == ["scores", "regression"] and a["top1_agreement"] >= 0.9
    assert arts["onnx-int8"]["quantization"] == "int8-qdq" and arts["openvino-int8"]["quantization"] == "int8"
    assert arts["onnx-fp32"]["max_abs_diff"] == 0.0  # the user's own graph
    # the release's test vectors hold one array per input, and replay
    targets = "onnx-int8,openvino-int8"
    rel = run_cli("release", *common, "--version", "1.0.0", "--target", targets, "--dist", tmp_path / "dist")
    assert rel.returncode == 0, rel.stderr[-2000:]
    ver = run_cli("verify", tmp_path / "dist" / "two-1.0.0")
    assert ver.returncode == 0, ver.stdout[-2000:]
    bench = run_cli("bench", *common, "--target", targets, "--min-seconds", "0.1", "--runs", "20")
    assert bench.returncode == 0 and "x_test.npz [[6], [3]]" in bench.stdout, bench.stdout + bench.stderr[-2000:]


ASSETS = Path(os.environ.get("EDGE_EXPORT_TEST_ASSETS", ROOT / ".venv" / "test-assets"))


@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / "torch_cnn.onnx").exists(), reason="run scripts/fetch_test_assets.sh first")
def test_the_readmes_pytorch_route_gives_artifacts_that_answer_as_pytorch_does(tmp_path):
    """A PyTorch CNN exported by the README's call (scripts/export_torch_cnn.py), its NCHW data as PyTorch
    takes it, labelled with PyTorch's own answers: every artifact is measured against PyTorch."""
    import json

    from conftest import NO_PTQ_CHOICE, run_cli

    with np.load(ASSETS / "torch_cnn_io.npz") as z:
        x, logits = z["x"], z["logits"]
    np.savez(tmp_path / "d.npz", x=x, y=logits.argmax(1))
    labels = ", ".join(f'"{i}"' for i in range(10))  # PyTorch's answers may not use every class
    (tmp_path / "c.toml").write_text(
        f"[model]\nname = 'torch-cnn'\nlabels = [{labels}]\n[data]\ncalibration_samples = 100\n{NO_PTQ_CHOICE}"
    )
    out = tmp_path / "o"
    proc = run_cli(
        "build",
        "--config",
        tmp_path / "c.toml",
        "--model",
        ASSETS / "torch_cnn.onnx",
        "--data",
        tmp_path / "d.npz",
        "--target",
        "onnx-fp32,openvino-fp32,tflite-fp32,tflite-int8",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    arts = {a["target"]: a for a in json.loads((out / "torch-cnn" / "manifest.json").read_text())["artifacts"]}
    for a in arts.values():
        assert a["status"] == "ok" and a["accuracy"] >= 0.95, a  # top-1 against PyTorch's answers
    assert io_of(arts["onnx-fp32"]) == ([("pixels", [-1, 3, 32, 32])], [("logits", [-1, 10])])
    assert arts["tflite-fp32"]["inputs"][0]["shape"] == [1, 32, 32, 3]
    got = run_model(out / arts["onnx-fp32"]["path"], {"pixels": x[:16]})[0]
    np.testing.assert_allclose(got, logits[:16], atol=1e-4)


def torch_data(tmp_path, model_keys=""):
    """The torch CNN's NCHW samples labelled with PyTorch's own answers, and a config of their labels."""
    with np.load(ASSETS / "torch_cnn_io.npz") as z:
        x, logits = z["x"], z["logits"]
    np.savez(tmp_path / "d.npz", x=x, y=logits.argmax(1))
    labels = ", ".join(f'"{i}"' for i in range(10))
    (tmp_path / "c.toml").write_text(
        f"[model]\nname = 'b1'\nlabels = [{labels}]\n{model_keys}[data]\ncalibration_samples = 100\n"
    )
    return x, logits


def build_all(tmp_path, model):
    import json

    from conftest import run_cli

    out = tmp_path / "o"
    args = ["--config", tmp_path / "c.toml", "--model", model, "--data", tmp_path / "d.npz", "--target", "all"]
    proc = run_cli("build", *args, "--out", out)
    m = json.loads((out / "b1" / "manifest.json").read_text())
    return proc, m, {a["target"]: a for a in m["artifacts"]}, out


@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / "torch_cnn_b1.onnx").exists(), reason="run scripts/fetch_test_assets.sh first")
def test_a_pytorch_export_with_the_defaults_batch_fixed_at_one_builds_every_target_keeping_its_interface(tmp_path):
    """torch.onnx.export without dynamic_axes (what most PyTorch users' files are): the batch is fixed at 1."""
    from targets import TARGETS

    x, logits = torch_data(tmp_path, "fine_tune_epochs = 1\n")  # asked for, as the user did
    proc, m, arts, out = build_all(tmp_path, ASSETS / "torch_cnn_b1.onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(arts) == set(TARGETS) and all(a["status"] == "ok" for a in arts.values()), arts
    # onnx2tf's graph holds its weights as constants: nothing fine-tuned or pruned, no sparsity searched, and
    # so the user's own graph is shipped
    assert not m["stages"]["train"]["source_model"]["fine_tuned"]
    assert "model: no trainable weights; fine-tuning skipped" in m["stages"]["train"]["fallbacks"]
    prune = m["stages"]["prune"]
    assert "auto" not in prune and not prune["weights_changed"] and "auto ->" not in proc.stderr
    assert "nothing pruned" in proc.stderr
    for name, a in arts.items():
        if a["target"].startswith(("onnx", "openvino", "ncnn")):
            assert a["route"] == "original", a
            assert io_of(a) == ([("input", [1, 3, 32, 32])], [("logits", [1, 10])]), name
    assert arts["onnx-fp32"]["max_abs_diff"] < 1e-5  # the user's graph, against onnx2tf's Keras model
    got = run_model(out / arts["onnx-int8"]["path"], {"input": x[:1]})[0]
    assert got.shape == (1, 10) and got.argmax() == logits[0].argmax()


@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / "torch_cnn_b1.onnx").exists(), reason="run scripts/fetch_test_assets.sh first")
def test_a_graph_onnx2tf_cannot_convert_still_gets_its_onnx_and_openvino_artifacts_and_tflite_says_why(tmp_path):
    """The PyTorch CNN with its max pooling made L2 pooling (LpPool, a standard ONNX op onnx2tf 1.28.8 has
    no converter for): the Keras side cannot exist, onnx-* and openvino-* need none of it."""
    x, _ = torch_data(tmp_path)
    m = onnx.load(ASSETS / "torch_cnn_b1.onnx")
    [i] = [i for i, n in enumerate(m.graph.node) if n.op_type == "MaxPool"]
    pool = m.graph.node[i]
    lp = helper.make_node("LpPool", list(pool.input), list(pool.output), name="/3/LpPool", p=2)
    lp.attribute.extend(a for a in pool.attribute if a.name in ("kernel_shape", "strides"))
    m.graph.node.remove(pool)
    m.graph.node.insert(i, lp)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, tmp_path / "l2pool.onnx")
    proc, man, arts, out = build_all(tmp_path, tmp_path / "l2pool.onnx")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "train" not in man["stages"] and "LpPool" in man["stages"]["original"]["fallbacks"][0]
    for name, a in arts.items():
        if name.startswith("tflite"):
            assert a["status"] == "failed_build" and "onnx2tf cannot convert" in a["reason"], a
            assert "no converter for the ONNX op LpPool, at node '/3/LpPool'" in a["reason"], a
        elif name.startswith("ncnn"):  # pnnx writes a graph NCNN 1.0.20250503 cannot run: said, not shipped
            assert a["status"] == "failed_build" and "NCNN cannot run" in a["reason"], a
        else:
            assert a["status"] == "ok" and a["route"] == "original", a
            assert io_of(a) == ([("input", [1, 3, 32, 32])], [("logits", [1, 10])]), name
            assert a["cosine"] >= 0.99, a  # against the user's file in onnxruntime
    assert arts["onnx-fp32"]["max_abs_diff"] == 0.0
    want = run_model(tmp_path / "l2pool.onnx", {"input": x[:1]})[0]
    np.testing.assert_allclose(run_model(out / arts["onnx-int8"]["path"], {"input": x[:1]})[0], want, atol=0.05)
