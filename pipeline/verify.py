"""Verify one artifact in its own runtime against the float model, on the held-out split."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline import runner


def compare(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict:
    out = {"top1_agreement": float(np.mean(outputs.argmax(-1) == reference.argmax(-1))),
           "max_abs_diff": float(np.max(np.abs(outputs - reference)))}
    if labels is not None:
        out["accuracy"] = float(np.mean(outputs.argmax(-1) == labels))
    return out


def gate(result: dict, expected_quantization: str, max_drop_points: float) -> list[str]:
    """Every reason the artifact must not ship; empty if it passes."""
    reasons = []
    q = result.get("quantization")
    if q != expected_quantization:
        reasons.append(f"file is {q}, not the {expected_quantization} this target promises")
    acc, ref = result.get("accuracy"), result.get("reference_accuracy")
    if acc is not None and ref is not None:
        drop = (ref - acc) * 100
        if drop > max_drop_points:
            reasons.append(f"accuracy {acc:.4f} vs float model {ref:.4f}: drop of {drop:.2f} points "
                           f"exceeds max_accuracy_drop {max_drop_points:g}")
    return reasons


def verify_artifact(target, artifact: Path, data_dir: Path, reference: Path, max_drop: float,
                    reference_accuracy: float) -> dict:
    result = {"expected_quantization": target.quantization, "reference_accuracy": reference_accuracy}
    try:
        info = target.module.inspect(artifact)
    except (ValueError, OSError) as e:
        return {**result, "status": "failed_verification", "reason": f"cannot read artifact: {e}"}
    result.update({k: info[k] for k in ("quantization", "inputs", "outputs", "sparsity", "ops")})
    with tempfile.TemporaryDirectory() as tmp:
        outs = Path(tmp) / "outputs.npz"
        run = runner.run(target.runner_path, artifact, ["--inputs", data_dir / "x_test.npy", "--outputs", outs])
        result["runtime"] = f"{run.get('runtime')} {run.get('runtime_version')}"
        if not run["ok"]:
            return {**result, "status": "failed_verification", "reason": f"{run.get('runtime', 'runtime')}: {run['error']}"}
        with np.load(outs, allow_pickle=False) as z:
            outputs = z["output_0"]
    result.update(compare(outputs, np.load(reference, allow_pickle=False),
                          np.load(data_dir / "y_test.npy", allow_pickle=False)))
    reasons = gate(result, target.quantization, max_drop)
    result["status"] = "failed_verification" if reasons else "ok"
    if reasons:
        result["reason"] = "; ".join(reasons)
    return result
