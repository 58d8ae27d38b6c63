"""The post-training choice (targets/ptq/) on a small real model: scikit-learn's MLP trained on the
8x8 digits, written as ONNX (Gemm, Relu, Gemm) and as Keras, calibrated and validated on real digits."""

import warnings

import numpy as np
import pytest

from targets import onnx as onnx_target
from targets import openvino as openvino_target
from targets import ptq
from targets.ptq import onnx as ptq_onnx
from targets.ptq import openvino as ptq_openvino
from targets.ptq import tflite as ptq_tflite


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    warnings.simplefilter(
        "ignore", ConvergenceWarning
    )  # 60 iterations: 0.88 on held-out digits; agreement is what is tested
    d = load_digits()
    x = (d.data / 16).astype(np.float32)
    mlp = MLPClassifier((32,), max_iter=60, random_state=0).fit(x[:1200], d.target[:1200])
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    inits = [
        numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save(model, path)
    # calibration, validation (never test), test: all from the held-out digits
    return path, mlp, x[1200:1300], x[1300:1400], x[1400:]


def test_the_onnx_choice_is_the_candidate_with_the_closest_outputs_on_validation_and_reads_back_int8(
    digits_mlp, tmp_path
):
    src, _, cal, val, test = digits_mlp
    model, record = ptq_onnx.onnx_int8(src, cal, val)
    scored = [c for c in record["candidates"] if "closeness" in c]
    skipped = [c for c in record["candidates"] if "skipped" in c]
    assert len(scored) + len(skipped) == len(record["candidates"]) >= 3
    assert not skipped or record["agreement"] == 1.0  # the search ends once the choice agrees on every sample
    closest = max(scored, key=lambda c: c["closeness"])
    assert (record["chosen"], record["closeness"], record["agreement"]) == (
        closest["method"],
        closest["closeness"],
        closest["agreement"],
    )
    assert "validation split" in record["why"] and record["chosen"] in [c["method"] for c in scored]
    out = tmp_path / "int8.onnx"
    out.write_bytes(model.SerializeToString())
    info = onnx_target.inspect(out)
    assert info["quantization"] == "int8-qdq" and info["float_ops"] == []
    assert ptq.agreement(ptq_onnx.run_onnx(src, test), ptq_onnx.run_onnx(out, test)) >= 0.95


def test_candidates_are_scored_against_the_original_models_outputs_when_given(digits_mlp):
    """The original may differ from the float model being quantized (pruned, converted): its outputs on the
    validation split are the reference. Here it answers the next class on every sample, so no int8 file
    of the float model agrees with it anywhere."""
    src, _, cal, val, _ = digits_mlp
    float_out = ptq_onnx.run_onnx(src, val)
    shifted = np.roll(float_out, 1, axis=1)
    _, record = ptq_onnx.onnx_full_int8(src, cal, val, reference=shifted)
    assert record["against"] == "original" and "original model" in record["why"]
    assert all(c["agreement"] <= 0.05 for c in record["candidates"] if "agreement" in c)
    _, own = ptq_onnx.onnx_full_int8(src, cal, val)
    assert own["against"] == "float" and own["agreement"] >= 0.95


def test_the_closest_outputs_win_even_against_a_candidate_that_agrees_on_one_more_top1():
    """Top-1 on a few validation samples flips on near-ties; the mean cosine sees every sample's error."""
    ref = np.array([[2.0, 1.0], [1.0, 2.0], [1.0, 1.02]])
    lucky = np.array([[2.0, 1.9], [1.9, 2.0], [1.0, 1.1]])  # agrees on all 3, far from the reference on 2
    near = np.array([[2.0, 1.0], [1.0, 2.0], [1.03, 1.02]])  # misses the near-tie, otherwise the reference
    model, record = ptq._pick([("near", lambda: near), ("lucky", lambda: lucky)], lambda m: m, ref)
    assert [c["agreement"] for c in record["candidates"]] == [0.6667, 1.0]
    assert model is near and record["chosen"] == "near" and record["agreement"] == 0.6667
    assert "next closest lucky" in ptq._why({**record, "against": "original"})


def test_onnx_bias_correction_takes_each_channels_mean_error_out_of_its_int32_bias(digits_mlp, tmp_path):
    src, _, cal, val, _ = digits_mlp
    q = ptq_onnx.ort_static(src, cal)
    fixed = ptq_onnx.minmax_bias_corrected(q, src, cal)
    float_out = ptq_onnx.run_onnx(src, val)

    def channel_error(m):  # of the logits, on samples the correction never saw
        return np.abs((ptq_onnx.run_onnx(m, val) - float_out).mean(0))

    assert channel_error(fixed).mean() < channel_error(q).mean()
    out = tmp_path / "bc.onnx"
    out.write_bytes(fixed.SerializeToString())
    assert onnx_target.inspect(out)["quantization"] == "int8-qdq"
    assert ptq.agreement(float_out, ptq_onnx.run_onnx(out, val)) >= 0.95


def test_an_onnx_file_with_a_layer_left_float_reads_back_int8_mixed_and_names_it(digits_mlp, tmp_path):
    src, _, cal, _, _ = digits_mlp
    out = tmp_path / "mixed.onnx"
    out.write_bytes(ptq_onnx.ort_static(src, cal, nodes_to_exclude=["fc2"]).SerializeToString())
    info = onnx_target.inspect(out)
    assert info["quantization"] == "int8-mixed"
    assert info["float_ops"] == ["Gemm fc2"]


@pytest.mark.slow
def test_mixed_precision_restores_float_layers_only_when_the_budget_is_missed(digits_mlp):
    src, _, cal, val, _ = digits_mlp
    model, record = ptq_onnx.onnx_full_int8(src, cal, val)
    same, kept = ptq_onnx.onnx_mixed(src, cal, val, model, record, budget=record["agreement"])
    assert same is model and kept is record  # the budget holds: nothing restored
    _, raised = ptq_onnx.onnx_mixed(src, cal, val, model, record, budget=1.0 + 1e-9)  # cannot hold: NNCF tries
    assert raised["candidates"][-1]["method"] == "nncf-accuracy-control"
    assert raised.get("mixed", False) == (raised["chosen"] == "nncf-accuracy-control")


@pytest.mark.slow
def test_the_openvino_choice_reads_back_int8_from_the_ir(digits_mlp, tmp_path):
    src, _, cal, val, test = digits_mlp
    model, record = ptq_openvino.openvino_int8(lambda path=src: openvino_target.float_ir(path), cal, val, src=src)
    assert [c["method"] for c in record["candidates"]] == ["nncf", "onnxruntime-minmax-float-tail-bias-correction"]
    openvino_target.import_openvino().save_model(model, str(tmp_path / "m.xml"), compress_to_fp16=False)
    assert openvino_target.inspect(tmp_path / "m.xml")["quantization"] == "int8"
    ref = ptq_openvino.run_openvino(openvino_target.float_ir(src), test)
    assert ptq.agreement(ref, ptq_openvino.run_openvino(model, test)) >= 0.95


@pytest.mark.slow
def test_tflite_choice_sensitivity_and_selective_float_layers_read_back_truthfully(digits_mlp, tmp_path):
    from pipeline import stages
    from targets import tflite

    _, mlp, cal, val, test = digits_mlp
    _, keras = stages.tf_setup(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.set_weights([*mlp.coefs_[:1], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1]])
    q, record = ptq_tflite.tflite_int8(model, cal, val)
    assert [c["method"] for c in record["candidates"]] == [
        "tflite-converter",
        "tflite-converter-bias-correction",
        "tflite-converter-bias-correction-all-samples",
    ]
    (tmp_path / "q.tflite").write_bytes(q)
    assert tflite.inspect(tmp_path / "q.tflite")["quantization"] == "int8"
    # the benchmark's ai-edge-quantizer peer: its float I/O turned into int8 I/O
    (tmp_path / "aeq.tflite").write_bytes(ptq_tflite.ai_edge_quantizer_int8(ptq_tflite.float_tflite(model), cal))
    assert tflite.inspect(tmp_path / "aeq.tflite")["quantization"] == "int8"
    assert ptq.agreement(model.predict(test, verbose=0), ptq_tflite.run_tflite(q, test)) >= 0.95
    ranked = ptq_tflite.sensitivity(model, cal)
    assert ranked and [r["rmse_per_scale"] for r in ranked] == sorted(
        (r["rmse_per_scale"] for r in ranked), reverse=True
    )
    (tmp_path / "m.tflite").write_bytes(ptq_tflite.selective_int8(model, cal, [ranked[0]["layer"]]))
    mixed = tflite.inspect(tmp_path / "m.tflite")
    assert mixed["quantization"] == "int8-mixed"
    assert any(ranked[0]["layer"] in op for op in mixed["float_ops"])


def test_tflite_bias_correction_takes_each_channels_mean_error_out_of_its_int32_bias(digits_mlp, tmp_path):
    from pipeline import stages
    from targets import tflite

    _, mlp, cal, val, _ = digits_mlp
    _, keras = stages.tf_setup(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.set_weights([*mlp.coefs_[:1], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1]])
    float_model, q = ptq_tflite.float_tflite(model), ptq_tflite.converter_int8(model, cal)
    fixed = ptq_tflite.bias_corrected(q, float_model, cal)

    def channel_error(m):  # of the logits, on samples the correction never saw
        return np.abs((ptq_tflite.run_tflite(m, val) - ptq_tflite.run_tflite(float_model, val)).mean(0))

    assert channel_error(fixed).mean() < channel_error(q).mean()
    (tmp_path / "bc.tflite").write_bytes(fixed)
    assert tflite.inspect(tmp_path / "bc.tflite")["quantization"] == "int8"
    assert ptq.agreement(ptq_tflite.run_tflite(float_model, val), ptq_tflite.run_tflite(fixed, val)) >= 0.95


def _with_external_buffers(model: bytes) -> bytes:
    """The same model with its constant data stored after the flatbuffer (offset/size), as ai-edge-quantizer
    writes large models."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    moved = [b for b in m.buffers if b.data is not None and len(b.data) > 0]

    def pack(start):
        tail = b""
        for b in moved:
            b.offset, b.size = start + len(tail), len(b.data)
            tail += bytes(np.asarray(b.data, dtype=np.uint8))
        data = [b.data for b in moved]
        for b in moved:
            b.data = None
        builder = flatbuffers.Builder(len(model))
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        for b, d in zip(moved, data):
            b.data = d
        return bytes(builder.Output()), tail

    head, _ = pack(1 << 40)  # offsets are fixed-width: the flatbuffer's size does not depend on them
    head, tail = pack(len(head))
    return head + tail


def test_int8_io_keeps_constants_stored_after_the_flatbuffer(digits_mlp, tmp_path):
    """ai-edge-quantizer writes a large model's constants after the flatbuffer (offset/size); the I/O rewrite
    must carry them, or the file points past its own end ('Constant buffer N specified an out of range offset')."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from pipeline import stages
    from targets import tflite

    _, mlp, cal, _, test = digits_mlp
    _, keras = stages.tf_setup(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.set_weights([*mlp.coefs_[:1], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1]])
    conv = ptq_tflite._converter(model, cal)
    conv.inference_input_type = conv.inference_output_type = tf.float32  # QUANTIZE / DEQUANTIZE at the edges
    external = _with_external_buffers(conv.convert())
    q = ptq_tflite.int8_io(external)
    (tmp_path / "q.tflite").write_bytes(q)
    Interpreter(model_path=str(tmp_path / "q.tflite")).allocate_tensors()  # loads from a file, as the runners do
    # the artifact's metadata is embedded by another repack: the same constants must survive it
    (tmp_path / "meta.tflite").write_bytes(tflite.embed_metadata(external, {"model": "m"}))
    Interpreter(model_path=str(tmp_path / "meta.tflite")).allocate_tensors()
    assert tflite.inspect(tmp_path / "meta.tflite")["metadata"]["model"] == "m"
    assert ptq.agreement(model.predict(test, verbose=0), ptq_tflite.run_tflite(q, test)) >= 0.95


def test_the_ops_after_the_last_weighted_op_stay_float_and_the_file_still_reads_back_int8(digits_mlp, tmp_path):
    """A classifier head (here Softmax after the last Gemm) keeps float outputs, as NNCF leaves it: its
    probabilities do not tie at one int8 step."""
    import onnx
    from onnx import helper

    src, _, cal, val, _ = digits_mlp
    model = onnx.load(str(src))
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], name="head_softmax"))
    model.graph.output[0].name = "probs"
    head = tmp_path / "head.onnx"
    onnx.save(model, head)
    assert ptq_onnx.float_tail(model) == ["head_softmax"]
    q = ptq_onnx.ort_static(head, cal, tail=True)
    into_output = [n for n in q.graph.node if "probs" in n.output]
    assert [n.op_type for n in into_output] == ["Softmax"]  # no QuantizeLinear/DequantizeLinear after it
    plain = ptq_onnx.ort_static(head, cal)
    assert [n.op_type for n in plain.graph.node if "probs" in n.output] == ["DequantizeLinear"]
    (tmp_path / "q.onnx").write_bytes(q.SerializeToString())
    assert onnx_target.inspect(tmp_path / "q.onnx")["quantization"] == "int8-qdq"
    assert ptq.agreement(ptq_onnx.run_onnx(head, val), ptq_onnx.run_onnx(q, val)) >= 0.95
