"""The public API: importable without TensorFlow, and the README's example runs as written."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


def test_importing_the_package_imports_no_tensorflow_and_offers_the_promised_names():
    code = (
        "import sys, pipeline; "
        "names = ['build', 'built', 'bench', 'verify_on', 'release', 'verify_release', 'inspect']; "
        "assert all(callable(getattr(pipeline, n)) for n in names); "
        "print('tensorflow' in sys.modules, 'tf_keras' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_overrides_are_checked_like_a_config_file():
    import pipeline
    from pipeline.errors import ConfigError

    assert pipeline.load_config(overrides={"prune.sparsity": 0.5}).prune.sparsity == 0.5
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        pipeline.load_config(overrides={"prune.sparsty": 0.5})
    with pytest.raises(ConfigError, match="prune.sparsity must be"):
        pipeline.load_config(overrides={"prune.sparsity": 2.0})


@pytest.mark.slow
def test_the_readme_python_api_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dist" / "digits-cnn-1.0.0" / "SHA256SUMS").is_file()


def test_a_stage_no_longer_in_the_cache_is_a_one_line_error(tmp_path):
    import pipeline
    from pipeline.errors import UsageError

    b = pipeline.Build(tmp_path, pipeline.load_config(), [], {"stages": {"data": {"key": "0" * 32}}})
    with pytest.raises(UsageError, match="data stage of the build .* not in its cache"):
        b.eval_inputs()
    with pytest.raises(UsageError, match="qat stage"):
        b.stage_file("qat", "model.h5")


@pytest.mark.slow
def test_a_builds_stage_files_and_a_copy_of_its_artifact_verify_as_the_build_did(small_build, small_config, tmp_path):
    import shutil

    import numpy as np
    from conftest import seed_cache

    import pipeline
    from pipeline.errors import UsageError
    from targets import TARGETS

    out = seed_cache(small_build, tmp_path / "out", ("data", "train", "prune"))  # this build exports and verifies
    b = pipeline.build(small_config, targets=["tflite-fp32"], out=out)
    art = b.artifacts["tflite-fp32"]
    assert art.status == "ok"
    x_cal, x_test = np.load(b.stage_file("data", "x_cal.npy")), np.load(b.eval_inputs())
    assert x_cal.shape[1:] == x_test.shape[1:] == tuple(b.manifest["stages"]["data"]["input_shape"])
    assert b.stage_file("train", "model.h5").stat().st_size > 0
    with pytest.raises(UsageError, match="has no file nothing.npy"):
        b.stage_file("data", "nothing.npy")
    copy = tmp_path / "elsewhere" / "model.tflite"
    copy.parent.mkdir()
    shutil.copy(art.path, copy)
    result = b.verify_file(TARGETS["tflite-fp32"], copy)
    assert result["status"] == "ok"
    assert (result["accuracy"], result["top1_agreement"]) == (art["accuracy"], art["top1_agreement"])
