"""What an artifact file is, read from the file itself - format, quantization, inputs and
outputs with scale and zero point, ops, sparsity, embedded metadata.

The family is chosen by the file's suffix from the target registry (model.tflite -> tflite,
model.xml -> openvino, ...), and that family module's `inspect(path)` reads the file in a child
process with a timeout (`python -m pipeline.inspection FAMILY PATH`): a malformed file may crash or
hang a parser, never this process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def families() -> dict[str, str]:
    """File suffix -> target family, from the registry."""
    from targets import TARGETS

    return {Path(t.filename).suffix: t.family for t in TARGETS.values()}


def inspect_file(path: Path, timeout: float = 60.0) -> dict:
    """The family module's inspect() of `path`, run in a child process; UsageError if it cannot be read."""
    import json
    import signal
    import subprocess

    from pipeline import runner
    from pipeline.util import sha256_file

    if not path.is_file():
        raise UsageError(f"cannot inspect {path}: no such file")
    known = families()
    family = known.get(path.suffix.lower())
    if family is None:
        raise UsageError(
            f"cannot inspect {path}: unknown file type '{path.suffix or '(no suffix)'}' "
            f"(known: {', '.join(sorted(known))})"
        )
    env = {**runner.child_env(), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline.inspection", family, str(path.resolve())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UsageError(f"cannot inspect {path}: the {family} reader did not finish in {timeout:g} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:  # a library's own log line that happens to start with '{'
        result = None
    if not isinstance(result, dict) or "ok" not in result:
        why = (
            f"crashed with {signal.Signals(-proc.returncode).name}"
            if proc.returncode < 0
            else f"exited {proc.returncode} without a result"
        )
        raise UsageError(f"cannot inspect {path}: the {family} reader {why}")
    if not result["ok"]:
        raise UsageError(f"cannot inspect {path} as {family}: {result['error']}")
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        **result["info"],
        **how_to_run(result["info"]),
    }


def how_to_run(info: dict) -> dict:
    """From the metadata edge-export wrote into the file: the layout its inputs take and the runtime settings
    it was verified with (e.g. OpenVINO's INFERENCE_PRECISION_HINT=f32). Nothing for a foreign file."""
    from targets import TARGETS

    meta = info.get("metadata") or {}
    if "target" not in meta:
        return {}
    target = TARGETS.get(meta["target"])
    return {
        "input_layout": meta.get("input_layout") or (meta.get("preprocessing") or {}).get("layout"),
        "run_config": dict(target.run_config) if target else {},
    }


FIRST = ("file", "bytes", "sha256", "format", "quantization", "sparsity", "inputs", "outputs", "ops")


def describe(info: dict) -> str:
    """Plain text, one key a line; every key the family reports is shown, the usual ones first."""
    keys = [k for k in FIRST if k in info] + sorted(k for k in info if k not in FIRST)
    width = max(map(len, keys))
    lines = []
    for k in keys:
        v = info[k]
        if k in ("inputs", "outputs"):
            vals = [
                f"{t.get('name')}  {t.get('dtype')}  {t.get('shape')}"
                + (f"  scale {t['scale']:.6g}  zero point {t.get('zero_point')}" if t.get("scale") else "")
                for t in v
            ] or ["-"]
        elif isinstance(v, dict) and k == "metadata":
            vals = [f"{mk}: {mv}" for mk, mv in sorted(v.items())] or ["(none)"]
        elif isinstance(v, dict):
            vals = [", ".join(f"{dk} {dv}" for dk, dv in v.items()) or "-"]
        else:
            vals = [str(v)]
        lines += [f"{k if i == 0 else '':<{width}}  {val}" for i, val in enumerate(vals)]
    return "\n".join(lines)


def _plain(o):
    # numpy scalars and arrays from a reader become plain JSON values.
    return o.tolist() if hasattr(o, "tolist") else str(o)


def _child(family: str, path: str) -> int:
    import importlib
    import json

    if family not in families().values():
        result = {"ok": False, "error": f"unknown family {family!r}"}
    else:
        try:
            result = {"ok": True, "info": importlib.import_module(f"targets.{family}").inspect(Path(path))}
        except Exception as e:
            kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
            result = {"ok": False, "error": f"{kind}: {str(e).strip()[:300]}"}
    print(json.dumps(result, default=_plain))
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:3]))
