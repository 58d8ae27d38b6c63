import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline.prune_channels import count_macs, fraction_for_macs, masked_copy, prune_channels

L = keras.layers


def _randomise_bn(model, rng):
    # Fresh BN layers are the identity; random statistics make slicing errors visible.
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)]
            )
    return model


def sequential_cnn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            L.Flatten(),
            L.Dense(32, activation="relu", name="fc1"),
            L.Dropout(0.5),
            L.Dense(10, activation="softmax", name="out"),
        ]
    )
    return _randomise_bn(model, np.random.default_rng(0))


def residual_model():
    keras.utils.set_random_seed(1)
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", name="stem")(x)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.ReLU()(h)
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    b = L.BatchNormalization(name="dw_bn")(b)
    b = L.ReLU()(b)
    b = L.Conv2D(8, 1, name="project")(b)
    y = L.Add(name="residual")([h, b])
    y = L.Conv2D(12, 3, padding="same", activation="relu", name="head")(y)
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(16, activation="relu", name="fc")(y)
    y = L.Dense(5, name="out")(y)
    return _randomise_bn(keras.Model(x, y), np.random.default_rng(1))


def lambda_model():
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            L.Conv2D(8, 3, name="conv1"),
            L.Lambda(lambda t: t * 2.0, name="double"),
            L.Conv2D(8, 3, name="conv2"),
            L.Flatten(),
            L.Dense(4, name="out"),
        ]
    )


