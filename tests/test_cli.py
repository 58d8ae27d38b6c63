import subprocess
import sys
import time

from conftest import ROOT, run_cli


def test_help_answers_fast_without_importing_tensorflow():
    code = (
        "import sys, pipeline.cli as c; c.parser().format_help(); c.main(['targets']); "
        "print('tensorflow' in sys.modules, 'tf_keras' in sys.modules, 'numpy' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split()[-3:] == ["False", "False", "False"], proc.stderr
    t0 = time.perf_counter()
    proc = run_cli("--help")
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0 and "build" in proc.stdout
    assert elapsed < 2.0


def test_targets_lists_every_registered_target():
    from targets import TARGETS

    proc = run_cli("targets")
    assert proc.returncode == 0
    for name in TARGETS:
        assert name in proc.stdout


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0]


def test_an_unknown_target_suggests_the_closest_and_writes_nothing(tmp_path):
    proc = run_cli("build", "--target", "tflite-int9", "--out", tmp_path / "out")
    _assert_one_line_error(proc, "unknown target 'tflite-int9'", "did you mean 'tflite-int8'")
    assert not (tmp_path / "out").exists()


def test_an_unknown_config_key_is_named_and_nothing_is_written(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[prune]\nsparsty = 0.5\n")
    proc = run_cli("build", "--config", cfg, "--out", tmp_path / "out")
    _assert_one_line_error(proc, "unknown key prune.sparsty", "did you mean 'sparsity'")
    assert not (tmp_path / "out").exists()


def test_an_ill_typed_config_value_is_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 'many'\n")
    _assert_one_line_error(run_cli("build", "--config", cfg, "--out", tmp_path / "out"), "train.epochs must be int")


def test_a_missing_config_file_is_named(tmp_path):
    proc = run_cli("build", "--config", tmp_path / "missing.toml", "--out", tmp_path / "out")
    _assert_one_line_error(proc, "config file not found", "missing.toml")


def test_an_unknown_option_is_one_line_too():
    _assert_one_line_error(run_cli("build", "--tagret", "tflite-int8"), "unrecognized arguments")


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_one_line_error(run_cli("build", "--out", blocker / "out"), "cannot be written")


def test_an_out_folder_that_cannot_be_created_is_the_unwritable_line(tmp_path):
    proc = run_cli("build", "--out", "/proc/edge-export-out")
    _assert_one_line_error(proc, "/proc/edge-export-out cannot be written", "--out")
