"""Runner for NCNN artifacts (model.ncnn.param, model.ncnn.bin and model.ncnn.json beside it) on the CPU.

Needs only numpy and the ncnn wheel. NCNN holds a blob as a Mat without the batch axis: each sample goes in
as its (c, h, w) array and each output comes back with the batch axis of 1 put back, in the shape and
layout model.ncnn.json records (the graph's own output: `perm` when NCNN holds it channels-first), under
the model's own input and output names.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import runner_common

# NCNN's own defaults use fp16 storage and arithmetic (bf16 storage) where the CPU has them: off unless
# --precision default, so a file is run as exactly as it is stored (targets.NCNN_RUN, the target's run_config).
F32 = {"use_fp16_storage": False, "use_fp16_arithmetic": False, "use_fp16_packed": False, "use_bf16_storage": False}


class NcnnRuntime:
    NAME = "ncnn"
    OPTIONS = {
        "precision": "f32 (default: fp32 arithmetic, as exact as the file, for verification) or default "
        "(NCNN's own choice: fp16 storage and arithmetic on CPUs that have them, e.g. Cortex-A76)"
    }

    def version(self):
        from importlib.metadata import version

        return version("ncnn")

    def load(self, path, args):
        import ncnn

        self.precision = args.precision or "f32"
        if self.precision not in ("f32", "default"):
            raise ValueError(f"unknown precision {self.precision!r}: use f32 or default")
        net = ncnn.Net()
        net.opt.num_threads = args.threads
        if self.precision == "f32":
            for k, v in F32.items():
                setattr(net.opt, k, v)
        base = path[: -len(".param")] if path.endswith(".param") else path
        if net.load_param(path) or net.load_model(base + ".bin"):
            raise ValueError(f"NCNN cannot load {path} with {os.path.basename(base)}.bin")
        sidecar = base + ".json"
        if os.path.exists(sidecar):
            with open(sidecar, encoding="utf-8") as f:
                io = json.load(f)
            self._inputs, self._outputs = io["inputs"], io["outputs"]
        else:  # a foreign NCNN model: its blob names, shapes unknown
            blob = lambda b: {"name": b, "blob": b, "shape": [], "dtype": "float32"}
            self._inputs = [blob(b) for b in net.input_names()]
            self._outputs = [blob(b) for b in net.output_names()]
        self._mat = ncnn.Mat
        return net

    def describe(self, net):
        io = lambda p: {**p, "scale": 0.0, "zero_point": 0}
        return {
            "inputs": [io(p) for p in self._inputs],
            "outputs": [io(p) for p in self._outputs],
            "precision": self.precision,
        }

    def prepare(self, net, x):
        """Each sample as NCNN Mats once, before timing; the arrays are kept alive with them."""
        x = x if isinstance(x, list) else [x]
        # Mats have no batch axis: drop the one one_call added (a foreign model's shapes are unknown: as given)
        arrays = [np.ascontiguousarray(a[0] if p["shape"] else a, dtype=np.float32) for a, p in zip(x, self._inputs)]
        for a, p in zip(arrays, self._inputs):
            # NCNN runs a Mat of another shape without a word (c, h, w read as it comes): refuse it here
            if p["shape"] and list(a.shape) != p["shape"][1:]:
                raise ValueError(
                    f"input {p['name']} takes samples of shape {p['shape'][1:]} (c, h, w), not {list(a.shape)}"
                )
        return arrays, [self._mat(a) for a in arrays]

    def infer(self, net, feed):
        if not isinstance(feed, tuple):  # not prepared (runner_common always prepares; kept for direct use)
            feed = self.prepare(net, feed)
        _, mats = feed
        outs = []
        # One extractor per inference, as NCNN apps use it: it holds that inference's intermediate blobs.
        with net.create_extractor() as ex:
            for p, m in zip(self._inputs, mats):
                ex.input(p["blob"], m)
            for p in self._outputs:
                ret, m = ex.extract(p["blob"])
                if ret:
                    raise RuntimeError(f"NCNN could not compute output blob {p['blob']} (error {ret})")
                a = np.array(m)[None]  # a copy (the Mat's memory goes with the extractor), the batch axis back
                if "perm" in p:  # a channels-last output NCNN holds channels-first (model.ncnn.json)
                    a = a.transpose(p["perm"])
                outs.append(a.reshape(p["shape"]) if p["shape"] else a)
        return outs


RUNTIME = NcnnRuntime()

if __name__ == "__main__":
    sys.exit(runner_common.main(RUNTIME))
