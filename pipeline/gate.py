"""Verify one artifact in its own runtime against the user's original model, on the held-out split.

The reference is always the original: the model the user brought, as loaded, or the trained built-in
model - never one of the pipeline's intermediate models. Every output (head) is measured its own way
(targets/metrics.py): with labels, the classifier head by accuracy against the original's; score heads by
top-1 agreement with the original's outputs; regression heads (detectors' boxes, maps, embeddings) by mean
cosine similarity; `metric` heads by the user's measure. Each head is gated by its own minimum; the worst
is the artifact's headline. The same budget gates the pruned and QAT models (builder.py).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from pipeline import interface, runner
from targets import RUNNERS, detect, metrics
from targets.metrics import compare, load_outputs  # figures head by head; re-exported for the stages and boards


def nonfinite(outputs: list[np.ndarray], what: str, names: list[str] | None = None) -> str | None:
    """One line naming `what`'s outputs that hold NaN or Inf and on how many samples; None if all are finite.
    Checked before any comparison: argmax of NaN is 0, so a NaN model would "agree" with an original that puts
    every sample in class 0, and NaN fails no `<` test of a gate."""
    bad = []
    for i, o in enumerate(outputs):
        rows = int(np.count_nonzero(metrics.nonfinite_rows(o)))
        if rows:
            name = f" '{names[i]}'" if names and i < len(names) else ""
            bad.append(f"output {i}{name} on {rows} of {len(np.atleast_1d(o))} samples")
    return f"{what}: NaN or Inf in {', '.join(bad)}" if bad else None


def nonfinite_figures(figures: dict) -> list[str]:
    """The gated figures (accuracy, top-1 agreement, cosine, max |diff|) that are NaN or Inf, as one reason."""
    bad = [
        f"{k} {f[k]}"
        for f in [figures, *(figures.get("heads") or [])]
        for k in ("accuracy", "top1_agreement", "cosine", "max_abs_diff")
        if isinstance(f.get(k), float) and not np.isfinite(f[k])
    ]
    return [f"figures against the original model are not numbers: {', '.join(bad)}"] if bad else []


def gate(result: dict, expected_quantization: str, build) -> list[str]:
    """Every reason the artifact must not ship; empty if it passes. `build` is the [build] config."""
    reasons = []
    q = result.get("quantization")
    if q != expected_quantization:
        reasons.append(f"file is {q}, not the {expected_quantization} this target promises")
    return reasons + budget_reasons(result, build)


def budget_reasons(figures: dict, build, share: float = 1.0) -> list[str]:
    """Why `figures` (against the original model) break `share` of the build's budget; empty if they keep it.

    Every head by its own measure (targets/metrics.py): a classifier head with labels by its accuracy drop,
    score heads by top-1 agreement, regression heads by cosine similarity, `metric` heads by the user's
    measure (gated like agreement). Figures without heads (one output) are one head. Outputs with NaN or Inf
    (`nonfinite`, see vs_original) and figures that are not numbers never keep it."""
    if figures.get("nonfinite"):
        return [figures["nonfinite"]]
    if bad := nonfinite_figures(figures):
        return bad
    heads = figures.get("heads") or [figures]
    reasons = []
    for h in heads:
        measure, value, minimum = head_measure(h, figures.get("reference_accuracy"), build)
        if measure is None:
            continue
        who = f"head '{h['name']}': " if len(heads) > 1 else ""
        if measure == "accuracy":
            acc, ref = value, figures["reference_accuracy"]
            drop, allowed = (ref - acc) * 100, build.max_accuracy_drop * share
            if drop > allowed:
                reasons.append(
                    f"{who}accuracy {acc:.4f} vs the original model's {ref:.4f}: drop of {drop:.2f} points exceeds "
                    f"{'' if share == 1 else f'{share:g} x '}max_accuracy_drop {build.max_accuracy_drop:g}"
                )
            continue
        key = {"cosine": "min_cosine", "box_f1": "min_box_f1"}.get(measure, "min_agreement")
        reasons += [who + r for r in _below(value, metrics.NAMES[measure], key, minimum, "the original model", share)]
    return reasons


def head_measure(h: dict, reference_accuracy: float | None, build) -> tuple[str | None, float | None, float | None]:
    """(the figure a head is gated by, its value, its minimum): accuracy for a classifier head with labels (the
    minimum is the original's accuracy less max_accuracy_drop), else its kind's measure; one output without a
    kind: top-1 agreement if it has one, else cosine."""
    if h.get("accuracy") is not None and reference_accuracy is not None:
        return "accuracy", h["accuracy"], reference_accuracy - build.max_accuracy_drop / 100
    guess = metrics.DETECT if h.get("box_f1") is not None else None
    kind = h.get("kind") or guess or (metrics.SCORES if h.get("top1_agreement") is not None else metrics.REGRESSION)
    measure = metrics.MEASURE[kind]
    if h.get(measure) is None:
        return None, None, None
    minimum = {"cosine": build.min_cosine, "box_f1": build.min_box_f1}.get(measure, build.min_agreement)
    return measure, h[measure], minimum


def worst_head(figures: dict, build) -> str | None:
    """The headline of an artifact with several heads: the head that uses the largest share of its room, by
    its own measure ('box: cosine similarity 0.9987')."""
    heads = figures.get("heads")
    if not heads:
        return None

    def used(h):
        measure, value, minimum = head_measure(h, figures.get("reference_accuracy"), build)
        return -1.0 if measure is None else metrics.shortfall(value, minimum)

    h = max(heads, key=used)
    measure, value, _ = head_measure(h, figures.get("reference_accuracy"), build)
    return f"{h['name']}: {metrics.NAMES.get(measure, measure)} {value:.4f}" if measure else None


def agreement_gate(top1: float | None, cosine: float | None, build, against: str, share: float = 1.0) -> list[str]:
    """Without accuracy: top-1 agreement for score outputs, else cosine similarity, against `against`.
    `share` < 1 allows only that share of the room the minimum leaves (1 - share x (1 - minimum))."""
    if top1 is not None:
        return _below(top1, "top-1 agreement", "min_agreement", build.min_agreement, against, share)
    if cosine is not None:
        return _below(cosine, "cosine similarity", "min_cosine", build.min_cosine, against, share)
    return []


def _below(value: float, what: str, key: str, minimum: float, against: str, share: float) -> list[str]:
    need = 1 - share * (1 - minimum)
    if value >= need:
        return []
    where = f"{key} {minimum:g}" if share == 1 else f"{need:.4g} ({share:g} x the room of {key} {minimum:g})"
    return [f"{what} with {against} {value:.4f} is below {where}"]


LEGACY_SAMPLES = 32


def legacy_check(target, artifact: Path, data_dir: Path, outputs: list[np.ndarray], tmp: Path) -> str:
    """Does the artifact load and agree in the runtime many deployed boards still have? 'ok' or why not.

    Runs in its own process: tflite-runtime breaks in a process that has imported TensorFlow."""
    outs = tmp / "legacy.npz"
    run = runner.run(
        RUNNERS / target.legacy_runner,
        artifact,
        ["--inputs", data_dir / "x_test.npy", "--limit", LEGACY_SAMPLES, "--outputs", outs],
    )
    if not run["ok"]:
        return legacy_verdict(run["error"], [], [], "ai-edge-litert")
    return legacy_verdict(None, load_outputs(outs), outputs, "ai-edge-litert")


def legacy_verdict(error: str | None, legacy: list[np.ndarray], reference: list[np.ndarray], other: str) -> str:
    """tflite-runtime 2.14's verdict on a file, from its error or its outputs against `other`'s on the same
    samples: 'ok ...' or why not. Build and the emulated boards both say it this way."""
    if error is not None:
        missing = re.search(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'", error)
        if missing:
            return f"fails: no {missing[1]} v{missing[2]} kernel"
        return f"fails: {error.splitlines()[0][:200] if error.strip() else 'no result'}"
    if bad := nonfinite(legacy, "outputs"):
        return f"loads, but {bad}"
    n = len(legacy[0])
    diff = max(float(np.max(np.abs(a - b[: len(a)]))) for a, b in zip(legacy, reference))
    kinds = metrics.head_kinds([r[:n] for r in reference])
    scores = [metrics.top1(a, b[:n]) for a, b, k in zip(legacy, reference, kinds) if k == metrics.SCORES]
    agree = min(scores) if scores else None
    if agree is not None and agree < 1.0:
        return f"loads, but top-1 differs from {other} on {1 - agree:.0%} of {n} samples"
    # Kernels of two runtimes round int8 differently by a few steps: what matters is the same answer.
    if diff <= 1e-3:
        return "ok"
    if agree is not None:
        return f"ok (same top-1 on {n} samples, max abs diff {diff:.2g})"
    spread = max(float(np.ptp(b)) for b in reference) or 1.0
    if diff <= 0.05 * spread:
        return f"ok (max abs diff {diff:.2g}, under 5 % of the output range)"
    return f"loads, but outputs differ from {other} by up to {diff:.2g}"


def default_run(target, artifact: Path, inputs: Path, perms: dict | None, ref: list[np.ndarray], tmp: Path) -> dict:
    """The same samples without the target's run_config (the runtime's own default, e.g. OpenVINO in bf16 on a
    CPU that has it): what a user who skips the stated configuration gets. Recorded, not gated."""
    outs = tmp / "default.npz"
    option, value = target.run_option
    run = runner.run(target.runner_path, artifact, ["--inputs", inputs, "--outputs", outs, f"--{option}", value])
    if not run["ok"]:
        return {"error": run["error"]}
    outputs = interface.from_artifact(load_outputs(outs), (perms or {}).get("output_perms"))
    if len(outputs) != len(ref) or any(o.shape != r.shape for o, r in zip(outputs, ref)):
        return {"error": "outputs of another shape"}
    if bad := nonfinite(outputs, "the runtime's default"):
        return {"error": bad}
    c = compare(outputs, ref, None)
    return {
        "precision": run.get("precision"),
        **{k: c[k] for k in ("max_abs_diff", "cosine", "top1_agreement") if k in c},
    }


def label_figures(outputs: list[np.ndarray], ref: list[np.ndarray], heads: metrics.Heads, data_dir: Path) -> dict:
    """A detector with labelled boxes (data stage's boxes_test.npz): COCO mAP50-95 of the artifact's boxes and of
    the original's against the labels. Recorded, not gated: the gate is against the original's boxes."""
    labels = Path(data_dir) / "boxes_test.npz"
    if metrics.DETECT not in heads.kinds or not labels.exists():
        return {}
    i = heads.kinds.index(metrics.DETECT)
    with np.load(labels, allow_pickle=False) as z:
        truth = detect.labels_by_image(z["boxes"], z["classes"], z["image"], len(ref[i]))
    d = heads.detect or detect.Detect()
    return {
        "map50_95_labels": detect.map50_95(truth, detect.decode_with(outputs[i], d)),
        "reference_map50_95_labels": detect.map50_95(truth, detect.decode_with(ref[i], d)),
    }


def test_inputs(data_dir: Path) -> Path:
    """The held-out samples: x_test.npy, or x_test.npz (one array per input) for a model with several inputs."""
    npy = Path(data_dir) / "x_test.npy"
    return npy if npy.exists() else Path(data_dir) / "x_test.npz"


def artifact_inputs(x_file: Path, perms: dict | None, tmp: Path) -> Path:
    """The samples of `x_file` in the artifact's input layout: the file itself, or a transposed copy in `tmp`."""
    perm = ((perms or {}).get("input_perms") or [None])[0]
    if not perm:
        return x_file
    path = tmp / f"inputs_{''.join(map(str, perm))}.npy"
    np.save(path, interface.to_artifact(np.load(x_file, allow_pickle=False), perm))
    return path


def _misordered(outputs: list[dict], heads: metrics.Heads | None) -> str | None:
    """Why the artifact's outputs are not in the original's order, when it names them as the original does."""
    names = [o.get("name") for o in outputs]
    if heads is None or len(heads.names) < 2 or sorted(names) != sorted(heads.names) or names == list(heads.names):
        return None
    return f"outputs {names} are not in the original model's order {list(heads.names)}"


def verify_artifact(
    target,
    artifact: Path,
    data_dir: Path,
    reference: Path,
    build,
    reference_accuracy: float | None,
    perms: dict | None = None,
    expected: str | None = None,
    heads: metrics.Heads | None = None,
) -> dict:
    """`perms`: the artifact's interface (input_perms, output_perms; see pipeline/interface.py) when it
    takes another layout than the pipeline's arrays: its inputs and outputs are moved accordingly.
    `expected`: the quantization the file must read back as, when not the target's own (`int8-mixed`:
    the post-training choice kept some layers in float, [ptq] mixed). `heads`: the original's output names and
    kinds (targets/metrics.py); guessed from the reference outputs when None."""
    expected = expected or target.quantization
    result = {
        "expected_quantization": expected,
        "reference_accuracy": reference_accuracy,
        "gate": "accuracy" if reference_accuracy is not None else "agreement",
        "accuracy": None,
        "top1_agreement": None,
    }
    try:
        info = target.module.inspect(artifact)
    except (ValueError, OSError) as e:
        return {**result, "status": "failed_verification", "reason": f"cannot read artifact: {e}"}
    result.update({k: info[k] for k in ("quantization", "inputs", "outputs", "sparsity", "ops")})
    result.update({k: info[k] for k in ("float_ops",) if info.get(k)})  # int8-mixed: what is not int8
    result.update({k: info[k] for k in ("opset",) if k in info})  # ONNX files: the opset they need
    with tempfile.TemporaryDirectory() as tmp:
        outs = Path(tmp) / "outputs.npz"
        inputs = artifact_inputs(test_inputs(data_dir), perms, Path(tmp))
        run = runner.run(target.runner_path, artifact, ["--inputs", inputs, "--outputs", outs])
        result["runtime"] = f"{run.get('runtime')} {run.get('runtime_version')}"
        if not run["ok"]:
            return {
                **result,
                "status": "failed_verification",
                "reason": f"{run.get('runtime', 'runtime')}: {run['error']}",
            }
        outputs = interface.from_artifact(load_outputs(outs), (perms or {}).get("output_perms"))
        if target.legacy_runner:
            result["legacy_tflite_runtime"] = legacy_check(target, artifact, data_dir, outputs, Path(tmp))
        ref = load_outputs(reference)
        if target.run_config:
            result["run_config"] = dict(target.run_config)
            result["runtime_default"] = default_run(target, artifact, inputs, perms, ref, Path(tmp))
    if len(outputs) != len(ref) or any(o.shape != r.shape for o, r in zip(outputs, ref)):
        return {
            **result,
            "status": "failed_verification",
            "reason": f"outputs {[o.shape for o in outputs]} do not match the original model's {[r.shape for r in ref]}",
        }
    names = [o.get("name") for o in result.get("outputs") or [] if isinstance(o, dict)]
    bad = nonfinite(ref, "the original model") or nonfinite(outputs, f"{target.name} in {result['runtime']}", names)
    if bad:
        return {**result, "status": "failed_verification", "reason": bad}
    misordered = _misordered(result["outputs"], heads)
    if misordered:
        return {**result, "status": "failed_verification", "reason": misordered}
    labels = data_dir / "y_test.npy"
    heads = heads or metrics.Heads((), tuple(metrics.head_kinds(ref)))
    result.update(
        compare(
            outputs,
            ref,
            np.load(labels, allow_pickle=False) if labels.exists() and reference_accuracy is not None else None,
            heads.kinds,
            heads.names or None,
            heads.metric,
            heads.detect,
        )
    )
    result.update(label_figures(outputs, ref, heads, data_dir))
    if result.get("heads"):
        result["worst_head"] = worst_head(result, build)
    reasons = gate(result, expected, build)
    result["status"] = "failed_verification" if reasons else "ok"
    if reasons:
        result["reason"] = "; ".join(reasons)
    return result
