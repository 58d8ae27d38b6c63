"""`inspect ARTIFACT`: what a file is, read from the file in a child process; garbage is one clear line."""

import json

import pytest
from conftest import run_cli

from targets import TARGETS


def _one_line_usage_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot inspect"), proc.stderr
    for f in fragments:
        assert f in lines[0]


@pytest.mark.slow
def test_inspect_reads_each_built_artifact_back(small_build):
    out, _ = small_build
    m = json.loads((out / "tiny-digits" / "manifest.json").read_text())
    built = [a for a in m["artifacts"] if a["status"] == "ok"]
    assert {"tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8"} <= {a["target"] for a in built}
    for a in built:
        proc = run_cli("inspect", out / a["path"], "--json")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["quantization"] == TARGETS[a["target"]].quantization == a["quantization"]
        if len(TARGETS[a["target"]].files) == 1:  # the manifest hashes a multi-file artifact's files together
            assert info["sha256"] == a["sha256"]
        assert info["inputs"] and info["outputs"]
        assert all({"scale", "zero_point", "dtype", "shape"} <= set(t) for t in info["inputs"] + info["outputs"])
        assert info["ops"]
        if info["format"] == "tflite":
            assert info["metadata"]["model"] == "tiny-digits" and info["metadata"]["target"] == a["target"]
    int8 = next(a for a in built if a["target"] == "tflite-int8")
    text = run_cli("inspect", out / int8["path"]).stdout
    assert "quantization" in text and "int8" in text and "zero point" in text and "CONV_2D" in text


def test_a_garbage_tflite_file_is_one_clear_line(tmp_path):
    garbage = tmp_path / "model.tflite"
    garbage.write_bytes(bytes(range(256)) * 8)
    _one_line_usage_error(run_cli("inspect", garbage), "not a TFLite flatbuffer")


def test_a_file_that_claims_to_be_tflite_but_is_not_is_one_clear_line(tmp_path):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\xff\xff\xff\x7fTFL3" + bytes(range(256)) * 4)  # right identifier, root offset far out
    _one_line_usage_error(run_cli("inspect", fake), "as tflite")


def test_an_unknown_file_type_or_missing_file_is_one_clear_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_usage_error(run_cli("inspect", tmp_path / "notes.txt"), "unknown file type '.txt'", ".tflite")
    _one_line_usage_error(run_cli("inspect", tmp_path / "missing.tflite"), "no such file")
