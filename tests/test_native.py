"""The native runner (targets/native/edge_bench.c, pipeline/native.py): the Python runners' protocol in C.

Fast tests run it on a tiny ONNX graph made here (onnxruntime, and OpenVINO reading the .onnx);
the slow ones on every target of the shared tiny build, locally, on the emulated Pi 4 and on an
SSH "board" whose python3 does not run.
"""

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from support.sshd import LoopbackSSHD, SSHDUnavailable

from pipeline import benchmark as bench
from pipeline import native, runner
from pipeline.devices import emulator as emu
from pipeline.gate import load_outputs
from pipeline.runtimes import RUNTIMES as REGISTRY
from targets import TARGETS

RUNNERS = Path(__file__).resolve().parents[1] / "targets" / "runners"
FAST = bench.Settings(runs=20, min_seconds=0, warmup=2, samples=20)


@pytest.fixture(scope="session")
def edge_bench():
    """The x86_64 binary, built once (make: a no-op when up to date)."""
    try:
        return native.binary(platform.machine())
    except native.NativeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """y = softmax(x @ W + b) on 8x8x1 inputs, and 30 float samples: a real graph in a second."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10)).astype(np.float32)
    b = rng.normal(size=(10,)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("tiny-onnx")
    onnx.save(model, folder / "model.onnx")
    np.save(folder / "x.npy", rng.random((30, 8, 8, 1), dtype=np.float32))
    return folder / "model.onnx", folder / "x.npy"


def _native(model, runtime, *args):
    rt = next(r for r in REGISTRY.values() if r.native == runtime)
    return runner.run_command(native.command(rt, platform.machine()) + [model, *args], timeout=120)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_native_runner_answers_what_the_python_runner_answers_and_times_it(
    edge_bench, tiny_onnx, runtime, tmp_path
):
    model, x = tiny_onnx
    res = _native(
        model,
        runtime,
        "--inputs",
        x,
        "--outputs",
        tmp_path / "native.npz",
        "--bench",
        "--runs",
        50,
        "--min-seconds",
        0,
        "--warmup",
        3,
    )
    assert res["ok"], res
    assert res["harness"] == "native" and res["runtime"] == runtime and res["runtime_version"]
    assert res["inputs"][0]["shape"] == [1, 8, 8, 1] and res["outputs"][0]["shape"] == [1, 10]
    lat = res["latency"]
    assert lat["runs"] == 50 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert res["load_ms"] > 0 and res["first_inference_ms"] > 0 and res["peak_rss_mb"] > 0
    assert res["conditions"]["python"] is None and res["predicted"] == 30
    script = RUNNERS / ("run_onnxruntime.py" if runtime == "onnxruntime" else "run_openvino.py")
    py = runner.run(script, model, ["--inputs", x, "--outputs", tmp_path / "python.npz"])
    assert py["ok"], py
    ours, theirs = load_outputs(tmp_path / "native.npz"), load_outputs(tmp_path / "python.npz")
    assert ours[0].shape == theirs[0].shape == (30, 10)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-6)


def test_the_native_runner_writes_a_npz_numpy_reads_with_a_1d_output_too(edge_bench, tiny_onnx, tmp_path):
    """Its own zip writer: members, CRCs and .npy headers as np.savez makes them."""
    import zipfile

    model, x = tiny_onnx
    out = tmp_path / "o.npz"
    assert _native(model, "onnxruntime", "--inputs", x, "--outputs", out, "--limit", 7)["ok"]
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None and z.namelist() == ["output_0.npy"]
    assert np.load(out)["output_0"].shape == (7, 10)


def test_a_bad_model_or_bad_inputs_is_a_failed_result_with_the_reason_never_a_crash(edge_bench, tiny_onnx, tmp_path):
    model, x = tiny_onnx
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    res = _native(junk, "onnxruntime", "--inputs", x)
    assert not res["ok"] and "onnxruntime CreateSession failed" in res["error"]
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), dtype=np.float32))
    res = _native(model, "onnxruntime", "--inputs", tmp_path / "wrong.npy")
    assert not res["ok"] and "a sample of input x has 5 values, the model's input 64" in res["error"]
    np.save(tmp_path / "c64.npy", np.zeros((3, 8, 8, 1), dtype=np.complex64))
    assert "float, int or bool" in _native(model, "onnxruntime", "--inputs", tmp_path / "c64.npy")["error"]
    np.savez_compressed(tmp_path / "zipped.npz", x=np.zeros((3, 8, 8, 1), dtype=np.float32))
    assert "np.savez_compressed" in _native(model, "onnxruntime", "--inputs", tmp_path / "zipped.npz")["error"]
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 64)), b=np.zeros((3, 64)))
    assert (
        "holds 2 arrays but the model's inputs are [x]"
        in _native(model, "onnxruntime", "--inputs", tmp_path / "two.npz")["error"]
    )
    assert "--bench needs --inputs" in _native(model, "onnxruntime", "--bench")["error"]
    res = runner.run_command([edge_bench, "--runtime", "litert", "--lib", tmp_path / "none.so", model], 60)
    assert not res["ok"] and "cannot load" in res["error"]


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """y = audio * float(gain): a float and an int64 input, fed from an .npz by name, as the Python runner feeds
    a model with several inputs (the arrays stored in the other order, float64 as numpy makes them)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["gain"], ["g"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["audio", "g"], ["y"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("gain", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("two-inputs")
    onnx.save(model, folder / "model.onnx")
    rng = np.random.default_rng(1)
    np.savez(folder / "x.npz", gain=rng.integers(-3, 4, size=(12, 1)), audio=rng.normal(size=(12, 4)))
    return folder / "model.onnx", folder / "x.npz"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_model_with_several_inputs_of_several_types_is_fed_from_an_npz_by_name(
    edge_bench, two_inputs, runtime, tmp_path
):
    model, x = two_inputs
    res = _native(model, runtime, "--inputs", x, "--outputs", tmp_path / "native.npz", "--bench", "--runs", 5)
    assert res["ok"], res
    assert [i["name"] for i in res["inputs"]] == ["audio", "gain"] and res["inputs"][1]["dtype"] == "int64"
    script = RUNNERS / ("run_onnxruntime.py" if runtime == "onnxruntime" else "run_openvino.py")
    py = runner.run(script, model, ["--inputs", x, "--outputs", tmp_path / "python.npz"])
    assert py["ok"], py
    with np.load(x) as z:
        expected = z["audio"].astype(np.float32) * z["gain"]
    np.testing.assert_allclose(load_outputs(tmp_path / "native.npz")[0], expected, rtol=1e-6)
    np.testing.assert_allclose(load_outputs(tmp_path / "python.npz")[0], expected, rtol=1e-6)


def test_openvino_at_its_default_precision_says_which_it_compiled_for(edge_bench, tiny_onnx):
    model, x = tiny_onnx
    exact, default = (_native(model, "openvino", "--inputs", x, "--precision", p) for p in ("f32", "default"))
    assert exact["ok"] and default["ok"], (exact, default)
    assert exact["precision"] == "f32" and default["precision"] in ("f32", "bf16", "f16")
    assert "--delegate" in _native(model, "onnxruntime", "--delegate", "xnnpack")["error"]


def test_runtime_options_the_native_runner_lacks_are_refused_by_name():
    with pytest.raises(native.NativeError, match="no --delegate none: it takes xnnpack"):
        native.native_args(["--bench", "--delegate", "none"])
    with pytest.raises(native.NativeError, match="no option --frobnicate"):
        native.native_args(["--frobnicate", "1"])
    assert native.native_args(["--bench", "--threads", "2"]) == ["--bench", "--threads", "2"]
    assert native.native_args(["--precision", "default"]) == ["--precision", "default"]
    with pytest.raises(native.NativeError, match="no native runner for run_tflite_runtime.py"):
        native.runtime_for("run_tflite_runtime.py")


def test_a_board_needs_a_known_arch_and_a_new_enough_glibc_for_the_bundle():
    assert native.parse_glibc("glibc 2.36\n") == (2, 36)
    assert native.parse_glibc("ldd (Debian GLIBC 2.31-13+deb11u5) 2.31") == (2, 31)
    assert native.parse_glibc("musl libc (x86_64)") is None
    assert native.bundle_check("aarch64", (2, 36)) is None
    assert "older than the 2.35" in native.bundle_check("aarch64", (2, 31))
    assert "no native runner for armv7l" in native.bundle_check("armv7l", (2, 36))
    assert "no glibc" in native.bundle_check("x86_64", None)


def test_the_bundle_holds_the_binary_and_only_the_runtime_libraries_it_loads(edge_bench):
    files = native.bundle_files(native.runtime_for("run_openvino.py"), platform.machine())
    names = set(files)
    assert "edge_bench" in names and any(n.startswith("lib/libopenvino_c.so") for n in names)
    assert any("cpu_plugin" in n for n in names) and not any("gpu" in n or "npu" in n for n in names)
    assert all(p.is_file() for p in files.values())


# --------------------------------------------------------------- every target of the tiny build


def _items(small_build):
    out = small_build[0]
    manifest = json.loads((out / "tiny-digits" / "manifest.json").read_text())
    arts = {a["target"]: a for a in manifest["artifacts"]}
    return out, [(TARGETS[n], arts[n], out / arts[n]["path"]) for n in TARGETS if arts.get(n, {}).get("path")]


def _x(out, tmp_path):
    x = np.load(next((out / ".cache" / "data").glob("*/x_test.npy")))[:20]
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


@pytest.mark.slow
def test_native_rows_on_this_machine_for_every_target_agree_with_the_python_runner(small_build, edge_bench, tmp_path):
    out, items = _items(small_build)
    items = [i for i in items if i[0].family != "ncnn"]  # no NCNN C API to link: its rows say why (test_ncnn)
    assert {t.family for t, _, _ in items} == {"tflite", "onnx", "openvino"}
    x = _x(out, tmp_path)
    rows = bench.bench_artifacts(items, [native.get_device("local")], x, [1], FAST)
    for (target, _, path), row in zip(items, rows):
        assert row["status"] == "ok", row
        assert row["p50_ms"] > 0 and row["python"] is None
        got, want = tmp_path / f"{target.name}-n.npz", tmp_path / f"{target.name}-p.npz"
        assert native.run_local(target.runner_path, path, ["--inputs", x, "--outputs", got], 60)["ok"]
        assert runner.run(target.runner_path, path, ["--inputs", x, "--outputs", want])["ok"]
        a, b = load_outputs(got)[0], load_outputs(want)[0]
        assert a.shape == b.shape
        assert (a.argmax(1) == b.argmax(1)).all(), target.name
        assert np.abs(a - b).max() <= 1e-5, target.name  # the same runtime, kernels and quantization


@pytest.mark.slow
@pytest.mark.emu
def test_native_rows_on_the_emulated_pi4_count_instructions_and_agree_with_x86(small_build, edge_bench, tmp_path):
    try:
        emu.setup("emu:rpi4", log=print)
        native.binary("aarch64")
    except (emu.EmuError, native.NativeError) as e:
        pytest.skip(str(e))
    out, items = _items(small_build)
    items = [i for i in items if i[0].name in ("tflite-int8", "onnx-fp32", "openvino-fp32")]
    rows = bench.bench_artifacts(items, [native.get_device("emu:rpi4")], _x(out, tmp_path), [1], FAST)
    for (_, art, _), row in zip(items, rows):
        assert row["status"] == "ok", row
        assert row["p50_ms"] is None and row["emulated_p50_ms"] > 0  # emulated time is never device time
        assert row["instructions_per_inference"] > 10_000 and row["inferences_per_section"] == 10
        assert len(set(row["instruction_counts"])) <= 2 or row["runtime"] == "openvino"
        assert row["top1_agreement_vs_x86"] == 1.0 and row["arch"] == "aarch64"
        # ARM's and x86's int8 kernels may round a requantization differently: one step of the int8 output
        # (0.0039 = 1/256 on an AVX2-only x86); float outputs differ by float rounding only.
        step = art["outputs"][0]["scale"]
        assert row["max_abs_diff_vs_x86"] <= (step * 1.001 if step else 1e-4), (art["target"], row)


@pytest.fixture(scope="module")
def nopy_board(tmp_path_factory):
    """A loopback SSH board whose python3 cannot run: the first python3 on its PATH exits 127."""
    root = tmp_path_factory.mktemp("sshd-native")
    try:
        server = LoopbackSSHD(
            root, {"nopy": ["sh", "-c", "echo 'python3: not found' >&2; exit 127", "--"], "host": [sys.executable]}
        )
    except SSHDUnavailable as e:
        pytest.skip(f"cannot start a loopback sshd: {e}")
    yield server
    server.close()


@pytest.mark.ssh
def test_device_check_says_a_board_without_python_can_run_the_native_bundle(nopy_board):
    proc = run_cli("device", "check", nopy_board.spec(), *nopy_board.options("nopy"), "--harness", "native")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("ssh://"))
    assert line.split()[1:] == [platform.machine(), platform.libc_ver()[1], "yes"]
    proc = run_cli("device", "check", nopy_board.spec(), *nopy_board.options("nopy"))
    assert proc.returncode == 1 and "--harness native" in proc.stderr  # the Python check says where to turn


@pytest.mark.slow
@pytest.mark.ssh
def test_bench_harness_native_on_an_ssh_board_without_python_keeps_nothing_there(
    small_build, small_config, edge_bench, nopy_board, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(small_build[0], out, symlinks=True)  # a bench rewrites the manifest: never the shared build
    rows_file = tmp_path / "rows.json"
    before = len(nopy_board.commands("nopy"))
    proc = run_cli(
        "bench",
        "--config",
        small_config,
        "--out",
        out,
        "--target",
        "tflite-int8,onnx-int8,openvino-int8",
        "--device",
        f"local,{nopy_board.spec()}",
        "--harness",
        "native",
        *nopy_board.options("nopy"),
        "--samples",
        20,
        "--runs",
        20,
        "--min-seconds",
        0,
        "--warmup",
        2,
        "--json",
        rows_file,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(rows_file.read_text())
    assert {r["harness"] for r in rows} == {"native"} and len(rows) == 6
    for r in rows:
        assert r["status"] == "ok" and r["p50_ms"] > 0 and r["python"] is None, r
    assert all(r["top1_agreement_vs_x86"] == 1.0 for r in rows if r["device"] == nopy_board.spec())
    assert f"{nopy_board.spec()}, native runner:" in proc.stdout and "no Python (native runner)" in proc.stdout
    commands = nopy_board.commands("nopy")[before:]
    assert sum("edge_bench" in c for c in commands) == 3 and not any("python3" in c for c in commands)
    assert list(nopy_board.tmpdirs["nopy"].iterdir()) == []


@pytest.mark.slow
@pytest.mark.emu
def test_a_release_bundle_benchmarks_and_replays_its_vectors_with_no_python_and_verifies(
    small_build, small_config, edge_bench, tmp_path
):
    import tarfile

    arches = ["x86_64"] + (["aarch64"] if emu.is_ready("rpi4") else [])
    out = tmp_path / "out"
    shutil.copytree(small_build[0], out, symlinks=True)
    dists = []
    for n in (1, 2):  # twice: bundles are as reproducible as the other archives
        dists.append(tmp_path / f"dist{n}")
        proc = run_cli(
            "release",
            "--config",
            small_config,
            "--out",
            out,
            "--version",
            "1.0.0",
            "--target",
            "tflite-int8",
            "--dist",
            dists[-1],
            "--bundle",
            ",".join(arches),
        )
        assert proc.returncode == 0, proc.stderr
    folder = dists[0] / "tiny-digits-1.0.0"
    for arch in arches:
        name = f"tiny-digits-1.0.0-tflite-int8-linux-{arch}.tar.gz"
        assert (folder / name).read_bytes() == (dists[1] / "tiny-digits-1.0.0" / name).read_bytes()
    with tarfile.open(folder / "tiny-digits-1.0.0-tflite-int8-linux-x86_64.tar.gz") as tar:
        tar.extractall(tmp_path / "board", filter="data")
    board = tmp_path / "board" / "tiny-digits-1.0.0-tflite-int8-linux-x86_64"
    no_python = {"PATH": "/nonexistent", "HOME": str(tmp_path)}  # run.sh needs sh and nothing else
    proc = subprocess.run(
        ["/bin/sh", board / "run.sh", "--runs", "5", "--min-seconds", "0"],
        env=no_python,
        capture_output=True,
        text=True,
    )
    res = runner.parse_result(proc.stdout)
    assert proc.returncode == 0 and res["ok"] and res["test_vectors"]["ok"], proc.stdout + proc.stderr
    assert res["test_vectors"]["vectors"] == 12 and res["latency"]["runs"] == 5
    vec = board / "test_vectors" / "output_0.npy"
    np.save(vec, np.load(vec) + 0.5)  # a board that answers otherwise than at release fails
    proc = subprocess.run(["/bin/sh", board / "run.sh"], env=no_python, capture_output=True, text=True)
    assert proc.returncode == 1 and "test vector output_0 differs by 0.5" in runner.parse_result(proc.stdout)["error"]
    proc = run_cli("verify", folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replays = [ln for ln in proc.stdout.splitlines() if ln.startswith("replay") and "-linux-" in ln]
    assert len(replays) == len(arches) and all(" ok " in ln for ln in replays), replays
