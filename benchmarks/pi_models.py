"""The architectures of the published Raspberry Pi latency points, rebuilt here as fp32 and int8 .tflite.

Weights do not decide latency (dense kernels multiply whatever they hold), so every model is built
with random weights and quantized with random calibration inputs in the range a real preprocessed
image has ([-1, 1]). Written once into a folder, reused by benchmarks/pi_latency.py.

    python -m benchmarks.pi_models OUT_DIR [NAME ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZE = 224  # every published point here is at 224x224x3


def mobilenet_v1():
    import tf_keras as keras

    return keras.applications.MobileNet(input_shape=(SIZE, SIZE, 3), weights=None, classes=1000)


def mobilenet_v2():
    import tf_keras as keras

    return keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None, classes=1000)


def mobilenet_v3_large():
    import tf_keras as keras

    # XNNPACK's end2end models take the preprocessed tensor: no Rescaling layer in front
    return keras.applications.MobileNetV3Large(
        input_shape=(SIZE, SIZE, 3), weights=None, classes=1000, include_preprocessing=False
    )


def mobilenet_v3_small():
    import tf_keras as keras

    return keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), weights=None, classes=1000, include_preprocessing=False
    )


def efficientnet_lite0():
    """EfficientNet-Lite0 as TensorFlow's efficientnet_lite_builder defines it: EfficientNet-B0's
    blocks without squeeze-and-excitation, ReLU6 instead of swish, stem and head not scaled."""
    import tf_keras as keras
    from tf_keras import layers

    def act(x):
        return layers.ReLU(6.0)(x)

    def conv_bn(x, filters, kernel, stride=1):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False)(x)
        return act(layers.BatchNormalization()(x))

    # (repeats, kernel, stride, expand ratio, input filters, output filters) of B0
    blocks = [
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    ]
    inp = keras.Input((SIZE, SIZE, 3))
    x = conv_bn(inp, 32, 3, 2)
    for repeats, kernel, stride, expand, f_in, f_out in blocks:
        for i in range(repeats):
            s, c_in = (stride, f_in) if i == 0 else (1, f_out)
            y = conv_bn(x, c_in * expand, 1) if expand != 1 else x
            y = layers.DepthwiseConv2D(kernel, s, padding="same", use_bias=False)(y)
            y = act(layers.BatchNormalization()(y))
            y = layers.BatchNormalization()(layers.Conv2D(f_out, 1, use_bias=False)(y))
            x = layers.Add()([x, y]) if s == 1 and c_in == f_out else y
    x = conv_bn(x, 1280, 1)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(1000, activation="softmax")(x)
    return keras.Model(inp, out, name="efficientnet_lite0")


def _resnet(blocks: list[int], bottleneck: bool, name: str):
    """torchvision's ResNet (as microsoft/resnet-18 and -50 on Hugging Face): the stride of a
    bottleneck block on its 3x3 convolution (v1.5)."""
    import tf_keras as keras
    from tf_keras import layers

    def conv_bn(x, filters, kernel, stride=1, relu=True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    inp = keras.Input((SIZE, SIZE, 3))
    x = layers.MaxPooling2D(3, 2, padding="same")(conv_bn(inp, 64, 7, 2))
    for stage, repeats in enumerate(blocks):
        width = 64 * 2**stage
        for i in range(repeats):
            stride = 2 if stage and not i else 1
            out = width * 4 if bottleneck else width
            if bottleneck:
                y = conv_bn(conv_bn(conv_bn(x, width, 1), width, 3, stride), out, 1, relu=False)
            else:
                y = conv_bn(conv_bn(x, width, 3, stride), width, 3, relu=False)
            short = conv_bn(x, out, 1, stride, relu=False) if stride != 1 or x.shape[-1] != out else x
            x = layers.ReLU()(layers.Add()([short, y]))
    out = layers.Dense(1000, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name=name)


def resnet18():
    return _resnet([2, 2, 2, 2], False, "resnet18")


def resnet50():
    return _resnet([3, 4, 6, 3], True, "resnet50")


def squeezenet1_1():
    """torchvision's SqueezeNet 1.1 (its max pools round up, Keras' down: a few rows differ)."""
    import tf_keras as keras
    from tf_keras import layers

    def fire(x, squeeze, expand):
        s = layers.Conv2D(squeeze, 1, activation="relu")(x)
        e1 = layers.Conv2D(expand, 1, activation="relu")(s)
        e3 = layers.Conv2D(expand, 3, padding="same", activation="relu")(s)
        return layers.Concatenate()([e1, e3])

    inp = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(64, 3, 2, activation="relu")(inp)
    for squeeze, expand, pool in ((16, 64, True), (32, 128, True), (48, 192, True), (64, 256, False)):
        x = layers.MaxPooling2D(3, 2)(x) if pool else x
        x = fire(fire(x, squeeze, expand), squeeze, expand)
    x = layers.Conv2D(1000, 1, activation="relu")(x)
    out = layers.Softmax()(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="squeezenet1_1")


MODELS = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
    "efficientnet_lite0": efficientnet_lite0,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "squeezenet1_1": squeezenet1_1,
}


def write(out: Path, name: str) -> dict[str, Path]:
    """fp32 and full-int8 (int8 input and output) .tflite of `name` under out/; existing files kept."""
    paths = {dtype: out / f"{name}-{dtype}.tflite" for dtype in ("fp32", "int8")}
    if all(p.exists() for p in paths.values()):
        return paths
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (8, SIZE, SIZE, 3)).astype(np.float32)
    for dtype, path in paths.items():
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if dtype == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([x[None]] for x in calib)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(conv.convert())
        tmp.rename(path)
    np.save(out / f"{name}-inputs.npy", calib[:2])
    return paths


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for n in sys.argv[2:] or MODELS:
        print(n, {k: str(v) for k, v in write(folder, n).items()}, flush=True)
