"""Runner for OpenVINO IR artifacts (model.xml, model.bin beside it) on the CPU plugin.

Needs only numpy and openvino. Telemetry stays off: `openvino_telemetry` is made unimportable
before openvino loads, so its built-in stub is used and nothing is sent or written to ~/intel.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner_common

DTYPES = {
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "i8": "int8",
    "u8": "uint8",
    "i32": "int32",
    "i64": "int64",
}


class OpenVINORuntime:
    NAME = "openvino"
    OPTIONS = {
        "precision": "f32 (default: float math as exact as the file, for verification) or default "
        "(the CPU plugin's own choice: bf16 or fp16 on CPUs that have it)"
    }

    def version(self):
        from importlib.metadata import version

        return version("openvino")

    def load(self, path, args):
        sys.modules.setdefault("openvino_telemetry", None)  # its stub is used instead: nothing is sent
        import openvino as ov

        self.precision = args.precision or "f32"
        config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if self.precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        elif self.precision != "default":
            raise ValueError(f"unknown precision {self.precision!r}: use f32 or default")
        if getattr(args, "profiling", False):
            config["PERF_COUNT"] = True
        compiled = ov.Core().compile_model(path, "CPU", config)
        self._request = compiled.create_infer_request()
        return compiled

    @staticmethod
    def _io(port):
        shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        t = port.get_element_type().get_type_name()
        return {"name": port.get_any_name(), "shape": shape, "dtype": DTYPES.get(t, t), "scale": 0.0, "zero_point": 0}

    def describe(self, compiled):
        return {
            "inputs": [self._io(p) for p in compiled.inputs],
            "outputs": [self._io(p) for p in compiled.outputs],
            "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        }

    def prepare(self, compiled, x):
        """Wrap each sample once, before timing: infer({0: array}) converts the array on every call
        (17-35 us, which made our p50 up to 1.9x benchmark_app's on small models)."""
        import openvino as ov

        if isinstance(x, list):  # several inputs, in the model's order
            return [ov.Tensor(a, shared_memory=True) for a in x]
        return ov.Tensor(x, shared_memory=True)

    def infer(self, compiled, x):
        # Shared outputs are views into the request's buffers, valid until the next call (the caller
        # copies what it keeps); copying them here was a third of our overhead on a 15 us model.
        return list(self._request.infer(x, share_inputs=True, share_outputs=True).values())

    def own_latency_ms(self):
        """The runtime's own timer of the last infer() (C++ side, without the Python binding): what
        benchmark_app reports."""
        return self._request.latency

    def profile(self, compiled, calls):
        """The CPU plugin's performance counters (benchmark_app -pc) of the last inference, per executed node
        of the compiled graph in its run order, with the kernel it ran (exec_type); OPTIMIZED_OUT and NOT_RUN
        nodes cost nothing and are left out."""
        import openvino as ov

        ops = []
        for p in self._request.get_profiling_info():
            if p.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            ops.append(
                {
                    "op_type": p.node_type,
                    "name": p.node_name,
                    "calls": 1,
                    "ms": p.real_time.total_seconds() * 1e3,
                    "exec_type": p.exec_type,
                }
            )
        return ops


RUNTIME = OpenVINORuntime()

if __name__ == "__main__":
    sys.exit(runner_common.main(RUNTIME))
