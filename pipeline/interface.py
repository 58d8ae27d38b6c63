"""The user's model interface: input/output names, shapes and layout, and the way back to it.

Inside the pipeline, image-like arrays are channels-last (NHWC): what Keras, tfmot and TFLite
work in, and what onnx2tf turns an ONNX model into. A user's ONNX model is channels-first (NCHW,
as PyTorch exports it). This module reads that interface from the file (onnx only, no TensorFlow),
says how an array moves between the two layouts, and restores the original interface on a graph
converted through Keras (names, NCHW via a Transpose at the edges, a free batch dimension).

An artifact records its interface as `input_perms` (per input, the axes permutation that takes an
internal channels-last array to the artifact's input, or None) and `output_perms` (per output, the permutation that
takes the artifact's output back to the internal layout, or None): verification, bench and the
release's test vectors feed every artifact in its own layout with these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ModelLoadError
from targets import detect

LAYOUTS = {3: ("NCW", "NWC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}


def to_last(rank: int) -> list[int]:
    """channels-first -> channels-last: (0, 2, ..., r-1, 1)."""
    return [0, *range(2, rank), 1]


def to_first(rank: int) -> list[int]:
    """channels-last -> channels-first: (0, r-1, 1, ..., r-2)."""
    return [0, rank - 1, *range(1, rank - 1)]


def layout_of(rank: int, channels_first: bool) -> str:
    if rank not in LAYOUTS:
        return "N..."
    return LAYOUTS[rank][0 if channels_first else 1]


def _dims(value_info) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in value_info.type.tensor_type.shape.dim
    ]


def load_onnx(path: str | Path):
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(m)
    except Exception as e:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    return m


def onnx_interface(path: str | Path) -> dict:
    """{"inputs": [{name, shape, dtype, layout}], "outputs": [{name, shape, dtype}]}; shape None = dynamic.

    onnx2tf makes every rank-3..5 input channels-last, so such an input is the user's channels-first layout."""
    import onnx

    m = load_onnx(path)
    init = {i.name for i in m.graph.initializer}

    def port(v, with_layout):
        shape = _dims(v)
        p = {
            "name": v.name,
            "shape": shape,
            "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)),
        }
        if with_layout:
            p["layout"] = layout_of(len(shape), channels_first=True)
        return p

    inputs = [v for v in m.graph.input if v.name not in init]
    # Several inputs are taken as they are (no Keras conversion, see interface_export): no layout to change.
    return {
        "inputs": [{**port(v, True), **({"layout": "as given"} if len(inputs) > 1 else {})} for v in inputs],
        "outputs": [port(v, False) for v in m.graph.output],
    }


def channels_first(port: dict) -> bool:
    return port.get("layout", "").startswith("NC") and len(port["shape"]) in LAYOUTS


def sample_shape(port: dict, internal: bool) -> tuple:
    """A sample's shape (no batch) in the user's layout, or in the internal channels-last one."""
    shape = list(port["shape"])
    if internal and channels_first(port):
        shape = [shape[i] for i in to_last(len(shape))]
    return tuple(shape[1:])


def fits(have: tuple, want: tuple) -> bool:
    return len(have) == len(want) and all(w is None or w == h for w, h in zip(want, have))


def samples_to_internal(x: np.ndarray, port: dict) -> tuple[np.ndarray, str]:
    """Samples of a channels-first model, as the user has them, to channels-last; (array, layout they came in).

    Only the channel count decides (height and width may still be resized): data whose axis 1 holds
    the model's channels is in the model's layout; data already channels-last is taken as it is."""
    if not channels_first(port) or x.ndim != len(port["shape"]):
        return x, "as stored"
    channels = port["shape"][1]
    first = channels is not None and x.shape[1] == channels
    last = channels is not None and x.shape[-1] == channels
    if first:  # the model's own layout wins when both fit (e.g. 3x5x3)
        return np.ascontiguousarray(x.transpose(to_last(x.ndim))), port["layout"]
    if last:
        return x, layout_of(x.ndim, channels_first=False)
    return x, "as stored"


def to_artifact(x: np.ndarray, perm) -> np.ndarray:
    """Internal samples in the layout an artifact takes (one of `input_perms`; None: as they are)."""
    return np.ascontiguousarray(x.transpose(perm)) if perm else x


