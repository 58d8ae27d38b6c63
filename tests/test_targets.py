"""Every registered target through one template, each family's read-back, and offline/private builds.

The template runs on the shared build of every target: the file is there, loads and runs in its
own runtime through its runner, and the quantization and metadata read back from the file are
what the target promises. A target registered without an entry in EXPECTED fails the suite.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import TensorProto, helper, numpy_helper

from pipeline import runner
from pipeline.gate import artifact_inputs
from targets import TARGETS
from targets import onnx as onnx_family
from targets import openvino as openvino_family

# target -> (runtime its runner reports, input dtype a caller feeds)
EXPECTED = {
    "tflite-fp32": ("litert", "float32"),
    "tflite-fp16": ("litert", "float32"),
    "tflite-dynamic": ("litert", "float32"),
    "tflite-int8": ("litert", "int8"),
    "onnx-fp32": ("onnxruntime", "float32"),
    "onnx-int8": ("onnxruntime", "float32"),
    "openvino-fp32": ("openvino", "float32"),
    "openvino-fp16": ("openvino", "float32"),
    "openvino-int8": ("openvino", "float32"),
    "ncnn-fp32": ("ncnn", "float32"),
    "ncnn-fp16": ("ncnn", "float32"),
}


def test_every_registered_target_has_a_template_test():
    assert set(EXPECTED) == set(TARGETS)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_a_target_is_built_runs_in_its_runtime_and_reads_back_what_it_promises(small_build, name, tmp_path):
    out, _ = small_build
    target, (runtime, input_dtype) = TARGETS[name], EXPECTED[name]
    manifest = json.loads((out / "tiny-digits" / "manifest.json").read_text())
    row = next(a for a in manifest["artifacts"] if a["target"] == name)
    assert row["status"] == "ok", row
    folder = out / "tiny-digits" / name
    assert all((folder / f).is_file() for f in target.files)

    x = tmp_path / "x.npy"
    np.save(x, np.load(next((out / ".cache" / "data").glob("*/x_test.npy")))[:16])
    x = artifact_inputs(x, row, tmp_path)  # in the artifact's layout (ncnn: channels-first)
    run = runner.run(target.runner_path, folder / target.filename, ["--inputs", x, "--outputs", tmp_path / "y.npz"])
    assert run["ok"], run
    assert run["runtime"] == runtime and run["inputs"][0]["dtype"] == input_dtype
    y = np.load(tmp_path / "y.npz")["output_0"]
    assert (
        y.shape == (16, 10) and len(np.unique(y.round(5), axis=0)) > 1
    )  # each sample's own output, not the last one's
    if target.family == "openvino":
        assert run["inputs"][0]["shape"] == [1, 8, 8, 1]  # batch fixed: the CPU plugin's static-shape path

    info = target.module.inspect(folder / target.filename)
    assert info["quantization"] == target.quantization == row["quantization"]
    meta = info["metadata"]
    assert meta["model"] == "tiny-digits" and meta["target"] == name
    assert meta["config_hash"] == manifest["config_hash"] and meta["labels"] == [str(i) for i in range(10)]
    assert meta["preprocessing"]["layout"] == "NHWC"


def test_an_export_does_not_depend_on_what_the_process_converted_before(tmp_path):
    """A resumed build exports only the missing targets; tf2onnx and OpenVINO number unnamed nodes
    from process-wide counters, which made its openvino-int8 .xml differ from a clean build's."""
    from pipeline import stages

    _, keras = stages.tf_setup(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    calib = np.random.default_rng(0).random((8, 6, 6, 1), dtype=np.float32)
    files = []
    for i in range(2):  # the second export runs after the first has advanced every counter
        for name in ("onnx-fp32", "openvino-int8"):
            target = TARGETS[name]
            path = tmp_path / str(i) / name / target.filename
            path.parent.mkdir(parents=True)
            target.module.export(target, model, calib, path, {"model": "m"})
            files.append({f: (path.parent / f).read_bytes() for f in target.files})
    assert files[:2] == files[2:]


@pytest.mark.slow
def test_onnx_files_pass_the_checker_and_record_their_opset(small_build):
    out, _ = small_build
    manifest = json.loads((out / "tiny-digits" / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["target"].startswith("onnx-"):
            onnx.checker.check_model(onnx.load(out / a["path"]), full_check=True)
            assert a["opset"] == TARGETS[a["target"]].options["opset"]


# -- each family's read-back on tiny hand-made graphs (no TensorFlow, no training) ------------

W = np.array([[0.5, 0, -0.25], [0, 1, 0], [0.75, 0, 0.5], [0, -1, 0.25]], dtype=np.float32)  # 5/12 zeros


def tiny_onnx(path, int8_weights=False, quantized_activations=False):
    """y = x @ W, with W stored as int8 + DequantizeLinear and/or x through QuantizeLinear/DequantizeLinear."""
    inits, nodes, x = [], [], "x"
    if quantized_activations:
        inits += [
            numpy_helper.from_array(np.array(0.01, np.float32), "xs"),
            numpy_helper.from_array(np.array(0, np.int8), "xz"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        ]
        x = "xd"
    if int8_weights:
        inits += [
            numpy_helper.from_array(np.round(W / 0.01).astype(np.int8), "wq"),
            numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]))
    else:
        inits.append(numpy_helper.from_array(W, "w"))
    nodes.append(helper.make_node("MatMul", [x, "w"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_family.set_metadata(model, {"model": "tiny"})
    onnx.save(model, path)
    return path


def tiny_ir(onnx_path, xml_path, fp16=False):
    ov = openvino_family.import_openvino()
    model = ov.convert_model(onnx_path)
    model.set_rt_info(json.dumps({"model": "tiny"}), [openvino_family.METADATA_KEY])
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return xml_path


# (int8 weights, quantized activations) -> what each family must call it
KINDS = {
    (False, False): ("fp32", "fp32"),
    (True, True): ("int8-qdq", "int8"),
    (True, False): ("int8-weight-only", "int8-weight-only"),
    (False, True): ("qdq-float-weights", "fake-quant-float-weights"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_quantization_is_named_from_what_the_file_holds(kind, tmp_path):
    onnx_name, ir_name = KINDS[kind]
    src = tiny_onnx(tmp_path / "m.onnx", *kind)
    info = onnx_family.inspect(src)
    assert info["quantization"] == onnx_name and info["metadata"] == {"model": "tiny"}
    assert info["sparsity"] == round(5 / 12, 4) and info["opset"] == 17
    ir = openvino_family.inspect(tiny_ir(src, tmp_path / "m.xml"))
    assert ir["quantization"] == ir_name and ir["metadata"] == {"model": "tiny"}
    assert ir["sparsity"] == round(5 / 12, 4)


def test_a_pruned_weight_stored_as_its_channels_u8_zero_point_counts_as_zero(tmp_path):
    """onnx-int8's u8 weights are asymmetric per channel ([ptq] deploy_cpu = "any"): a pruned 0 is its zero point."""
    src = tiny_onnx(tmp_path / "m.onnx", int8_weights=True, quantized_activations=True)
    model = onnx.load(src)
    zero_points = np.array([128, 100, 140], np.uint8)  # W's columns are its output channels (MatMul: axis 1)
    inits = {t.name: t for t in model.graph.initializer}
    inits["wq"].CopyFrom(numpy_helper.from_array((np.round(W / 0.01) + zero_points).astype(np.uint8), "wq"))
    inits["ws"].CopyFrom(numpy_helper.from_array(np.full(3, 0.01, np.float32), "ws"))
    model.graph.initializer.append(numpy_helper.from_array(zero_points, "wz"))
    dq = next(n for n in model.graph.node if n.output[0] == "w")
    dq.input.append("wz")
    dq.attribute.append(helper.make_attribute("axis", 1))
    onnx.save(model, tmp_path / "u8.onnx")
    info = onnx_family.inspect(tmp_path / "u8.onnx")
    assert info["quantization"] == "int8-qdq" and info["weight_dtypes"] == {"uint8": 1}
    assert info["sparsity"] == round(5 / 12, 4)


def test_an_ir_saved_with_fp16_compression_reads_as_fp16_and_without_as_fp32(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    assert openvino_family.inspect(tiny_ir(src, tmp_path / "a.xml", fp16=True))["quantization"] == "fp16"
    assert openvino_family.inspect(tiny_ir(src, tmp_path / "b.xml"))["quantization"] == "fp32"


def test_a_file_that_is_not_a_model_is_a_value_error_not_a_crash(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError):
        onnx_family.inspect(bad)
    (tmp_path / "model.xml").write_text("<net><layers>")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ValueError):
        openvino_family.inspect(tmp_path / "model.xml")


@pytest.mark.parametrize("runner_name", ["run_onnxruntime.py", "run_openvino.py"])
def test_the_runners_compute_the_float_graph_exactly(runner_name, tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    if runner_name == "run_openvino.py":
        model = tiny_ir(model, tmp_path / "m.xml")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = runner.run(
        ROOT / "targets" / "runners" / runner_name,
        model,
        ["--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "y.npz"],
    )
    assert run["ok"], run
    assert run["inputs"][0] == {"name": "x", "shape": [-1, 4], "dtype": "float32", "scale": 0.0, "zero_point": 0}
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output_0"], x @ W, rtol=1e-6, atol=1e-6)


def test_openvino_runner_verifies_in_f32_unless_told_otherwise(tmp_path):
    model = tiny_ir(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.xml")
    path = ROOT / "targets" / "runners" / "run_openvino.py"
    assert runner.run(path, model)["precision"] == "f32"
    assert runner.run(path, model, ["--precision", "default"])["ok"]
    bad = runner.run(path, model, ["--precision", "int3"])
    assert not bad["ok"] and "use f32 or default" in bad["error"]


# -- offline and private ------------------------------------------------------------------


def offline(cmd: list) -> list:
    """`cmd` in a network namespace of its own (no interface but a down loopback)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed: cannot cut the network for this test")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not permitted here (needs root or user namespaces): {probe.stderr.strip()}")
    return ["unshare", "-n", *map(str, cmd)]


def private_env(home):
    """A fresh HOME, and none of our own telemetry switches: the code under test must set them."""
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "HOME")}
    return {**env, "HOME": str(home), "PYTHONPATH": str(ROOT)}


def assert_nothing_phoned_home(home):
    # openvino_telemetry writes a client id to ~/intel; onnxruntime queues 1DS events under ~/.cache/Microsoft.
    assert not (home / "intel").exists(), sorted(p.name for p in (home / "intel").iterdir())
    assert not (home / ".cache" / "Microsoft").exists()


QUANTIZE_BOTH = """
import sys, numpy as np, onnx
from targets import onnx as o, openvino as v
x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
onnx.save(o.quantize_qdq(onnx.load(sys.argv[1]), [x]), sys.argv[2])
ov = v.import_openvino()
ov.save_model(v.quantize(ov.convert_model(sys.argv[1]), [x]), sys.argv[3], compress_to_fp16=False)
"""


def test_quantizers_and_runners_work_offline_and_send_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    src, q_onnx, q_ir = tiny_onnx(tmp_path / "m.onnx"), tmp_path / "q.onnx", tmp_path / "q.xml"
    np.save(tmp_path / "x.npy", np.ones((4, 4), np.float32))
    env = private_env(home)
    proc = subprocess.run(
        offline([sys.executable, "-c", QUANTIZE_BOTH, src, q_onnx, q_ir]),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert onnx_family.inspect(q_onnx)["quantization"] == "int8-qdq"
    assert openvino_family.inspect(q_ir)["quantization"] == "int8"
    for runner_name, path in (("run_onnxruntime.py", q_onnx), ("run_openvino.py", q_ir)):
        cmd = [
            sys.executable,
            ROOT / "targets" / "runners" / runner_name,
            path,
            "--inputs",
            tmp_path / "x.npy",
            "--outputs",
            tmp_path / "y.npz",
        ]
        proc = subprocess.run(offline(cmd), env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_nothing_phoned_home(home)


@pytest.mark.slow
def test_a_build_runs_with_the_network_cut_and_sends_nothing(small_build, small_config, tmp_path):
    out, _ = small_build
    copy, home = tmp_path / "out", tmp_path / "home"
    home.mkdir()
    # The trained models are reused; every export and verification runs again without a network.
    shutil.copytree(
        out / ".cache",
        copy / ".cache",
        ignore=lambda d, names: [n for n in names if n.startswith(("export-", "verify-"))],
    )
    names = ["tflite-int8", "onnx-int8", "openvino-int8"]
    cmd = offline(
        [
            sys.executable,
            "-m",
            "pipeline",
            "build",
            "--config",
            small_config,
            "--target",
            ",".join(names),
            "--out",
            copy,
        ]
    )
    proc = subprocess.run(cmd, env=private_env(home), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = {line.split()[0] for line in proc.stderr.splitlines() if line.split()[1:2] == ["running"]}
    assert {f"{stage}:{n}" for stage in ("export", "verify") for n in names} <= ran
    rows = json.loads((copy / "tiny-digits" / "manifest.json").read_text())["artifacts"]
    assert {a["target"]: a["status"] for a in rows if a["target"] in names} == dict.fromkeys(names, "ok")
    assert_nothing_phoned_home(home)
