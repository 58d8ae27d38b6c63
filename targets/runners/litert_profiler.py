"""LiteRT's own op profiler for run_litert.py's --profile session, through the C API of the wheel's libLiteRt.so.

ai-edge-litert's Python Interpreter has no op profiler; the CompiledModel of libLiteRt.so has one
(litert/c/litert_profiler.h, LiteRtCompiledModelGetProfiler). The wheel ships no headers and exports no
LrtCreateRuntimeOptions, so profiling is switched on as LiteRT's own runtime options serialise it: the TOML
payload "enable_profiling = true" under the identifier "runtime_options_string"
(litert/c/options/litert_runtime_options.cc), as the CPU options travel as "xnnpack" in edge_bench.c.

The model runs on the CPU accelerator, XNNPACK, as the timed Interpreter session does by default. XNNPACK
reports each operator it runs (DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT: its operator and kernel, e.g.
"Convolution (NHWC, QC8) IGEMM", and whole microseconds, from a CLOCK_MONOTONIC read before its first operator
and one after each); TFLite reports each op left outside the delegate (OPERATOR_INVOKE_EVENT, e.g. SOFTMAX).
Standard library and numpy only: runners are copied to boards.
"""

from __future__ import annotations

import ctypes as C
import importlib.util
import os

import numpy as np

V = C.c_void_p
OPERATOR_INVOKE_EVENT = 2  # tflite::Profiler::EventType: an op TFLite's own kernel ran
DELEGATE_OPERATOR_INVOKE_EVENT = 4
DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT = 8  # an op inside the delegate, timed by the delegate (XNNPACK)
OP_EVENTS = {
    OPERATOR_INVOKE_EVENT: "Builtin",
    DELEGATE_OPERATOR_INVOKE_EVENT: "Delegate",
    DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT: "Delegate",
}
DTYPES = {1: "float32", 9: "int8", 3: "uint8", 2: "int32", 4: "int64", 10: "float16"}  # LiteRtElementType
HW_CPU, PER_TENSOR = 1, 1


class RankedTensorType(C.Structure):
    """LiteRtRankedTensorType (litert/c/litert_model_types.h): element type, then a layout of rank:7 and
    has_strides:1 bits, 8 dimensions and 8 strides; 72 bytes (LiteRT's static_assert)."""

    _fields_ = [("element_type", C.c_int), ("bits", C.c_uint32), ("dims", C.c_int32 * 8), ("strides", C.c_uint32 * 8)]


class PerTensor(C.Structure):
    _fields_ = [("scale", C.c_float), ("zero_point", C.c_int64)]


class Event(C.Structure):
    """ProfiledEventData (litert/c/litert_common.h), 104 bytes: LiteRtMemoryUsage is three size_t."""

    _fields_ = [
        ("tag", C.c_char_p),
        ("event_type", C.c_int),
        ("start_us", C.c_uint64),
        ("elapsed_us", C.c_uint64),
        ("begin_mem", C.c_size_t * 3),
        ("end_mem", C.c_size_t * 3),
        ("metadata1", C.c_uint64),
        ("metadata2", C.c_uint64),
        ("source", C.c_int),
    ]


assert C.sizeof(RankedTensorType) == 72 and C.sizeof(Event) == 104


def library_path() -> str:
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ai-edge-litert is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "libLiteRt.so")


def summary_by_type(text: str) -> dict[str, float]:
    """The share of each op type in LiteRT's own profile summary (LiteRtGetProfileSummary, the tables
    benchmark_model --enable_op_profiling prints): its "Summary by node type" avg %, with op types named as
    op_records names them."""
    types: dict[str, float] = {}
    after = text.split("Summary by node type", 1)[1].split("\n", 1)[-1] if "Summary by node type" in text else ""
    section = after.split("=====", 1)[0]
    for line in section.splitlines():
        cells = line.split()
        if len(cells) > 5 and cells[-4].endswith("%") and not line.strip().startswith("["):
            op_type = " ".join(cells[:-6]).removeprefix("Delegate/").split(" (")[0]
            types[op_type] = types.get(op_type, 0.0) + float(cells[-4].rstrip("%")) / 100
    return types