def from_artifact(outputs: list[np.ndarray], perms) -> list[np.ndarray]:
    """An artifact's outputs back in the internal layout, to compare with the reference."""
    perms = perms or [None] * len(outputs)
    return [o.transpose(p) if p else o for o, p in zip(outputs, perms)]


def _compatible(a: list, b: list) -> bool:
    """Same rank and the same sizes past the batch axis (None: free). The batch is not compared: a model
    fixed at batch 1 is run one sample at a time, and its outputs over many samples are stacked on it."""
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a[1:], b[1:]))


def output_perm(original: list, converted: list) -> list[int] | None:
    """How the converted graph's output relates to the original one: None (same layout) or the
    permutation from original (channels-first) to converted (channels-last) layout, as onnx2tf makes it.
    `converted` may be outputs stacked over many samples: its batch size is not compared."""
    rank = len(original)
    if _compatible(original, converted) and detect.layout_of(converted):
        return None  # a YOLO head (free dims fit either way): the conversion keeps its layout (models._from_onnx)
    if rank in LAYOUTS and _compatible([original[i] for i in to_last(rank)], converted):
        return to_last(rank)
    if _compatible(original, converted):
        return None
    raise ValueError(f"cannot map the converted output {converted} back to the original {original}")


def restore(proto, original: dict):
    """Give a graph converted from Keras (tf2onnx: input `input`, channels-last) the user's interface:
    original input and output names, channels-first through a Transpose at each edge, the batch
    dimension free or fixed as in the original. Returns (proto, input_perms, output_perms) for the manifest."""
    from onnx import TensorProto, helper

    g = proto.graph
    if len(g.input) != len(original["inputs"]) or len(g.output) != len(original["outputs"]):
        raise ValueError(
            f"the converted graph has {len(g.input)} inputs and {len(g.output)} outputs, "
            f"the original {len(original['inputs'])} and {len(original['outputs'])}"
        )
    # The converted graph's own tensors step aside: the original names go on the new edges.
    taken = {p["name"] for p in [*original["inputs"], *original["outputs"]]}
    inner = {v.name: v.name + "__internal" for v in [*g.input, *g.output]}
    inner.update({n: n + "__internal" for node in g.node for n in [*node.input, *node.output] if n in taken})
    for node in g.node:
        node.input[:] = [inner.get(s, s) for s in node.input]
        node.output[:] = [inner.get(s, s) for s in node.output]
    for v in g.value_info:
        v.name = inner.get(v.name, v.name)
    head, tail, input_perms, out_perms = [], [], [], []
    for v, port in zip(list(g.input), original["inputs"]):
        conv = _dims(v)
        perm = to_last(len(conv)) if channels_first(port) else None
        dims = [conv[i] for i in to_first(len(conv))] if perm else conv
        head.append(
            helper.make_node("Transpose", [port["name"]], [inner[v.name]], perm=perm)
            if perm
            else helper.make_node("Identity", [port["name"]], [inner[v.name]])
        )
        v.CopyFrom(helper.make_tensor_value_info(port["name"], TensorProto.FLOAT, _original_batch(dims, port)))
        input_perms.append(to_first(len(conv)) if perm else None)
    for v, port in zip(list(g.output), original["outputs"]):
        conv = _dims(v)
        perm = output_perm(port["shape"], conv)
        back = to_first(len(conv)) if perm else None
        tail.append(
            helper.make_node("Transpose", [inner[v.name]], [port["name"]], perm=back)
            if back
            else helper.make_node("Identity", [inner[v.name]], [port["name"]])
        )
        dims = [conv[i] for i in back] if back else conv
        v.CopyFrom(
            helper.make_tensor_value_info(port["name"], v.type.tensor_type.elem_type, _original_batch(dims, port))
        )
        out_perms.append(perm)
    nodes = [*head, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    return proto, input_perms, out_perms


def _original_batch(dims: list, port: dict) -> list:
    """The original's batch dimension: free (named N) where it was, else its fixed size (1 from a default
    torch.onnx.export), whatever the converted graph says."""
    return [("N" if port["shape"][0] is None else port["shape"][0]) if i == 0 else d for i, d in enumerate(dims)]
