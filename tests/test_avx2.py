"""The int8 files answer on an AVX2-only x86-64 as they did when verified: each runs here and on an emulated
Haswell (qemu-x86_64 -cpu Haswell: AVX2, no AVX-512, no VNNI), where onnxruntime, OpenVINO and LiteRT pick
their AVX2 int8 kernels (onnxruntime's and OpenVINO's sum u8 x s8 products in 16 bits: full-range s8 weights
saturate there)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from test_ptq import digits_mlp  # noqa: F401  (the fixture)

from pipeline import runner
from pipeline.gate import load_outputs
from pipeline.isa import avx2_only, x86_isa
from targets import TARGETS
from targets.ptq import onnx as ptq_onnx

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(avx2_only() is None, reason="needs qemu-x86_64 on x86-64 (Debian qemu-user)"),
]


def _run(target, path, x, out, prefix=None):
    res = runner.run(target.runner_path, path, ["--inputs", x, "--outputs", out], timeout=900, prefix=prefix)
    assert res["ok"], res
    return load_outputs(out)[0]


def test_the_emulated_cpu_has_avx2_and_neither_avx512_nor_vnni():
    code = "from pipeline.isa import x86_isa; import json; print(json.dumps(x86_isa()))"
    proc = subprocess.run([*avx2_only(), sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["flags"] == ["avx2"] and json.loads(proc.stdout)["label"] == "AVX2"


def test_every_int8_file_of_a_build_answers_the_same_on_an_avx2_only_cpu_and_says_where_it_was_verified(
    small_build, tmp_path
):
    out = small_build[0]
    manifest = json.loads((out / "tiny-digits" / "manifest.json").read_text())
    assert manifest["x86_isa"] == x86_isa()
    x = tmp_path / "x.npy"
    np.save(x, np.load(next((out / ".cache" / "data").glob("*/x_test.npy")))[:100])
    checked = []
    for a in manifest["artifacts"]:
        if not a["target"].endswith("int8") or a["status"] != "ok":
            continue
        assert a["x86_isa"] == x86_isa(), a["target"]  # the CPU its figures ran on
        target, path = TARGETS[a["target"]], out / a["path"]
        here = _run(target, path, x, tmp_path / "here.npz")
        avx2 = _run(target, path, x, tmp_path / "avx2.npz", prefix=[*avx2_only(), sys.executable])
        assert (here.argmax(1) == avx2.argmax(1)).all(), a["target"]
        if a["outputs"][0]["scale"]:  # an int8 output: at most one step apart (rounding of a requantization)
            assert np.abs(here - avx2).max() <= a["outputs"][0]["scale"] * 1.001, a["target"]
        else:  # the int8 arithmetic is the same; float rounding after it only
            np.testing.assert_allclose(avx2, here, rtol=1e-5, atol=1e-6, err_msg=a["target"])
        checked.append(a["target"])
    assert set(checked) >= {"tflite-int8", "onnx-int8", "openvino-int8"}


def test_a_full_range_s8_file_saturates_on_an_avx2_only_cpu_and_the_default_7bit_one_does_not(digits_mlp, tmp_path):  # noqa: F811
    """Why [ptq] deploy_cpu defaults to "any": onnxruntime's AVX2 kernels sum u8 x s8 pairs in 16 bits."""
    src, _, cal, val, _ = digits_mlp
    x = tmp_path / "x.npy"
    np.save(x, val)
    target = TARGETS["onnx-int8"]
    moved = {}
    for kind in ("s8s8-7bit", "u8u8", "s8s8"):
        path = tmp_path / f"{kind}.onnx"
        path.write_bytes(ptq_onnx.ort_static(src, cal, kind=kind).SerializeToString())
        here = _run(target, path, x, tmp_path / "here.npz")
        avx2 = _run(target, path, x, tmp_path / "avx2.npz", prefix=[*avx2_only(), sys.executable])
        moved[kind] = np.abs(here - avx2).max()
    assert moved["s8s8-7bit"] <= 1e-5 and moved["u8u8"] <= 1e-5  # the default, and the slower exact one
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"} & set(x86_isa()["flags"])
    assert (moved["s8s8"] > 0.1) if vnni else (moved["s8s8"] <= 1e-5), moved  # 0.98 on digits logits
