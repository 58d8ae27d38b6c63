"""NCNN targets: pnnx converts an ONNX graph to NCNN's model.ncnn.param + model.ncnn.bin, and read-back.

Route: the user's ONNX graph when nothing changed, else the converted model (Keras -> tf2onnx, image inputs
channels-first) -> the `pnnx` program from the pnnx wheel, run as a program (its Python wrapper imports torch;
with an ONNX file the program needs nothing else and reaches no network). NCNN names its blobs in0, in1, ...
and out0, out1, ... and holds each as a Mat without the batch axis (c, h, w): model.ncnn.json beside the
files says which blob is which of the model's inputs and outputs, their shapes, and the build's metadata.

`inspect` reads the .param as text and the .bin through NCNN's own loader: every weight NCNN loads with a
storage tag (fp32 0x00000000, fp16 0x01306B47, int8 0x000D4B38) is seen as it is read, so the kinds come
from the file, layer type by layer type as NCNN itself reads it.

No ncnn-int8: NCNN's int8 files are made by its C++ tools ncnn2table / ncnn2int8, which no wheel on the
package index ships (pnnx writes fp32 or fp16 only); see NOT_OFFERED in targets/__init__.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from targets.progress import step

PARAM_MAGIC = "7767517"
TAGS = {0x00000000: "float32", 0x01306B47: "float16", 0x000D4B38: "int8"}
DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
PNNX_PIN = "20250530"
PNNX_IR, PNNX_OPSET = 10, 21


def companion(param: Path) -> Path:
    """model.ncnn.param -> model.ncnn.json: which blob is which input/output, and the build's metadata."""
    return Path(param).with_suffix(".json")


def pnnx_program() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pnnx")
    path = Path(next(iter(spec.submodule_search_locations)), "pnnx") if spec else None
    if path is None or not path.exists():
        raise RuntimeError(f"pnnx is not installed: pip install --no-deps pnnx=={PNNX_PIN} (scripts/install.sh does)")
    return path


def tool_versions() -> dict:
    """What decides the files and their figures besides the inputs (in the export and verify cache keys)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("pnnx", "ncnn"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "missing"
    return found


def export(target, model, calibration: np.ndarray, out: Path, metadata: dict, progress=None, ptq=None) -> dict:
    """Write `target`'s NCNN files of Keras `model` to `out`. An image input (rank 4) is made channels-first,
    as NCNN apps feed it (ncnn::Mat::from_pixels gives c, h, w); returns that interface for the manifest."""
    from targets.onnx import to_onnx

    rank = len(model.input_shape)
    nchw = rank == 4
    with step("convert", "Keras -> ONNX (tf2onnx)"):
        proto = to_onnx(model, target.options["opset"], inputs_as_nchw=nchw)
    perm = [0, 3, 1, 2] if nchw else None
    calib = np.ascontiguousarray(calibration.transpose(perm)) if perm else calibration
    layout = "NCHW" if nchw else metadata.get("preprocessing", {}).get("layout", "")
    write(target, proto, [calib], out, {**metadata, "input_layout": layout}, progress)
    return {
        "interface": {"input_perms": [perm], "output_perms": [None] * len(proto.graph.output), "input_layout": layout}
    }


def write(
    target, proto, calibration: list[np.ndarray], out: Path, metadata: dict, progress=None, ptq=None
) -> dict | None:
    """Write `target`'s NCNN files of the ONNX graph `proto` (converted, or the user's own) to `out`
    (model.ncnn.param; .bin and .json beside it). `calibration`: one array of samples per graph input, in its
    layout: their shapes fix the free dimensions, and the first sample checks the files load and run in NCNN."""
    mode = target.options["mode"]
    if mode not in ("fp32", "fp16"):
        raise ValueError(f"unknown ncnn mode {mode!r}")
    init = {i.name for i in proto.graph.initializer}
    inputs = [v.name for v in proto.graph.input if v.name not in init]
    outputs = [v.name for v in proto.graph.output]
    shapes = [[1, *c.shape[1:]] for c in calibration]
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp, step("convert", f"ONNX -> NCNN (pnnx, {mode})"):
        src = Path(tmp) / "model.onnx"
        src.write_bytes(_readable_by_pnnx(proto).SerializeToString())
        names = {k: Path(tmp) / f"model.{k}" for k in ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnpy")}
        cmd = [
            str(pnnx_program()),
            str(src),
            "inputshape=" + ",".join("[" + ",".join(map(str, s)) + "]f32" for s in shapes),
            f"fp16={int(mode == 'fp16')}",
            f"ncnnparam={out}",
            f"ncnnbin={out.with_suffix('.bin')}",
            *(f"{k}={v}" for k, v in names.items()),
        ]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0 or not out.exists() or not out.with_suffix(".bin").exists():
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise RuntimeError(f"pnnx could not convert the graph (exit {proc.returncode}): {' | '.join(tail)}")
    blobs_in, blobs_out = _blobs(out.read_text())
    if len(blobs_in) != len(inputs) or len(blobs_out) != len(outputs):
        raise RuntimeError(
            f"pnnx made {len(blobs_in)} inputs and {len(blobs_out)} outputs of a graph with {len(inputs)} and {len(outputs)}"
        )
    io = {
        "inputs": [
            {"name": n, "blob": b, "shape": s, "dtype": "float32", "mat": _mat(s)}
            for n, b, s in zip(inputs, blobs_in, shapes)
        ],
        "outputs": [{"name": n, "blob": b, "shape": [], "dtype": "float32"} for n, b in zip(outputs, blobs_out)],
    }
    companion(out).write_text(json.dumps(io))
    samples = [c[:1] for c in calibration]
    for p, got, want in zip(io["outputs"], _run_once(out, inputs, samples), _onnx_outputs(proto, inputs, samples)):
        p.update(mat=_mat(list(got.shape)), shape=list(want.shape), **_to_output(got, want))
    companion(out).write_text(json.dumps({**io, "edge_export": metadata}, indent=1, sort_keys=True) + "\n")
    return None


def _onnx_outputs(proto, names: list[str], samples: list[np.ndarray]) -> list[np.ndarray]:
    """The graph pnnx was given, on the same sample, in onnxruntime: what the NCNN blobs must answer."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: s.astype(np.float32) for n, s in zip(names, samples)})


