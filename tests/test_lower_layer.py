"""targets/ as a layer of its own: its errors are the pipeline's, and it prints nothing unless asked."""

import numpy as np
import pytest


def _tiny_onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["y"], name="fc")],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_a_target_writes_nothing_to_stderr_unless_its_caller_installs_a_listener(tmp_path, capfd):
    from pipeline import report
    from targets import TARGETS, openvino
    from targets.progress import reporting

    target = TARGETS["openvino-fp32"]
    openvino.write(target, _tiny_onnx(), [np.zeros((1, 4), np.float32)], tmp_path / "a.xml", {})
    assert capfd.readouterr().err == ""
    with reporting(report.step):
        openvino.write(target, _tiny_onnx(), [np.zeros((1, 4), np.float32)], tmp_path / "b.xml", {})
    err = capfd.readouterr().err
    assert "ONNX -> OpenVINO" in err and "done in" in err


def test_an_unknown_target_raises_the_pipelines_usage_error_with_a_suggestion():
    from pipeline.errors import PipelineError, UsageError
    from targets import errors, resolve

    with pytest.raises(UsageError, match="did you mean 'onnx-int8'") as e:
        resolve("onnx-int9")
    assert isinstance(e.value, errors.UsageError) and isinstance(e.value, PipelineError) and e.value.exit_code == 2