def _inputs(model, n=4, seed=0):
    shape = (n,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _predict(model, x):
    return model(x, training=False).numpy()


@pytest.fixture(scope="module", params=[sequential_cnn, residual_model], ids=["sequential", "residual"])
def pruned_half(request):
    model = request.param()
    new, report = prune_channels(model, 0.5)
    return model, new, report


def test_pruned_model_gives_the_same_outputs_as_the_masked_original(pruned_half):
    model, new, report = pruned_half
    x = _inputs(model)
    masked = masked_copy(model, report["keep"])
    np.testing.assert_allclose(_predict(new, x), _predict(masked, x), atol=1e-5)
    # Masking must actually change the model, else the check above proves nothing.
    assert np.abs(_predict(model, x) - _predict(masked, x)).max() > 1e-3


def test_pruned_model_keeps_the_output_shape(pruned_half):
    model, new, _ = pruned_half
    assert new.output_shape == model.output_shape
    assert _predict(new, _inputs(model)).shape == _predict(model, _inputs(model)).shape


def test_sequential_cnn_loses_the_expected_params_and_macs():
    model = sequential_cnn()
    new, report = prune_channels(model, 0.5)
    assert report["layers"] == {"conv1": (8, 4), "conv2": (16, 8), "fc1": (32, 16), "out": (10, 10)}
    # 8x8x1 -> conv1 4 -> bn 4 -> pool 4x4 -> conv2 8 -> flatten 128 -> fc1 16 -> out 10
    expected = (9 * 1 * 4 + 4) + 4 * 4 + (9 * 4 * 8 + 8) + (128 * 16 + 16) + (16 * 10 + 10)
    assert report["params_after"] == new.count_params() == expected
    assert report["params_before"] == model.count_params()
    macs = 64 * 9 * 1 * 4 + 16 * 9 * 4 * 8 + 128 * 16 + 16 * 10
    assert report["macs_after"] == count_macs(new) == macs
    assert report["macs_before"] == 64 * 9 * 8 + 16 * 9 * 8 * 16 + 256 * 32 + 32 * 10


def test_residual_add_prunes_its_branches_with_one_keep_set_and_loses_the_expected_macs():
    model = residual_model()
    new, report = prune_channels(model, 0.5)
    assert report["keep"]["stem"] == report["keep"]["project"]
    assert report["layers"] == {
        "stem": (8, 4),
        "dw": (8, 4),
        "project": (8, 4),
        "head": (12, 6),
        "fc": (16, 8),
        "out": (5, 5),
    }
    macs = 64 * (9 * 3 * 4 + 9 * 4 + 4 * 4 + 9 * 4 * 6) + 6 * 8 + 8 * 5
    assert report["macs_after"] == count_macs(new) == macs
    assert report["params_after"] < 0.5 * report["params_before"]


def test_add_group_is_ranked_by_the_summed_l1_norm_of_its_producers():
    model = residual_model()
    stem, project = model.get_layer("stem"), model.get_layer("project")
    k1, k2 = stem.kernel.numpy(), project.kernel.numpy()
    k1[..., :4] *= 0.01  # weak in stem, strong in project: the sum decides
    k2[..., :4] *= 100.0
    k2[..., 4:] *= 0.001
    stem.kernel.assign(k1)
    project.kernel.assign(k2)
    score = np.abs(k1).reshape(-1, 8).sum(0) + np.abs(k2).reshape(-1, 8).sum(0)
    _, report = prune_channels(model, 0.5)
    assert report["keep"]["stem"] == sorted(np.argsort(-score)[:4].tolist())


def test_bn_criterion_keeps_the_channels_with_the_largest_gamma():
    model = sequential_cnn()
    bn = model.get_layer("bn1")
    weights = bn.get_weights()
    weights[0] = np.array([0.1, 2.0, 0.2, 3.0, 0.3, 4.0, 0.4, 5.0])
    bn.set_weights(weights)
    _, report = prune_channels(model, 0.5, criterion="bn")
    assert report["keep"]["conv1"] == [1, 3, 5, 7]


@pytest.mark.parametrize("build", [sequential_cnn, residual_model], ids=["sequential", "residual"])
def test_fraction_zero_gives_identical_outputs_and_param_count(build):
    model = build()
    new, report = prune_channels(model, 0.0)
    x = _inputs(model)
    np.testing.assert_allclose(_predict(new, x), _predict(model, x), rtol=0, atol=1e-7)
    assert new.count_params() == model.count_params() == report["params_after"]


def test_lambda_layer_raises_a_value_error_naming_it_when_strict():
    with pytest.raises(ValueError, match="double"):
        prune_channels(lambda_model(), 0.5, strict=True)


def test_lambda_layer_is_left_unpruned_and_reported_when_not_strict():
    model = lambda_model()
    new, report = prune_channels(model, 0.5)
    assert [s["layer"] for s in report["skipped"]] == ["double"]
    assert report["layers"] == {"conv1": (8, 8), "conv2": (8, 4), "out": (4, 4)}
    x = _inputs(model)
    np.testing.assert_allclose(_predict(new, x), _predict(masked_copy(model, report["keep"]), x), atol=1e-5)


@pytest.mark.parametrize(
    "multiple, expected",
    [
        (1, {"conv1": (8, 4), "conv2": (16, 7), "fc1": (32, 13)}),
        # nearest multiple, halves up; never fewer than one multiple, never more than the layer has
        (4, {"conv1": (8, 4), "conv2": (16, 8), "fc1": (32, 12)}),
        (16, {"conv1": (8, 8), "conv2": (16, 16), "fc1": (32, 16)}),
    ],
)
def test_multiple_keeps_a_multiple_of_that_many_channels_in_every_pruned_layer(multiple, expected):
    model = sequential_cnn()
    new, report = prune_channels(model, 0.6, multiple=multiple)
    assert report["layers"] == {**expected, "out": (10, 10)}
    assert report["macs_after"] == count_macs(new)
    x = _inputs(model)
    np.testing.assert_allclose(_predict(new, x), _predict(masked_copy(model, report["keep"]), x), atol=1e-5)


def test_macs_target_with_a_multiple_still_removes_at_least_the_requested_share():
    model = residual_model()
    _, report = prune_channels(model, 0.4, target="macs", multiple=4)
    assert report["macs_after"] <= 0.6 * report["macs_before"]
    assert all(after % 4 == 0 or after == before for before, after in report["layers"].values())


def test_macs_target_removes_at_least_the_requested_share_of_macs():
    model = sequential_cnn()
    fraction = fraction_for_macs(model, 0.5)
    _, report = prune_channels(model, 0.5, target="macs")
    assert report["fraction"] == pytest.approx(fraction)
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    # A slightly smaller channel fraction must not reach the target: the search is tight.
    _, less = prune_channels(model, max(0.0, fraction - 0.01))
    assert less["macs_after"] > 0.5 * less["macs_before"]


def test_pruned_model_runs_in_litert_with_the_keras_outputs(pruned_half):
    from ai_edge_litert.interpreter import Interpreter

    model, new, _ = pruned_half
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(new).convert()
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], (1,) + tuple(model.input_shape[1:]))
    interpreter.allocate_tensors()
    x = _inputs(model, n=3, seed=5)
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(out["index"]), _predict(new, sample[None]), atol=1e-4)


def test_importing_the_module_does_not_import_tensorflow():
    import subprocess

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import pipeline.prune_channels; "
        "assert 'tensorflow' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code, root], check=True)