def _to_output(got: np.ndarray, want: np.ndarray) -> dict:
    """How NCNN's blob (batch axis put back) becomes the graph's output: as it is, or channels-last again when
    pnnx left out the graph's closing transpose (it does on a Keras map output: Mat c, h, w of an NHWC tensor).
    Decided by the values, not the shapes (8x8x8 fits both); neither close: as it is, and verification says so."""
    rank = got.ndim
    for perm in (None, [0, *range(2, rank), 1] if rank > 2 else None):
        have = got.transpose(perm) if perm else got
        if have.shape == want.shape and np.allclose(have, want, rtol=1e-2, atol=1e-2 * float(np.abs(want).max())):
            return {"perm": perm} if perm else {}
    return {}


def _readable_by_pnnx(proto):
    """pnnx 20250530 reads ONNX through an onnxruntime that takes IR version 10 at most (opsets up to 21):
    a newer file of an older opset (onnx 1.23 writes IR 14 whatever the opset) is the same graph at IR 10."""
    if proto.ir_version <= PNNX_IR:
        return proto
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > PNNX_OPSET:
        raise RuntimeError(f"pnnx {PNNX_PIN} reads ONNX opsets up to {PNNX_OPSET}; this graph needs opset {opset}")
    copy = type(proto)()
    copy.CopyFrom(proto)
    copy.ir_version = PNNX_IR
    return copy


def _mat(shape: list[int]) -> str:
    """How an NCNN app holds a blob of this shape: an ncnn::Mat without the batch axis."""
    dims = shape[1:]
    axes = {1: "w", 2: "hw", 3: "chw", 4: "cdhw"}.get(len(dims), "")
    return ", ".join(f"{a}={d}" for a, d in zip(axes, dims))


def _run_once(param: Path, names: list[str], samples: list[np.ndarray]) -> list[np.ndarray]:
    """One sample through the files in NCNN's runner, in a child process (a file NCNN cannot read may crash
    it): they load and run, and the outputs' shapes (the batch axis of 1 put back)."""
    import sys

    from targets import RUNNERS

    with tempfile.TemporaryDirectory() as tmp:
        x, y = Path(tmp) / "x.npz", Path(tmp) / "y.npz"
        np.savez(x, **dict(zip(names, samples)))
        cmd = [sys.executable, str(RUNNERS / "run_ncnn.py"), str(param), "--inputs", str(x), "--outputs", str(y)]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        died = f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"exited {proc.returncode}"
        result = json.loads(lines[-1]) if lines else {"ok": False, "error": died}
        if not result["ok"]:
            raise RuntimeError(f"NCNN cannot run the files pnnx wrote: {result['error']}")
        with np.load(y) as z:
            return [z[f"output_{i}"] for i in range(len(z.files))]


