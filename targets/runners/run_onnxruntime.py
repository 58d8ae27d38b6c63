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


RUNTIME = OnnxRuntime()

if __name__ == "__main__":
    sys.exit(runner_common.main(RUNTIME))
