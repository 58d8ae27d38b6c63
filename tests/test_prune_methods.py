"""prune.method: unstructured (tfmot magnitude), channels (a smaller dense model), block (sparse .tflite)."""

import json
import os
import warnings

import pytest
from conftest import NO_PTQ_CHOICE, run_cli, seed_cache

from pipeline import cli, config
from pipeline.cli import options
from pipeline.errors import ConfigError, UsageError

TFLITE = "tflite-fp32,tflite-fp16,tflite-dynamic,tflite-int8"


def manifest(out, name="tiny-digits"):
    m = json.loads((out / name / "manifest.json").read_text())
    return m, {a["target"]: a for a in m["artifacts"]}


# -- config and command line (fast) ------------------------------------------------------------


def test_the_new_keys_default_to_todays_unstructured_pruning():
    p = config.load(None).prune
    assert p.method == "unstructured" and p.sparsity == "auto"
    assert (p.channels_fraction, p.channels_target, p.channels_criterion) == (0.5, "channels", "l1")
    assert p.channels_residual is False and p.channels_multiple == 8
    assert p.block_size == (4, 1) and p.block_m_by_n == ()


def test_good_values_of_the_new_keys_are_accepted():
    p = config.from_dict(
        {
            "prune": {
                "method": "channels",
                "channels_fraction": 0.3,
                "channels_target": "macs",
                "channels_criterion": "bn",
                "channels_residual": True,
                "channels_multiple": 16,
                "block_size": [1, 16],
                "block_m_by_n": [2, 4],
            }
        }
    ).prune
    assert p.channels_residual is True and p.channels_multiple == 16
    assert (p.method, p.channels_fraction, p.channels_target, p.channels_criterion) == ("channels", 0.3, "macs", "bn")
    assert p.block_size == (1, 16) and p.block_m_by_n == (2, 4)


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"method": "filters"},
            "prune.method must be 'unstructured' or 'channels' or 'block' or 'none', got 'filters'",
        ),
        ({"method": 3}, "prune.method must be str"),
        ({"channels_fraction": 1.0}, "prune.channels_fraction must be in [0, 1), got 1.0"),
        ({"channels_fraction": -0.1}, "prune.channels_fraction must be in [0, 1)"),
        ({"channels_target": "flops"}, "prune.channels_target must be 'channels' or 'macs', got 'flops'"),
        ({"channels_criterion": "l2"}, "prune.channels_criterion must be 'l1' or 'bn', got 'l2'"),
        ({"block_size": [4]}, "prune.block_size must be [rows, cols] of positive integers, got (4,)"),
        ({"block_size": [0, 4]}, "prune.block_size must be [rows, cols] of positive integers"),
        ({"block_size": [1.5, 4]}, "prune.block_size must be a list of integers"),
        ({"block_m_by_n": [4, 2]}, "prune.block_m_by_n must be empty or [m, n] with 0 < m < n, got (4, 2)"),
        ({"block_m_by_n": [2, 4, 8]}, "prune.block_m_by_n must be empty or [m, n]"),
        ({"channels_residual": "yes"}, "prune.channels_residual must be bool, got str 'yes'"),
        ({"channels_multiple": 0}, "prune.channels_multiple must be at least 1, got 0"),
        ({"channel_fraction": 0.5}, "unknown key prune.channel_fraction (did you mean 'channels_fraction'?)"),
    ],
)
def test_bad_values_of_the_new_keys_are_rejected_with_what_is_wrong(raw, message):
    with pytest.raises(ConfigError) as e:
        config.from_dict({"prune": raw})
    assert message in str(e.value)


def test_the_prune_flag_sets_the_method_over_the_config_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[prune]\nmethod = "block"\nchannels_fraction = 0.25\n')
    args = cli.parser().parse_args(["build", "--config", str(f), "--prune", "channels"])
    cfg = options.load_config(args)
    assert cfg.prune.method == "channels" and cfg.prune.channels_fraction == 0.25
    assert options.load_config(cli.parser().parse_args(["build", "--config", str(f)])).prune.method == "block"
    with pytest.raises(UsageError, match="invalid choice: 'filters'"):
        cli.parser().parse_args(["build", "--prune", "filters"])


