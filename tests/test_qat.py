"""The QAT stage's helpers on a real tfmot model: ranges start from the data, weights go back to float."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from pipeline.stages import calibrate_ranges, float_weights

L = keras.layers


def small_cnn():
    keras.backend.clear_session()  # layer names (quantize_layer, ...) must not depend on what this worker ran before
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(name="relu"),
            L.Flatten(name="flat"),
            L.Dense(4, name="fc"),
        ]
    )
    bn = model.get_layer("bn")
    bn.set_weights([np.full(8, 2.0), np.full(8, 0.5), np.full(8, 0.1), np.full(8, 4.0)])
    return model


def qat_model(model):
    return tfmot.quantization.keras.quantize_apply(tfmot.quantization.keras.quantize_annotate_model(model))


def test_calibrated_ranges_are_the_data_min_and_max_of_the_deployed_model_not_tfmots_six():
    model = small_cnn()
    q = qat_model(model)
    x = np.random.default_rng(0).normal(0, 1, (70, 8, 8, 1)).astype(np.float32)  # 3 batches, the last short
    calibrate_ranges(q, x)
    ranges = {w.name: w.numpy() for w in q.non_trainable_weights if w.name.endswith(("_min:0", "_max:0"))}
    # The input's range covers every sample (not only the last batch), and includes 0 as TFLite needs.
    assert ranges["quantize_layer/quantize_layer_min:0"] == min(x.min(), 0)
    assert ranges["quantize_layer/quantize_layer_max:0"] == max(x.max(), 0)
    # After conv + batch norm (its trained statistics, not the batch's) + ReLU: the float model's own range.
    relu = keras.Model(model.input, model.get_layer("relu").output)(x, training=False).numpy()
    (act_max,) = [v for k, v in ranges.items() if k.startswith("quant_relu/") and k.endswith("_max:0")]
    np.testing.assert_allclose(act_max, relu.max(), rtol=0.02)  # the conv's own weights are fake-quantized
    assert relu.max() < 5.0  # far from tfmot's starting 6, so the check means something
    fc = keras.Model(model.input, model.get_layer("fc").output)(x, training=False).numpy()
    (fc_min,) = [v for k, v in ranges.items() if k.startswith("quant_fc/") and k.endswith("post_activation_min:0")]
    np.testing.assert_allclose(fc_min, fc.min(), rtol=0.05)
    # Weight ranges are not touched, and the batch-norm statistics are the trained ones.
    np.testing.assert_array_equal(q.get_layer("quant_bn").layer.moving_variance.numpy(), np.full(8, 4.0))


def test_float_weights_carry_what_qat_trained_into_the_float_model():
    model = small_cnn()
    q = qat_model(model)
    kernel = next(w for w in q.weights if w.name == "conv/kernel:0")
    kernel.assign(kernel.numpy() + 1.0)  # as if fine-tuned
    floated = float_weights(q, small_cnn())
    np.testing.assert_array_equal(floated.get_layer("conv").kernel.numpy(), kernel.numpy())
    np.testing.assert_array_equal(floated.get_layer("bn").moving_variance.numpy(), np.full(8, 4.0))
    assert not np.array_equal(floated.get_layer("conv").kernel.numpy(), small_cnn().get_layer("conv").kernel.numpy())


def vanishing_cnn():
    """Activations that shrink to ~1e-35 before the last layer, as in a MobileNetV2 with its initial weights
    (batch norm statistics 0 / 1, every block smaller): calibration then sees a range of almost no width."""
    model = small_cnn()
    model.get_layer("bn").set_weights([np.full(8, 1e-35), np.zeros(8), np.zeros(8), np.ones(8)])
    return model


def test_a_range_calibration_cannot_resolve_keeps_tfmots_and_qat_stays_finite():
    from pipeline.stages import MIN_RANGE

    model = vanishing_cnn()
    q = qat_model(model)
    x = np.random.default_rng(0).normal(0, 1, (32, 8, 8, 1)).astype(np.float32)
    calibrate_ranges(q, x)
    fc = {w.name: float(w.numpy()) for w in q.get_layer("quant_fc").weights if "post_activation_m" in w.name}
    assert fc["quant_fc/post_activation_max:0"] - fc["quant_fc/post_activation_min:0"] >= MIN_RANGE
    # What QAT's first step runs: batch norm frozen (inference mode), ranges updated from the batch.
    for layer in q.layers:
        if isinstance(getattr(layer, "layer", None), L.BatchNormalization):
            layer.layer.trainable = False
    assert np.isfinite(q(x, training=True).numpy()).all()
