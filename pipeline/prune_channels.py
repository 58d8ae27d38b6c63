"""Structured channel pruning for tf_keras models.

`prune_channels` removes whole Conv2D filters and Dense units (DepthwiseConv2D
channels follow their input channels) and rebuilds a genuinely smaller dense
model; nothing is left as zeros.

How it works: every tensor's last axis (its channels) belongs to a "channel
group". A Conv2D or Dense starts a new group; channel-wise layers (BN,
activations, pooling, dropout, depthwise conv) pass their input's group on;
an Add (or other element-wise merge) joins the groups of its inputs so they
get one shared keep-set. Flatten and a depthwise depth_multiplier > 1 keep the
group but change where each channel lands in the tensor ("expand" below).
A group is never pruned if it reaches the model input, a model output, a
channel-mixing activation (softmax) or a layer this module does not know.

Supported: Conv2D (groups=1), DepthwiseConv2D, Dense, BatchNormalization
(last axis), ReLU/LeakyReLU/ELU/Activation (element-wise), Dropout variants,
Max/Average/Global pooling, ZeroPadding2D/Cropping2D/UpSampling2D, Flatten,
Identity and the element-wise merges Add/Subtract/Multiply/Average/Maximum/
Minimum, all channels_last. Everything else (Lambda, Concatenate, Reshape,
SeparableConv2D, Conv2DTranspose, custom layers, nested models, shared
layers) is "unsupported": strict=True raises ValueError, otherwise the
channels touching it are left whole and it is listed in report["skipped"].

TensorFlow is imported inside the functions so that importing this module
stays cheap.
"""

import os

import numpy as np

_ELEMENTWISE_ACTIVATIONS = {
    "linear",
    "relu",
    "relu6",
    "sigmoid",
    "hard_sigmoid",
    "tanh",
    "elu",
    "selu",
    "gelu",
    "swish",
    "silu",
    "softplus",
    "softsign",
    "exponential",
    "leaky_relu",
    "mish",
    "hard_swish",
}
_PASSTHROUGH = {
    "ReLU",
    "LeakyReLU",
    "ELU",
    "ThresholdedReLU",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
    "Identity",
}
_MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
_CRITERIA = ("l1", "bn")


def _keras():
    # tfmot in the same process needs legacy Keras; tf_keras itself works either way.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras

    return tf_keras


def _layer_kinds(keras):
    """Exact classes only: Conv2DTranspose subclasses Conv2D but is not one."""
    L = keras.layers
    kinds = {
        L.Conv2D: "conv",
        L.Dense: "conv",
        L.DepthwiseConv2D: "depthwise",
        L.BatchNormalization: "bn",
        L.Flatten: "flatten",
        L.Activation: "activation",
        L.Softmax: "mixing",
    }
    for name in _PASSTHROUGH:
        if hasattr(L, name):
            kinds[getattr(L, name)] = "pass"
    for name in _MERGES:
        kinds[getattr(L, name)] = "merge"
    return kinds


def _apply(expand, keep):
    return keep if expand is None else expand(keep)


def _flatten_expand(prev, positions, width):
    # channels_last Flatten puts channel c of position p at p * width + c.
    def expand(keep):
        idx = np.asarray(_apply(prev, keep))
        return (np.arange(positions)[:, None] * width + idx[None, :]).ravel()

    return expand


def _multiplier_expand(prev, m):
    # DepthwiseConv2D output channel c * m + k comes from input channel c.
    def expand(keep):
        idx = np.asarray(_apply(prev, keep))
        return (idx[:, None] * m + np.arange(m)[None, :]).ravel()

    return expand


def _activation_name(keras, fn):
    name = keras.activations.serialize(fn)
    return name if isinstance(name, str) else None


