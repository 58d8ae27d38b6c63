"""Drop-in check: each artifact of a build against the user's ORIGINAL ONNX model, by interface and answers.

    .venv/bin/python -m benchmarks.interface ORIGINAL.onnx BUILD_OUT [--samples N]

BUILD_OUT holds the one build of ORIGINAL.onnx (read with `pipeline.built(out=BUILD_OUT)`).

For the original and every artifact it prints the input and output names and shapes (as the file
declares them: -1 is a free dimension) and the input layout; then it runs the original in onnxruntime
on the build's held-out samples, in the original's own layout, and every artifact in its runner on the
same samples in the artifact's layout (OpenVINO with INFERENCE_PRECISION_HINT=f32, the run config it
states), and reports per output the max abs difference and mean cosine similarity against the original.
Never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import pipeline
from pipeline import interface, runner
from pipeline.gate import artifact_inputs
from targets import RUNNERS, TARGETS
from targets.metrics import cosine, load_outputs


def ports(ps) -> str:
    return ", ".join(f"{p['name']} {p['shape']}" for p in ps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("original", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples", type=int, default=40)
    a = ap.parse_args()
    build = pipeline.built(out=a.out)  # the one build in OUT, as recorded
    m, x_test = build.manifest, build.eval_inputs()
    orig = interface.onnx_interface(a.original)
    several = len(orig["inputs"]) > 1
    # the original takes the samples in its own layout: channels-first for a single NCHW input
    port = orig["inputs"][0]
    perm = None if several or not interface.channels_first(port) else interface.to_first(len(port["shape"]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref_in = artifact_inputs(x_test, {"input_perms": [perm]}, tmp)
        ref = runner.run(
            RUNNERS / "run_onnxruntime.py",
            a.original,
            ["--inputs", ref_in, "--limit", a.samples, "--outputs", tmp / "ref.npz"],
        )
        if not ref["ok"]:
            raise SystemExit(f"the original does not run: {ref['error']}")
        want = load_outputs(tmp / "ref.npz")
        print(
            f"original        {ports(orig['inputs'])} -> {ports(orig['outputs'])}  layout "
            f"{','.join(dict.fromkeys(p['layout'] for p in orig['inputs']))}"
        )
        for art in m["artifacts"]:
            if art.get("status") not in ("ok", "failed_verification"):
                print(f"{art['target']:<15} not built: {art.get('reason', '')[:100]}")
                continue
            path, target = a.out / art["path"], TARGETS[art["target"]]
            info = pipeline.inspect(path)
            inputs = artifact_inputs(x_test, art, tmp)
            res = runner.run(
                target.runner_path, path, ["--inputs", inputs, "--limit", a.samples, "--outputs", tmp / "got.npz"]
            )
            if not res["ok"]:
                print(f"{art['target']:<15} does not run: {res['error'][:100]}")
                continue
            got = load_outputs(tmp / "got.npz")
            # an NHWC artifact's output (TFLite) is moved to the original's layout to be compared
            got = [
                g
                if g.shape == w.shape
                else g.transpose(np.argsort(interface.output_perm(list(w.shape), list(g.shape))))
                for g, w in zip(got, want)
            ]
            diffs = [
                (float(np.max(np.abs(g - w))), cosine(g, w)) if g.shape == w.shape else (None, None)
                for g, w in zip(got, want)
            ]
            print(
                f"{art['target']:<15} {ports(info['inputs'])} -> {ports(info['outputs'])}  layout "
                f"{info.get('input_layout')}  vs original: "
                + "; ".join(
                    f"{o['name']} max|diff| {d:.3g} cos {c:.5f}" if d is not None else f"{o['name']} shape differs"
                    for o, (d, c) in zip(orig["outputs"], diffs)
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
