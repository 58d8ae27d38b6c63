"""Runner for .tflite artifacts in ai-edge-litert (LiteRT). Needs only numpy and ai-edge-litert."""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner_common


class TFLiteRuntime:
    """The TFLite Interpreter API, shared by ai-edge-litert and the legacy tflite-runtime."""

    OPTIONS = {"delegate": "xnnpack (default) or none: the plain builtin kernels"}

    def __init__(self, name: str, module: str, dist: str):
        self.NAME, self._module, self._dist = name, module, dist

    def version(self):
        from importlib.metadata import version

        return version(self._dist)

    def load(self, path, args):
        interp_mod = importlib.import_module(self._module)
        kwargs = {"model_path": path, "num_threads": args.threads}
        self.delegate = args.delegate or "xnnpack"
        if self.delegate == "none":
            kwargs["experimental_op_resolver_type"] = interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif self.delegate != "xnnpack":
            raise ValueError(f"unknown delegate {self.delegate!r}: use xnnpack or none")
        interp = interp_mod.Interpreter(**kwargs)
        interp.allocate_tensors()
        self._in = [d["index"] for d in interp.get_input_details()]
        self._out = [d["index"] for d in interp.get_output_details()]
        # Bound once: a model can take 2 us, where every attribute lookup in infer() shows.
        self._set, self._invoke, self._get = interp.set_tensor, interp.invoke, interp.get_tensor
        self._in0 = self._in[0]
        return interp

    @staticmethod
    def _io(d):
        scale, zero_point = d["quantization"]
        return {
            "name": d["name"],
            "shape": [int(s) for s in d["shape"]],
            "dtype": d["dtype"].__name__,
            "scale": float(scale),
            "zero_point": int(zero_point),
        }

    @staticmethod
    def _signature_names(interp) -> dict:
        """Tensor index -> the output's name in the file's (first) signature: the name the model gave it
        (a converter's tensor names are `StatefulPartitionedCall:1`); {} without a signature."""
        sigs = interp.get_signature_list()
        if not sigs:
            return {}
        runner = interp.get_signature_runner(next(iter(sigs)))
        return {d["index"]: name for name, d in runner.get_output_details().items()}

    def describe(self, interp):
        named = self._signature_names(interp)
        outputs = [{**self._io(d), "name": named.get(d["index"], d["name"])} for d in interp.get_output_details()]
        return {
            "inputs": [self._io(d) for d in interp.get_input_details()],
            "outputs": outputs,
            "delegate": self.delegate,
        }

    def infer(self, interp, x):
        if isinstance(x, list):  # several inputs, in the interpreter's order
            for i, a in zip(self._in, x):
                self._set(i, a)
        else:
            self._set(self._in0, x)
        self._invoke()
        get = self._get
        return [get(i) for i in self._out] if len(self._out) > 1 else [get(self._out[0])]


class LiteRtRuntime(TFLiteRuntime):
    """ai-edge-litert, whose libLiteRt.so has the op profiler its Python Interpreter lacks (litert_profiler.py)."""

    def load(self, path, args):
        if not getattr(args, "profiling", False):
            return super().load(path, args)
        import litert_profiler

        self.delegate = args.delegate or "xnnpack"
        if self.delegate != "xnnpack":  # LiteRT's CompiledModel, which has the profiler, runs XNNPACK only
            raise ValueError(f"LiteRT's op profiler runs XNNPACK only, not the delegate {self.delegate!r}")
        model = litert_profiler.ProfiledModel(path, args.threads)
        # --profile's second session, after timing: from here on describe() and infer() are the profiled model's
        self.describe = lambda m: {
            "inputs": m.details("inputs"),
            "outputs": m.details("outputs"),
            "delegate": self.delegate,
        }
        self.infer = lambda m, x: m.infer(x)
        return model

    @staticmethod
    def profile_start(model):
        """After the profiled session's first inference (setup): LiteRT's profiler records from here."""
        model.start()

    @staticmethod
    def profile(model, calls):
        """LiteRT's profiler events of the `calls` inferences, per op (litert_profiler.op_records)."""
        import litert_profiler

        return litert_profiler.op_records(model.events(), calls)


RUNTIME = LiteRtRuntime("litert", "ai_edge_litert.interpreter", "ai-edge-litert")

if __name__ == "__main__":
    sys.exit(runner_common.main(RUNTIME))