def _layers(text: str) -> list[tuple[str, str, list[str], list[str]]]:
    """(type, name, bottoms, tops) of each layer of a .param file."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0][0] != PARAM_MAGIC:
        raise ValueError(f"not an NCNN .param file (first line is not {PARAM_MAGIC})")
    layers = []
    for parts in lines[2:]:
        kind, name, nb, nt = parts[0], parts[1], int(parts[2]), int(parts[3])
        layers.append((kind, name, parts[4 : 4 + nb], parts[4 + nb : 4 + nb + nt]))
    return layers


def _blobs(text: str) -> tuple[list[str], list[str]]:
    """The input blobs (tops of Input layers) and output blobs (produced, never consumed), in file order."""
    layers = _layers(text)
    used = {b for _, _, bottoms, _ in layers for b in bottoms}
    inputs = [t for kind, _, _, tops in layers if kind == "Input" for t in tops]
    outputs = [t for kind, _, _, tops in layers if kind != "Input" for t in tops if t not in used]
    # pnnx numbers them in the graph's order (in0, in1, ... out0, out1, ...); its layers may come in another
    return sorted(inputs, key=_number), sorted(outputs, key=_number)


def _number(blob: str) -> int:
    digits = re.search(r"\d+$", blob)
    return int(digits.group()) if digits else -1


def _tagged_weights(param: Path) -> list[np.ndarray]:
    """Every weight NCNN loads with a storage tag, as stored (float32, float16 or int8), read through NCNN's own
    loader: each layer reads its data from a DataReader we serve, so the layout of each layer type is NCNN's."""
    import ctypes

    import ncnn

    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    capsule_name = ctypes.pythonapi.PyCapsule_GetName
    capsule_name.restype, capsule_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    data = param.with_suffix(".bin").read_bytes()

    class Reader(ncnn.DataReader):
        def __init__(self):
            super().__init__()
            self.pos, self.reads = 0, []

        def scan(self, fmt, p):
            return 0

        def read(self, buf, size):
            chunk = data[self.pos : self.pos + size]
            ctypes.memmove(pointer(buf, capsule_name(buf)), chunk, len(chunk))
            self.reads.append((self.pos, len(chunk)))
            self.pos += len(chunk)
            return len(chunk)

    net = ncnn.Net()
    if net.load_param(str(param)):
        raise ValueError(f"NCNN cannot parse {param}")
    reader = Reader()
    if net.load_model(reader) or reader.pos != len(data):
        raise ValueError(f"{param.with_suffix('.bin')} does not hold the weights {param.name} describes")
    net.clear()
    weights = []
    # A tagged weight is a 4-byte read of a known tag, then its data; an untagged (raw float32) read of one
    # value 0.0 looks like the fp32 tag, but is never followed by a larger read of the same layer's weights.
    reads = reader.reads
    for (pos, size), nxt in zip(reads, reads[1:]):
        if size != 4:
            continue
        tag = TAGS.get(int.from_bytes(data[pos : pos + 4], "little"))
        if tag is None or (tag == "float32" and nxt[1] <= 4):
            continue
        n = nxt[1] // np.dtype(DTYPES[tag]).itemsize
        weights.append(np.frombuffer(data, dtype=DTYPES[tag], count=n, offset=nxt[0]))
    return weights


def inspect(path: str | Path) -> dict:
    """What the NCNN files are: quantization kind (from each weight's storage tag), I/O blobs, ops, sparsity,
    metadata. Reads model.ncnn.param, model.ncnn.bin and (when there) model.ncnn.json."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not an NCNN .param file: {e}") from e
    try:
        layers = _layers(text)
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path} is not a well-formed NCNN .param file: {e}") from e
    weights = _tagged_weights(path)
    kinds = Counter(a.dtype.name for a in weights)
    meta = json.loads(companion(path).read_text()) if companion(path).exists() else {}
    blobs_in, blobs_out = _blobs(text)

    def io(side, blobs):
        known = meta.get(side) or [{"name": b, "blob": b, "shape": [], "dtype": "float32"} for b in blobs]
        return [{**p, "scale": 0.0, "zero_point": 0} for p in known]

    total = sum(a.size for a in weights)
    zeros = sum(int(np.count_nonzero(a == 0)) for a in weights)
    return {
        "format": "ncnn",
        "quantization": classify(kinds),
        "inputs": io("inputs", blobs_in),
        "outputs": io("outputs", blobs_out),
        "ops": dict(sorted(Counter(k for k, *_ in layers if k != "Input").items())),
        "weight_dtypes": dict(sorted(kinds.items())),
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "metadata": meta.get("edge_export", {}),
    }


def classify(kinds: Counter) -> str:
    """Name the quantization from the storage tags of the weights."""
    if kinds["int8"]:
        return "int8-mixed" if kinds["float32"] + kinds["float16"] else "int8"
    if kinds["float16"]:
        return "fp16-mixed" if kinds["float32"] else "fp16"
    return "fp32"