class _Groups:
    """Union-find over channel groups."""

    def __init__(self):
        self.parent, self.width, self.frozen = [], [], []
        self.producers, self.bns = [], []

    def new(self, width, frozen=False):
        self.parent.append(len(self.parent))
        self.width.append(int(width))
        self.frozen.append(frozen)
        self.producers.append([])
        self.bns.append([])
        return len(self.parent) - 1

    def find(self, g):
        while self.parent[g] != g:
            g = self.parent[g]
        return g

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        self.parent[b] = a
        self.frozen[a] = self.frozen[a] or self.frozen[b]
        self.producers[a] += self.producers[b]
        self.bns[a] += self.bns[b]
        return a

    def freeze(self, g):
        self.frozen[self.find(g)] = True

    def roots(self):
        return [g for g in range(len(self.parent)) if self.parent[g] == g]


def _topology(keras, model):
    """(layer, inbound tensor keys) in topological order, plus the model's
    input and output keys. A tensor key is (layer name, output index): only
    layers called once get layouts, so the node index is not needed."""
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError("build the Sequential model (give it an Input) before pruning")
        entries, prev = [], ("__input__", 0)
        for layer in model.layers:
            entries.append((layer, [prev]))
            prev = (layer.name, 0)
        return entries, [("__input__", 0)], [prev]
    if not getattr(model, "_is_graph_network", False):
        raise ValueError("only Sequential and Functional models can be pruned")
    config = model.get_config()

    def keys(refs):
        refs = [refs] if refs and isinstance(refs[0], str) else refs
        return [(r[0], r[2]) for r in refs]

    entries = []
    for cfg in config["layers"]:
        nodes = cfg["inbound_nodes"]
        inbound = keys(nodes[0]) if nodes else []
        entries.append((model.get_layer(cfg["name"]), inbound))
    # get_config lists layers by depth already; re-sort to be safe.
    done, ordered = set(), []
    while entries:
        ready = [e for e in entries if all(k[0] in done for k in e[1])]
        if not ready:
            raise ValueError("could not order the model's layers")
        for e in ready:
            ordered.append(e)
            done.add(e[0].name)
        entries = [e for e in entries if e[0].name not in done]
    return ordered, keys(config["input_layers"]), keys(config["output_layers"])


def _unsupported_reason(keras, layer, kind):
    if len(layer.inbound_nodes) > 1:
        return "layer is shared (called more than once)"
    if kind is None:
        if isinstance(layer, keras.Model):
            return "nested model"
        return f"no channel mapping known for {type(layer).__name__}"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "channels_first data format"
    if kind == "conv" and getattr(layer, "groups", 1) != 1:
        return "grouped convolution"
    if kind == "bn" and list(layer.axis) not in ([-1], [len(layer.input.shape) - 1]):
        return "normalises an axis other than the last"
    return None


