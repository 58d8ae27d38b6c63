"""The public API: importable without TensorFlow, and the README's example runs as written."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


def test_importing_the_package_imports_no_tensorflow_and_offers_the_promised_names():
    code = ("import sys, pipeline; "
            "names = ['build', 'built', 'bench', 'verify_on', 'release', 'verify_release', 'inspect']; "
            "assert all(callable(getattr(pipeline, n)) for n in names); "
            "print('tensorflow' in sys.modules, 'tf_keras' in sys.modules)")
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
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dist" / "digits-cnn-1.0.0" / "SHA256SUMS").is_file()
