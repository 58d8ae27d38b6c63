"""The pipeline's specification, end to end: train -> prune -> PQAT -> every target, verified."""

import json
import subprocess
import sys

import pytest
from conftest import NO_PTQ_CHOICE, ROOT, build_copy, run_cli

from pipeline.util import sha256_file
from targets import TARGETS

pytestmark = pytest.mark.slow

FIELDS = (
    "target",
    "path",
    "bytes",
    "gzip_bytes",
    "sha256",
    "quantization",
    "inputs",
    "outputs",
    "sparsity",
    "accuracy",
    "reference_accuracy",
    "top1_agreement",
    "max_abs_diff",
    "status",
)


def manifest(out):
    return json.loads((out / "tiny-digits" / "manifest.json").read_text())


def test_the_default_demo_builds_every_target_verified(small_build):
    out, proc = small_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = manifest(out)
    assert {a["target"] for a in m["artifacts"]} == set(TARGETS)
    for a in m["artifacts"]:
        assert all(k in a for k in FIELDS), a
        assert a["status"] == "ok", a
        assert a["quantization"] == TARGETS[a["target"]].quantization
        files = [(out / a["path"]).parent / name for name in a["files"]]  # an OpenVINO IR is .xml + .bin
        assert a["files"] == TARGETS[a["target"]].files and all(f.exists() for f in files)
        assert sum(f.stat().st_size for f in files) == a["bytes"] and sha256_file(*files) == a["sha256"]
        assert a["reference_accuracy"] - a["accuracy"] <= m["config"]["build"]["max_accuracy_drop"] / 100
        assert a["target"] in proc.stdout
    for key in ("config_hash", "seed", "stages", "tools", "started", "finished"):
        assert key in m
    assert m["stages"]["prune"]["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_int8_is_full_integer_and_much_smaller_than_fp32(small_build):
    out, _ = small_build
    arts = {a["target"]: a for a in manifest(out)["artifacts"]}
    int8 = arts["tflite-int8"]
    assert [i["dtype"] for i in int8["inputs"] + int8["outputs"]] == ["int8", "int8"]
    assert int8["inputs"][0]["scale"] > 0
    assert int8["bytes"] < 0.5 * arts["tflite-fp32"]["bytes"]
    assert arts["tflite-dynamic"]["inputs"][0]["dtype"] == "float32"


def test_artifacts_carry_their_metadata(small_build):
    from targets import tflite

    out, _ = small_build
    m = manifest(out)
    meta = tflite.inspect(out / "tiny-digits" / "tflite-int8" / "model.tflite")["metadata"]
    assert meta["model"] == "tiny-digits" and meta["config_hash"] == m["config_hash"]
    assert meta["labels"] == [str(i) for i in range(10)] and meta["preprocessing"]["layout"] == "NHWC"


def test_a_second_build_reuses_every_stage_without_importing_tensorflow(small_build, small_config, tmp_path):
    out = build_copy(small_build, tmp_path / "out")
    code = (
        "import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
        "print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'NO-TF'); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "build", "--config", str(small_config), "--target", "all", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "NO-TF" in proc.stdout
    assert "running" not in proc.stderr
    assert proc.stderr.count("cached") == 4 + 2 * len(TARGETS)


def test_a_changed_sparsity_reruns_from_prune_on_not_training(small_build, small_config, tmp_path):
    copy = build_copy(small_build, tmp_path / "out")
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_config.read_text().replace("sparsity = 0.5", "sparsity = 0.6") + NO_PTQ_CHOICE)
    proc = run_cli("build", "--config", cfg, "--target", "tflite-int8", "--out", copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = {
        line.split()[0]: line.split()[1]
        for line in proc.stderr.splitlines()
        if len(line.split()) > 1 and line.split()[1] in ("cached", "running")
    }
    assert status["data"] == "cached" and status["train"] == "cached"
    assert status["prune"] == status["qat"] == status["export:tflite-int8"] == "running"


def test_a_qat_that_breaks_the_budget_loses_to_post_training_int8_instead_of_failing_the_build(
    small_build, small_config, tmp_path
):
    copy = build_copy(small_build, tmp_path / "out")
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_config.read_text().replace("[qat]\nepochs = 1", "[qat]\nepochs = 1\nlearning_rate = 0.5"))
    proc = run_cli("build", "--config", cfg, "--target", "tflite-int8", "--out", copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: qat: the quantization-aware trained model already breaks the build's budget" in proc.stderr
    a = next(a for a in manifest(copy)["artifacts"] if a["target"] == "tflite-int8")
    assert a["status"] == "ok" and (a["made_from"], a["method"]) == ("prune", "ptq")
    scores = a["qat_or_ptq"]["scores"]
    assert scores["prune"]["closeness"] > scores["qat"]["closeness"]
    # Without the post-training choice there is nothing to fall back to: the build stops at QAT, as before.
    cfg.write_text(cfg.read_text() + "[ptq]\nchoose = false\n")
    proc = run_cli("build", "--config", cfg, "--target", "tflite-int8", "--out", copy)
    assert proc.returncode == 1 and "error: qat: the quantization-aware trained model already breaks" in proc.stderr


def test_each_tflite_artifact_is_checked_on_the_legacy_tflite_runtime(small_build):
    out, proc = small_build
    arts = {a["target"]: a for a in manifest(out)["artifacts"]}
    # TF 2.21 writes FULLY_CONNECTED v12 for dynamic-range models; tflite-runtime 2.14 has no such kernel.
    assert arts["tflite-dynamic"]["legacy_tflite_runtime"] == "fails: no FULLY_CONNECTED v12 kernel"
    assert arts["tflite-fp32"]["legacy_tflite_runtime"] == "ok"
    assert arts["tflite-int8"]["legacy_tflite_runtime"].startswith("ok")  # at most one int8 step apart
    assert "tflite-runtime 2.14" in proc.stdout
    assert all("legacy_tflite_runtime" not in a for a in arts.values() if not a["target"].startswith("tflite"))


def test_each_int8_target_keeps_qat_or_post_training_int8_whichever_agrees_better_with_the_original(small_build):
    """tflite-int8 from the QAT model, onnx-int8 and openvino-int8 from the weights QAT trained (QAT's
    distillation from the original wins back what pruning lost), each against post-training int8 of the
    pruned model: the file kept is the one closer to the original on the validation split."""
    import numpy as np

    from pipeline.stages import QAT_WEIGHTS, load_model, tf_setup

    out, _ = small_build
    arts = {a["target"]: a for a in manifest(out)["artifacts"]}
    for name in ("tflite-int8", "onnx-int8", "openvino-int8"):
        a = arts[name]
        scores = {k: v["closeness"] for k, v in a["qat_or_ptq"]["scores"].items()}
        assert set(scores) == {"qat", "prune"} and a["qat_or_ptq"]["chosen"] == max(scores, key=scores.get)
        assert a["made_from"] == a["qat_or_ptq"]["chosen"]
        qat_method = "qat" if name == "tflite-int8" else "ptq"
        assert a["method"] == (qat_method if a["made_from"] == "qat" else "ptq")
    assert arts["onnx-fp32"]["made_from"] == "prune" and "qat_or_ptq" not in arts["onnx-fp32"]
    stages = manifest(out)["stages"]
    qat_dir, prune_dir = (out / ".cache" / s / stages[s]["key"] for s in ("qat", "prune"))
    tf_setup(0)
    qat, floated, pruned = (
        load_model(qat_dir / "model.h5", qat=True),
        load_model(qat_dir / QAT_WEIGHTS),
        load_model(prune_dir / "model.h5"),
    )
    kernels = {
        w.name.split("/")[0].removeprefix("quant_"): w.numpy() for w in qat.weights if w.name.endswith("kernel:0")
    }
    assert kernels
    for layer in floated.layers:
        if layer.name in kernels:
            np.testing.assert_array_equal(layer.kernel.numpy(), kernels[layer.name])
            assert not np.array_equal(layer.kernel.numpy(), pruned.get_layer(layer.name).kernel.numpy())
            # the pruned zeros are kept
            assert np.all(layer.kernel.numpy()[pruned.get_layer(layer.name).kernel.numpy() == 0] == 0)