def aligned(shape: list[int], dtype: str) -> np.ndarray:
    """Zeros at a 64-byte boundary: LiteRT refuses host memory that is not (LITERT_HOST_MEMORY_BUFFER_ALIGNMENT)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + n].view(dtype).reshape(shape)


class ProfiledModel:
    """One CompiledModel with LiteRT's profiler on: describe() as the Interpreter's details, infer(), events()."""

    def __init__(self, path: str, threads: int):
        lib = self._lib = C.CDLL(library_path())
        lib.LiteRtCreateOpaqueOptions.argtypes = [C.c_char_p, V, V, C.POINTER(V)]
        lib.LiteRtCreateTensorBufferFromHostMemory.argtypes = [
            C.POINTER(RankedTensorType),
            V,
            C.c_size_t,
            V,
            C.POINTER(V),
        ]
        lib.LiteRtRunCompiledModel.argtypes = [V, C.c_size_t, C.c_size_t, V, C.c_size_t, V]
        lib.LiteRtGetProfilerEvents.argtypes = [V, C.c_int, C.POINTER(Event)]
        libc = self._libc = C.CDLL(None)
        libc.strdup.restype, libc.strdup.argtypes = V, [C.c_char_p]
        env, self._model, opts, self._cm, self._profiler = V(), V(), V(), V(), V()
        self._ok(lib.LiteRtCreateEnvironment(0, None, C.byref(env)), "CreateEnvironment")
        self._ok(lib.LiteRtCreateModelFromFile(env, path.encode(), C.byref(self._model)), "CreateModelFromFile")
        self._ok(lib.LiteRtCreateOptions(C.byref(opts)), "CreateOptions")
        self._ok(lib.LiteRtSetOptionsHardwareAccelerators(opts, HW_CPU), "SetOptionsHardwareAccelerators")
        for ident, payload in (
            ("xnnpack", f"num_threads = {threads}\n"),
            ("runtime_options_string", "enable_profiling = true\n"),
        ):
            opaque = V()
            data = libc.strdup(payload.encode())  # LiteRT owns the payload and frees it with free()
            self._ok(lib.LiteRtCreateOpaqueOptions(ident.encode(), data, C.cast(libc.free, V), C.byref(opaque)), ident)
            self._ok(lib.LiteRtAddOpaqueOptions(opts, opaque), "AddOpaqueOptions")
        self._ok(lib.LiteRtCreateCompiledModel(env, self._model, opts, C.byref(self._cm)), "CreateCompiledModel")
        self._ok(lib.LiteRtCompiledModelGetProfiler(self._cm, C.byref(self._profiler)), "CompiledModelGetProfiler")
        if not self._profiler:
            raise RuntimeError("LiteRT made no profiler for the compiled model")
        self._io()

    def _ok(self, status: int, what: str) -> None:
        if status:
            raise RuntimeError(f"LiteRT {what} failed (status {status})")

    def _tensor(self, tensor, name: str) -> dict:
        lib = self._lib
        t = RankedTensorType()
        self._ok(lib.LiteRtGetRankedTensorType(tensor, C.byref(t)), "GetRankedTensorType")
        rank = t.bits & 127
        for d in range(rank):
            t.dims[d] = max(t.dims[d], 1)  # a free batch: batch 1, as the Interpreter's allocate_tensors
        dtype = DTYPES.get(t.element_type)
        if dtype is None:
            raise RuntimeError(f"tensor {name} has a LiteRT element type {t.element_type} the profiler cannot feed")
        q, scale, zero_point = C.c_int(), 0.0, 0
        if lib.LiteRtGetQuantizationTypeId(tensor, C.byref(q)) == 0 and q.value == PER_TENSOR:
            p = PerTensor()
            self._ok(lib.LiteRtGetPerTensorQuantization(tensor, C.byref(p)), "GetPerTensorQuantization")
            scale, zero_point = float(p.scale), int(p.zero_point)
        shape = [int(t.dims[d]) for d in range(rank)]
        array = aligned(shape, dtype)  # the host memory LiteRT reads and writes at each run
        buf = V()
        self._ok(
            lib.LiteRtCreateTensorBufferFromHostMemory(C.byref(t), array.ctypes.data, array.nbytes, None, C.byref(buf)),
            "CreateTensorBufferFromHostMemory",
        )
        return {
            "name": name,
            "shape": shape,
            "dtype": dtype,
            "scale": scale,
            "zero_point": zero_point,
            "array": array,
            "buffer": buf,
        }

    def _io(self) -> None:
        """The signature's inputs and outputs, the inputs in the subgraph's order (the Interpreter's)."""
        lib = self._lib
        sig, sub = V(), V()
        self._ok(lib.LiteRtGetModelSignature(self._model, C.c_size_t(0), C.byref(sig)), "GetModelSignature")
        self._ok(lib.LiteRtGetSignatureSubgraph(sig, C.byref(sub)), "GetSignatureSubgraph")
        ends = {}
        for kind, count, get, name_of in (
            (
                "in",
                lib.LiteRtGetNumSignatureInputs,
                lib.LiteRtGetSignatureInputTensorByIndex,
                lib.LiteRtGetSignatureInputName,
            ),
            (
                "out",
                lib.LiteRtGetNumSignatureOutputs,
                lib.LiteRtGetSignatureOutputTensorByIndex,
                lib.LiteRtGetSignatureOutputName,
            ),
        ):
            n = C.c_size_t()
            self._ok(count(sig, C.byref(n)), "signature size")
            ends[kind] = []
            for i in range(n.value):
                tensor, name = V(), C.c_char_p()
                self._ok(get(sig, C.c_size_t(i), C.byref(tensor)), "signature tensor")
                name_of(sig, C.c_size_t(i), C.byref(name))
                ends[kind].append((tensor.value, self._tensor(tensor, (name.value or b"").decode())))
        n = C.c_size_t()
        self._ok(lib.LiteRtGetNumSubgraphInputs(sub, C.byref(n)), "GetNumSubgraphInputs")
        order = []
        for i in range(n.value):
            tensor = V()
            self._ok(lib.LiteRtGetSubgraphInput(sub, C.c_size_t(i), C.byref(tensor)), "GetSubgraphInput")
            order.append(tensor.value)
        signature_inputs = [e for _, e in ends["in"]]
        by_tensor = dict(ends["in"])
        self.inputs = [by_tensor[t] for t in order] if set(order) == set(by_tensor) else signature_inputs
        self.outputs = [e for _, e in ends["out"]]
        self._in = (V * len(signature_inputs))(*[e["buffer"] for e in signature_inputs])
        self._out = (V * len(self.outputs))(*[e["buffer"] for e in self.outputs])

    def details(self, kind: str) -> list[dict]:
        return [{k: e[k] for k in ("name", "shape", "dtype", "scale", "zero_point")} for e in getattr(self, kind)]

    def infer(self, x) -> list[np.ndarray]:
        for e, a in zip(self.inputs, x if isinstance(x, list) else [x]):
            np.copyto(e["array"], a.reshape(e["array"].shape), casting="unsafe")
        self._ok(
            self._lib.LiteRtRunCompiledModel(self._cm, 0, len(self._in), self._in, len(self._out), self._out), "Run"
        )
        return [e["array"].copy() for e in self.outputs]

    def start(self) -> None:
        self._ok(self._lib.LiteRtResetProfiler(self._profiler), "ResetProfiler")
        self._ok(self._lib.LiteRtStartProfiler(self._profiler), "StartProfiler")

    def summary(self) -> str:
        """LiteRT's own summary of the events since start() (Run Order, Top by Computation Time, Summary by node
        type), as benchmark_model --enable_op_profiling prints it."""
        text = V()
        self._ok(self._lib.LiteRtGetProfileSummary(self._profiler, self._cm, C.byref(text)), "GetProfileSummary")
        try:
            return C.string_at(text).decode(errors="replace") if text.value else ""
        finally:
            self._libc.free(text)  # the caller frees it (litert_profiler.h)

    def events(self) -> list[dict]:
        """The profiler's events since start(), in order: {tag, type, start_us, us, index}."""
        lib = self._lib
        self._ok(lib.LiteRtStopProfiler(self._profiler), "StopProfiler")
        n = C.c_int()
        self._ok(lib.LiteRtGetNumProfilerEvents(self._profiler, C.byref(n)), "GetNumProfilerEvents")
        events = (Event * n.value)()
        self._ok(lib.LiteRtGetProfilerEvents(self._profiler, n.value, events), "GetProfilerEvents")
        return [
            {
                "tag": (e.tag or b"").decode(errors="replace"),
                "type": e.event_type,
                "start_us": e.start_us,
                "us": e.elapsed_us,
                "index": e.metadata1,
            }
            for e in events
        ]


def op_records(events: list[dict], calls: int) -> list[dict]:
    """Per op in run order: {op_type, name, exec_type, calls, ms, ...} of the events of `calls` inferences.

    An XNNPACK operator's op_type is its operator without layout and kernel (Convolution, Fully Connected, Max
    Pooling: the same for fp32 and int8 files), `exec_type` all of it (the kernel that ran, as OpenVINO's exec
    type), `name` the one LiteRT's own summary gives it ([Delegate]:3, [Builtin]:8). `ms` is the op's mean time
    per inference, as LiteRT's summary averages, over the inferences not preempted; LiteRT's profiler counts
    whole microseconds, and XNNPACK truncates each operator's, so an operator under 1 us shows 0.

    For the op trace under qemu (pipeline/op_profile.py) each op also keeps when it ran: an op TFLite ran itself
    its `monotonic_spans` (CLOCK_MONOTONIC ns, each call); an XNNPACK operator its `xnnpack_block` (the
    delegated partition it ran in, in run order) and `last_us`, its microseconds in the last inference."""
    ops = [e for e in events if e["type"] in OP_EVENTS]
    if not ops or len(ops) % calls:
        raise RuntimeError(f"LiteRT's profiler recorded {len(ops)} op events in {calls} inferences")
    per = len(ops) // calls
    runs = [ops[i * per : (i + 1) * per] for i in range(calls)]
    if any([e["tag"] for e in run] != [e["tag"] for e in runs[0]] for run in runs):
        raise RuntimeError("LiteRT's profiler recorded other ops in other inferences")
    # An inference preempted on a shared machine (one op's microseconds x1000) would outweigh the rest: the
    # inferences whose ops took more than 1.5x the median inference's (plus 5 us) are left out of `ms`.
    totals = sorted(sum(e["us"] for e in run) for run in runs)
    kept = [run for run in runs if sum(e["us"] for e in run) <= 1.5 * totals[len(totals) // 2] + 5]
    records, block = [], -1
    for k, e in enumerate(runs[0]):
        us = [run[k]["us"] for run in runs]
        record = {
            "op_type": e["tag"].split(" (")[0],
            "name": f"[{OP_EVENTS[e['type']]}]:{e['index']}",
            "exec_type": e["tag"],
            "calls": 1,
            "ms": sum(run[k]["us"] for run in kept) / 1e3 / len(kept),
        }
        if e["type"] == DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT:
            previous = runs[0][k - 1] if k else None
            if not previous or previous["type"] != e["type"] or e["index"] <= previous["index"]:
                block += 1
            record.update(xnnpack_block=block, last_us=us[-1])
        else:  # microseconds, truncated: the middle of each
            record["monotonic_spans"] = [
                [run[k]["start_us"] * 1000 + 500, (run[k]["start_us"] + run[k]["us"]) * 1000 + 500] for run in runs
            ]
        records.append(record)
    return records