def test_an_unknown_prune_flag_is_one_error_line_and_writes_nothing(tmp_path):
    proc = run_cli("build", "--prune", "filters", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "--prune" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_residual_false_keeps_the_channels_an_add_joins_whole_and_prunes_the_rest():
    from test_prune_channels import residual_model

    from pipeline.prune_channels import prune_channels

    new, report = prune_channels(residual_model(), 0.5, residual=False)
    # stem and project feed one Add (the depthwise conv follows stem's channels): left whole.
    assert report["layers"] == {
        "stem": (8, 8),
        "dw": (8, 8),
        "project": (8, 8),
        "head": (12, 6),
        "fc": (16, 8),
        "out": (5, 5),
    }
    assert report["residual"] is False and report["macs_after"] < report["macs_before"]
    _, everything = prune_channels(residual_model(), 0.5)
    assert everything["layers"]["project"] == (8, 4) and everything["residual"] is True


def test_the_prune_line_says_what_pruning_changed_and_leaves_out_what_it_did_not():
    from pipeline.report import prune_summary

    trained = {"accuracy": 0.98}
    channels = {
        "method": "channels",
        "params_before": 40394,
        "params_after": 10346,
        "macs_before": 616064,
        "macs_after": 156480,
        "sparsity": 0.0,
        "accuracy": 0.9756,
    }
    assert prune_summary(trained, channels) == (
        "prune: channels, params 40,394 -> 10,346 (0.26x), "
        "MACs 616,064 -> 156,480 (0.25x), float accuracy 0.9800 -> 0.9756"
    )
    zeros = {
        "method": "unstructured",
        "params_before": 40394,
        "params_after": 40394,
        "macs_before": 616064,
        "macs_after": 616064,
        "sparsity": 0.7502,
        "accuracy": 0.9778,
    }
    assert prune_summary({"accuracy": None}, zeros) == "prune: unstructured, 75.0% of the weights zero"
    nothing = {"method": "unstructured", "sparsity": 0.0, "pruned_layers": 0, "weights_changed": False}
    assert prune_summary({"accuracy": None}, nothing) == "prune: unstructured, nothing pruned, the model as it was"


# -- end to end (tiny model) -------------------------------------------------------------------


def trained(small_build, small_config, out):
    """`out` with only the shared build's data and train stages in its cache: the method under test runs from prune
    on; and a config without the post-training choice (tests/test_ptq.py's) beside it."""
    seed_cache(small_build, out)
    cfg = out / "c.toml"
    cfg.write_text(small_config.read_text() + NO_PTQ_CHOICE)
    return cfg


@pytest.mark.slow
def test_channels_gives_a_smaller_model_recorded_in_the_manifest_and_every_tflite_target_ok(
    small_build, tmp_path, small_config
):
    cfg = trained(small_build, small_config, tmp_path)
    proc = run_cli("build", "--config", cfg, "--prune", "channels", "--target", TFLITE, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{'train':<24} cached" in proc.stderr
    m, arts = manifest(tmp_path)
    p = m["stages"]["prune"]
    assert p["method"] == "channels" and m["config"]["prune"]["method"] == "channels"
    assert p["params_after"] < 0.5 * p["params_before"] and p["macs_after"] < 0.5 * p["macs_before"]
    # Every conv / dense layer lost half its channels but the classifier (its 10 classes) and the 8-filter first
    # conv: half would be 4, and prune.channels_multiple (8) keeps at least one multiple.
    assert p["channels"]["dense_1"] == [10, 10] and p["channels"]["conv2d"] == [8, 8] and p["multiple"] == 8
    halved = [name for name, (before, after) in p["channels"].items() if after == before // 2]
    assert len(halved) == 3 and p["fallbacks"] == []
    assert p["sparsity"] == 0.0  # smaller and dense: nothing for QAT to keep
    assert (
        f"prune: channels, params {p['params_before']:,} -> {p['params_after']:,}" in proc.stderr
        and f"MACs {p['macs_before']:,} -> {p['macs_after']:,}" in proc.stderr
    )
    for t in TFLITE.split(","):
        assert arts[t]["status"] == "ok", (t, arts[t].get("reason"))
    assert arts["tflite-int8"]["quantization"] == "int8"


@pytest.mark.slow
def test_block_gives_a_tflite_whose_sparse_encoding_and_zeros_are_read_back(small_build, tmp_path, small_config):
    cfg = trained(small_build, small_config, tmp_path)
    proc = run_cli(
        "build", "--config", cfg, "--prune", "block", "--target", "tflite-fp32,tflite-int8", "--out", tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m, arts = manifest(tmp_path)
    p = m["stages"]["prune"]
    assert p["sparse_encoding"] is True and p["patterns"]["4x1 blocks"] == ["dense", "dense_1"]
    assert p["params_after"] == p["params_before"] and p["nonzero_params_after"] < 0.6 * p["nonzero_params_before"]
    fp32 = run_cli("inspect", tmp_path / arts["tflite-fp32"]["path"], "--json")
    info = json.loads(fp32.stdout)
    assert info["sparse_tensors"] == 5 and info["ops"]["DENSIFY"] == 3  # 3 conv kernels behind DENSIFY, 2 FC
    assert info["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert arts["tflite-fp32"]["status"] == "ok" and arts["tflite-fp32"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    # int8 stays densely encoded (LiteRT's XNNPACK refuses sparse int8); PQAT kept the zeros.
    int8 = json.loads(run_cli("inspect", tmp_path / arts["tflite-int8"]["path"], "--json").stdout)
    assert int8["sparse_tensors"] == 0 and int8["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert arts["tflite-int8"]["status"] == "ok"


def _model_with_a_reshape(path):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras as keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    h = L.Reshape((8, 8, 8), name="odd_reshape")(h)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="conv_b")(h)
    h = L.Flatten()(h)
    y = L.Dense(10, activation="softmax", name="classes")(h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 file ... legacy": the format users bring
        keras.Model(x, y).save(path)


@pytest.mark.slow
def test_a_layer_channels_cannot_go_through_is_named_under_strict_and_recorded_otherwise(tmp_path, small_config):
    _model_with_a_reshape(tmp_path / "m.h5")
    args = ["--config", small_config, "--model", tmp_path / "m.h5", "--prune", "channels", "--target", "tflite-fp32"]
    strict = run_cli("build", *args, "--strict", "--out", tmp_path / "strict")
    assert strict.returncode == 2, strict.stderr[-2000:]
    assert "'odd_reshape' (Reshape)" in strict.stderr and "--strict forbids the fallback" in strict.stderr
    assert "Traceback" not in strict.stderr

    proc = run_cli("build", *args, "--out", tmp_path / "lenient")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m, arts = manifest(tmp_path / "lenient")
    p = m["stages"]["prune"]
    assert any("'odd_reshape' (Reshape)" in f for f in p["fallbacks"])
    assert p["channels"]["conv_a"] == [8, 8] and p["channels"]["conv_b"] == [16, 8]  # left whole / pruned
    assert arts["tflite-fp32"]["status"] == "ok" and arts["tflite-fp32"]["fallbacks"] == p["fallbacks"]
