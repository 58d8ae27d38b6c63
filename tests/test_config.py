import pytest

from pipeline import config
from pipeline.errors import ConfigError


def test_defaults_describe_the_digits_demo():
    cfg = config.load(None)
    assert cfg.data.source == "digits"
    assert cfg.build.targets == ("tflite-int8",)
    assert cfg.prune.sparsity == "auto"  # 0.75 for the built-in model, searched for a brought one
    assert cfg.build.max_accuracy_drop == 1.0


def test_a_toml_file_overrides_only_what_it_names(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[prune]\nsparsity = 0.5\n[build]\ntargets = ["tflite-fp32", "tflite-int8"]\nseed = 3\n')
    cfg = config.load(p)
    assert cfg.prune.sparsity == 0.5 and cfg.prune.epochs == config.PruneConfig().epochs
    assert cfg.build.targets == ("tflite-fp32", "tflite-int8") and cfg.build.seed == 3


def test_an_int_is_accepted_where_a_float_is_expected(tmp_path):
    cfg = config.from_dict({"build": {"max_accuracy_drop": 2}})
    assert cfg.build.max_accuracy_drop == 2.0 and isinstance(cfg.build.max_accuracy_drop, float)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"prune": {"sparsty": 0.5}}, "unknown key prune.sparsty (did you mean 'sparsity'?)"),
        ({"prun": {}}, "unknown section [prun] (did you mean 'prune'?)"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be int, got str 'ten'"),
        ({"train": {"epochs": True}}, "train.epochs must be int, got bool True"),
        ({"build": {"targets": "tflite-int8"}}, "build.targets must be a list of strings"),
        ({"prune": {"sparsity": 1.5}}, 'prune.sparsity must be "auto" or in [0, 1), got 1.5'),
        ({"prune": {"sparsity": "most"}}, "prune.sparsity must be \"auto\" or in [0, 1), got 'most'"),
        ({"data": {"test_fraction": 0}}, "data.test_fraction must be between 0 and 1"),
        ({"train": {"lr_schedule": "linear"}}, "train.lr_schedule must be 'constant' or 'cosine', got 'linear'"),
    ],
)
def test_bad_configs_are_rejected_with_what_is_wrong(raw, message):
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert message in str(e.value)


def test_a_missing_or_broken_file_says_which(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune\nsparsity=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_the_config_digest_ignores_which_targets_are_asked_for():
    a = config.from_dict({"build": {"targets": ["tflite-int8"]}})
    b = config.from_dict({"build": {"targets": ["tflite-fp32"]}})
    c = config.from_dict({"prune": {"sparsity": 0.5}})
    assert a.digest() == b.digest() != c.digest()


def test_the_reference_lists_every_key_with_its_default_and_is_itself_a_valid_config(tmp_path):
    ref = config.reference()
    for name, cls in config.SECTIONS.items():
        assert f"\n[{name}]\n" in ref
        for f in cls.__dataclass_fields__:
            assert f"\n{f} = " in ref
    (tmp_path / "all.toml").write_text(ref)
    assert config.load(tmp_path / "all.toml") == config.load(None)
