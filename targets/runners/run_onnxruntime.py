"""Runner for .onnx artifacts in onnxruntime on the CPU. Needs only numpy and onnxruntime.

Telemetry stays off: ORT_DISABLE_TELEMETRY is set before onnxruntime loads (it reads it only then).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner_common

DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


class OnnxRuntime:
    NAME = "onnxruntime"

    def version(self):
        from importlib.metadata import version

        return version("onnxruntime")

    def load(self, path, args):
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # else it queues usage events for Microsoft (1DS)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # errors only: a runner prints one JSON line
        if getattr(args, "profiling", False):
            import tempfile

            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="edge-export-ort-"), "ort")
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self._input = session.get_inputs()[0].name
        self._inputs = [i.name for i in session.get_inputs()]
        return session

    @staticmethod
    def _io(v):
        return {
            "name": v.name,
            "shape": [d if isinstance(d, int) else -1 for d in v.shape],
            "dtype": DTYPES.get(v.type, v.type),
            "scale": 0.0,
            "zero_point": 0,
        }

    def describe(self, session):
        return {
            "inputs": [self._io(v) for v in session.get_inputs()],
            "outputs": [self._io(v) for v in session.get_outputs()],
            "providers": session.get_providers(),
        }

    def infer(self, session, x):
        if isinstance(x, list):  # several inputs
            return session.run(None, dict(zip(self._inputs, x)))
        return session.run(None, {self._input: x})

    @staticmethod
    def profile(session, calls):
        """onnxruntime's profiler trace (trace_ops), timed from the profiler's own start clock."""
        return trace_ops(session.end_profiling(), calls, session.get_profiling_start_time_ns())


def trace_ops(path, calls, start_ns):
    """The op records of onnxruntime's profiler trace at `path` (removed with its folder): each node's kernel time
    (`NAME_kernel_time` events) in the last `calls` runs (the first run of a session is setup), and its spans
    in CLOCK_REALTIME ns, `start_ns` being the profiler's start. Also the native runner's (pipeline/native.py).

    Each record also has `arena_bytes`: the most bytes the session's CPU arena held while the node ran, as the
    profiler reports it (the event's `mem_arena_held`, in onnxruntime 1.32; the Python package has no other
    way to it); runner_common takes the largest as the row's `arena_bytes`."""
    import json
    import shutil

    try:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-calls:]
    ops: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in runs):
            continue
        name = e["name"][: -len("_kernel_time")]
        op = ops.setdefault(name, {"op_type": e["args"].get("op_name", "?"), "name": name, "us": [], "spans": []})
        if "mem_arena_held" in e["args"]:
            op["arena"] = max(op.get("arena", 0), int(e["args"]["mem_arena_held"]))
        op["us"].append(e["dur"])
        op["spans"].append([start_ns + e["ts"] * 1000, start_ns + (e["ts"] + e["dur"]) * 1000])
    # The median call, not the mean: one preempted call of a 2 us op would outweigh the rest.
    return [
        {
            "op_type": o["op_type"],
            "name": o["name"],
            "calls": len(o["us"]) / calls,
            "ms": sorted(o["us"])[len(o["us"]) // 2] / 1e3 * len(o["us"]) / calls,
            "spans": o["spans"],
            **({"arena_bytes": o["arena"]} if "arena" in o else {}),
        }
        for o in ops.values()
    ]


RUNTIME = OnnxRuntime()

if __name__ == "__main__":
    sys.exit(runner_common.main(RUNTIME))