class _Plan:
    """Channel groups of a model and which layer reads/writes which group."""

    def __init__(self, model, strict, residual=True):
        """residual=False leaves whole the channel groups a merge joins (residual streams)."""
        keras = _keras()
        if not isinstance(model, keras.Model):
            raise TypeError("expected a tf_keras model (set TF_USE_LEGACY_KERAS=1)")
        self.model, self.groups, self.skipped = model, _Groups(), []
        self.layout = {}  # tensor key -> (group, expand)
        self.nodes = []  # (layer, kind, input layouts, output layout)
        kinds = _layer_kinds(keras)
        entries, inputs, outputs = _topology(keras, model)
        g = self.groups
        for key, tensor in zip(inputs, model.inputs):
            self.layout[key] = (g.new(tensor.shape[-1], frozen=True), None)

        for layer, inbound in entries:
            kind = kinds.get(type(layer))
            if type(layer).__name__ == "InputLayer":
                continue
            ins = [self.layout.get(k) for k in inbound]
            reason = _unsupported_reason(keras, layer, kind)
            if reason:
                if strict:
                    raise ValueError(
                        f"cannot prune channels through layer {layer.name!r} ({type(layer).__name__}): {reason}"
                    )
                self.skipped.append({"layer": layer.name, "reason": reason})
                for known in filter(None, ins):
                    g.freeze(known[0])
                continue
            # An input without a layout comes from an unsupported layer: never pruned.
            tensors = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            ins = [known or (g.new(t.shape[-1], frozen=True), None) for known, t in zip(ins, tensors)]
            grp, expand = ins[0]
            if kind == "conv":
                out = (g.new(layer.output.shape[-1]), None)
                g.producers[out[0]].append(layer.name)
                if _activation_name(keras, layer.activation) not in _ELEMENTWISE_ACTIVATIONS:
                    g.freeze(out[0])
            elif kind == "depthwise":
                m = layer.depth_multiplier
                out = (grp, expand if m == 1 else _multiplier_expand(expand, m))
                if _activation_name(keras, layer.activation) not in _ELEMENTWISE_ACTIVATIONS:
                    g.freeze(grp)
            elif kind == "flatten":
                shape = layer.input.shape
                out = (grp, _flatten_expand(expand, int(np.prod(shape[1:-1])), shape[-1]))
            elif kind == "merge":
                widths = {g.width[g.find(other)] for other, _ in ins}
                if len(widths) > 1 or any(e is not None for _, e in ins):
                    # Broadcast or re-laid-out channels: keep them whole.
                    for other, _ in ins:
                        g.freeze(other)
                else:
                    for other, _ in ins[1:]:
                        grp = g.union(grp, other)
                    if not residual:
                        g.freeze(grp)
                out = (grp, None)
            else:  # bn, pass, activation, mixing
                out = (grp, expand)
                if kind == "bn" and expand is None:
                    g.bns[g.find(grp)].append(layer.name)
                if kind == "mixing" or (
                    kind == "activation" and _activation_name(keras, layer.activation) not in _ELEMENTWISE_ACTIVATIONS
                ):
                    g.freeze(grp)
            self.layout[(layer.name, 0)] = out
            self.nodes.append((layer, kind, ins, out))

        for key in outputs:
            if key in self.layout:
                g.freeze(self.layout[key][0])

    def scores(self, criterion):
        """Per prunable group root: importance of each channel."""
        g, out = self.groups, {}
        for root in g.roots():
            if g.frozen[root] or not g.producers[root]:
                continue
            bns = [self.model.get_layer(n) for n in g.bns[root]]
            bns = [b for b in bns if b.scale]
            if criterion == "bn" and bns:
                out[root] = sum(np.abs(b.gamma.numpy()) for b in bns)
            else:  # l1, or bn without a BatchNormalization in the group
                kernels = [self.model.get_layer(n).kernel.numpy() for n in g.producers[root]]
                out[root] = sum(np.abs(k).reshape(-1, g.width[root]).sum(0) for k in kernels)
        return out

    def keep_for_fraction(self, scores, fraction, multiple=1):
        keep = {}
        for root, score in scores.items():
            width = self.groups.width[root]
            n_keep = _rounded(max(1, width - int(fraction * width + 1e-9)), multiple, width)
            keep[root] = np.sort(np.argsort(-score, kind="stable")[:n_keep])
        return keep

    def keep_from_layers(self, layer_keep):
        """Group keep-sets from {producer layer: kept output channels}."""
        g, keep = self.groups, {}
        for root in g.roots():
            given = {n: tuple(sorted(layer_keep[n])) for n in g.producers[root] if n in layer_keep}
            if not given:
                continue
            if len(set(given.values())) > 1:
                raise ValueError(f"layers {sorted(given)} share channels (they meet in a merge) and need one keep-set")
            if g.frozen[root] and len(next(iter(given.values()))) != g.width[root]:
                raise ValueError(f"channels of {sorted(given)} cannot be pruned")
            keep[root] = np.asarray(next(iter(given.values())), dtype=int)
        return keep

    def _idx(self, layout, keep):
        grp, expand = layout
        root = self.groups.find(grp)
        base = keep.get(root, np.arange(self.groups.width[root]))
        return np.asarray(_apply(expand, base))

    def weight_slices(self, keep):
        """{layer: [per weight: per-axis index arrays]} of the weights kept."""
        slices = {}
        for layer, kind, ins, out in self.nodes:
            weights = layer.get_weights()
            if not weights:
                continue
            i, o = self._idx(ins[0], keep), self._idx(out, keep)
            full = [np.arange(n) for n in weights[0].shape]
            if kind == "conv":  # kernel (..., in, out), bias (out,)
                axes = [full[:-2] + [i, o], [o]]
            elif kind == "depthwise":  # kernel (kh, kw, in, m), bias (in * m,)
                axes = [full[:2] + [i, full[3]], [o]]
            else:  # bn: gamma, beta, mean, var all (channels,)
                axes = [[i]] * len(weights)
            slices[layer.name] = axes[: len(weights)]
        return slices

    def channels(self, keep):
        """{layer: (channels before, after)} for Conv2D, DepthwiseConv2D, Dense."""
        out = {}
        for layer, kind, _, layout in self.nodes:
            if kind in ("conv", "depthwise"):
                out[layer.name] = (int(layer.output.shape[-1]), len(self._idx(layout, keep)))
        return out

    def macs_after(self, keep):
        """MAC count of the pruned model, without building it: MACs are linear
        in the input and in the output channel count of each layer."""
        total = count_macs(self.model)
        for layer, kind, ins, out in self.nodes:
            if kind in ("conv", "depthwise"):
                c_in, c_out = layer.input.shape[-1], layer.output.shape[-1]
                ratio = len(self._idx(ins[0], keep)) / c_in
                if kind == "conv":
                    ratio *= len(self._idx(out, keep)) / c_out
                total -= _layer_macs(layer) * (1 - ratio)
        return int(round(total))


def _rounded(n_keep, multiple, width):
    """n_keep to the nearest multiple of `multiple` (halves up), at least one multiple, at most width.
    Why: int8 kernels work on channel tiles (in benchmarks/prune_methods.py, 16 paid on AVX-512 x86, 8 on
    the emulated Pi 4); a layer of 20 channels costs what one of 24 does, so an unaligned count pays in
    accuracy for speed it does not get."""
    if multiple <= 1:
        return n_keep
    return min(width, max(multiple, (n_keep + multiple // 2) // multiple * multiple))


def _layer_macs(layer):
    keras = _keras()
    if type(layer) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense):
        return 0
    out_shape = layer.get_output_shape_at(0)
    positions = out_shape[1:-1]
    if any(d is None for d in positions):
        raise ValueError(f"layer {layer.name!r} has a dynamic spatial size; MACs need a fixed input shape")
    # Kernel (kh, kw, c_in/groups, c_out), (kh, kw, c_in, m) or (c_in, units):
    # each kernel weight is one MAC at each output position.
    return int(np.prod(positions, dtype=np.int64)) * int(np.prod(layer.weights[0].shape))


def count_macs(model) -> int:
    """Multiply-accumulates for one inference of one sample.

    Conv2D: H_out * W_out * kh * kw * (C_in / groups) * C_out.
    DepthwiseConv2D: H_out * W_out * kh * kw * C_in * depth_multiplier.
    Dense: (product of leading non-batch dims, 1 for a vector) * C_in * units.
    Bias adds, BatchNormalization, activations, pooling and all other layers
    are not counted; nested models are counted recursively. A layer called
    more than once is counted once (at its first call).
    """
    keras = _keras()
    total = 0
    for layer in model.layers:
        total += count_macs(layer) if isinstance(layer, keras.Model) else _layer_macs(layer)
    return total


def _check(fraction, criterion, multiple=1):
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")


def _fraction_for_macs(plan, scores, macs_fraction, multiple=1):
    before = count_macs(plan.model)

    def removed(f):
        return 1 - plan.macs_after(plan.keep_for_fraction(scores, f, multiple)) / before

    lo, hi = 0.0, 0.999
    if removed(hi) < macs_fraction:
        return hi
    # Removed MACs only grow with the channel fraction: bisect to the smallest
    # channel fraction that removes at least macs_fraction of the MACs.
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < macs_fraction else (lo, mid)
    return hi


def fraction_for_macs(model, macs_fraction: float, criterion: str = "l1", multiple: int = 1) -> float:
    """Smallest channel fraction for which prune_channels removes at least
    `macs_fraction` of count_macs(model) (or the most it can remove)."""
    _check(macs_fraction, criterion, multiple)
    plan = _Plan(model, strict=False)
    return _fraction_for_macs(plan, plan.scores(criterion), macs_fraction, multiple)


def _rebuild(model, sizes, slices, masked):
    keras = _keras()

    def clone(layer):
        config = layer.get_config()
        if layer.name in sizes:
            config["filters" if "filters" in config else "units"] = sizes[layer.name]
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name in slices:
            kept = [np.ix_(*axes) for axes in slices[layer.name]]
            if masked:
                # Every weight the pruned model drops becomes 0. A pruned
                # channel then meets only zero weights downstream, and a BN's
                # beta is zeroed too, so it can not leak a constant.
                weights = [_masked(w, ix) for w, ix in zip(weights, kept)]
            else:
                weights = [w[ix] for w, ix in zip(weights, kept)]
        new.get_layer(layer.name).set_weights(weights)
    return new


def _masked(w, ix):
    out = np.zeros_like(w)
    out[ix] = w[ix]
    return out


def prune_channels(
    model,
    fraction: float,
    criterion: str = "l1",
    strict: bool = False,
    target: str = "channels",
    residual: bool = True,
    multiple: int = 1,
):
    """Remove `fraction` of the channels of every prunable channel group.

    fraction: share of channels removed per group (rounded down, at least one
        channel kept); with target="macs" it is the share of count_macs to
        remove instead, reached by searching the channel fraction.
    criterion: "l1" ranks channels by the summed L1 norm of the filters that
        produce them (summed over all layers feeding one Add); "bn" by the
        summed |gamma| of the BatchNormalization layers on the group, falling
        back to L1 where a group has none.
    strict: raise ValueError on a layer this module can not prune through
        instead of leaving its channels whole.
    residual: also prune the channel groups an Add (or other merge) joins,
        e.g. MobileNetV2's and ResNet's residual streams; False leaves them
        whole and prunes only the channels inside the blocks.
    multiple: each pruned group keeps a multiple of this many channels (the
        nearest, at least one multiple, at most all); 1 keeps the exact count.

    Returns (new_model, report). new_model is an uncompiled tf_keras model
    with the same layer names and fresh weights. report keys: criterion,
    fraction (channel fraction used), target, params_before, params_after,
    macs_before, macs_after, layers {name: (channels_before, channels_after)},
    keep {Conv2D/Dense name: kept output channel indices} (feed it to
    masked_copy), skipped [{layer, reason}], residual, multiple.
    """
    _check(fraction, criterion, multiple)
    if target not in ("channels", "macs"):
        raise ValueError(f"target must be 'channels' or 'macs', got {target!r}")
    plan = _Plan(model, strict, residual)
    scores = plan.scores(criterion)
    channel_fraction = fraction if target == "channels" else _fraction_for_macs(plan, scores, fraction, multiple)
    keep = plan.keep_for_fraction(scores, channel_fraction, multiple)
    channels = plan.channels(keep)
    sizes = {layer.name: channels[layer.name][1] for layer, kind, _, _ in plan.nodes if kind == "conv"}
    new = _rebuild(model, sizes, plan.weight_slices(keep), masked=False)
    layer_keep = {name: plan._idx(plan.layout[(name, 0)], keep).tolist() for name in sizes}
    report = {
        "criterion": criterion,
        "fraction": channel_fraction,
        "target": target,
        "params_before": model.count_params(),
        "params_after": new.count_params(),
        "macs_before": count_macs(model),
        "macs_after": count_macs(new),
        "layers": channels,
        "keep": layer_keep,
        "skipped": plan.skipped,
        "residual": residual,
        "multiple": multiple,
    }
    return new, report


def masked_copy(model, keep):
    """Copy of `model`, same shapes, with every weight that pruning to `keep`
    ({Conv2D/Dense name: kept output channels}, e.g. report["keep"]) would
    drop set to zero: the producing filters and biases, the BatchNormalization
    gamma/beta/mean/var of those channels, and the consumers' input slices.
    Before fine-tuning it gives the same outputs as the pruned model.
    """
    plan = _Plan(model, strict=False)
    return _rebuild(model, {}, plan.weight_slices(plan.keep_from_layers(keep)), masked=True)
