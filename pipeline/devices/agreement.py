"""What every board run shares: the same samples run on this x86 machine, compared with the board's
outputs; what a board lacks, said plainly; the files an artifact consists of; what a board has installed."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from pipeline.errors import DeviceError
from pipeline.runtimes import dists, pip_name


def vs_x86(f: dict) -> list[str]:
    """How a device's outputs compared with x86's, for the log line."""
    parts = []
    if f.get("max_abs_diff_vs_x86") is not None:
        top1 = f.get("top1_agreement_vs_x86")
        parts.append(
            f"vs x86: max |diff| {f['max_abs_diff_vs_x86']:.2g}" + (f", top-1 {top1:.4g}" if top1 is not None else "")
        )
    if f.get("top1_agreement_vs_original") is not None:
        parts.append(
            f"vs original: top-1 {f['top1_agreement_vs_original']:.4g} (x86's run of the file "
            f"{f.get('x86_top1_agreement_vs_original', float('nan')):.4g})"
        )
    if f.get("agreement_error"):
        parts.append(f["agreement_error"])
    return parts


def slice_inputs(inputs: Path, limit: int | None, folder: Path) -> Path:
    """The first `limit` samples as their own file (same name; an .npz holds one array per model input)."""
    import numpy as np

    dest = folder / Path(inputs).name
    if dest.suffix == ".npz":
        with np.load(inputs, allow_pickle=False) as z:
            np.savez(dest, **{k: z[k][:limit] if limit else z[k] for k in z.files})
        return dest
    x = np.load(inputs, allow_pickle=False)
    np.save(dest, x[:limit] if limit else x)
    return dest


_REFERENCE: dict = {}


def x86_reference(request, inputs: Path):
    """(outputs, None) of the request's runner on this machine for these samples, or (None, why not). Cached."""
    from pipeline import runner
    from pipeline.util import sha256_file
    from targets.metrics import load_outputs

    st = Path(request.model).stat()
    key = (str(request.runner), str(request.model), st.st_mtime_ns, st.st_size, sha256_file(inputs), request.options)
    if key not in _REFERENCE:
        with tempfile.TemporaryDirectory(prefix="edge-export-ref-") as tmp:
            out = Path(tmp) / "outputs.npz"
            res = runner.run(
                request.runner,
                request.model,
                ["--inputs", inputs, "--outputs", out, *request.option_argv()],
                timeout=request.timeout,
            )
            _REFERENCE[key] = (
                (load_outputs(out), None) if res["ok"] else (None, f"x86 reference run failed: {res['error']}")
            )
    return _REFERENCE[key]


def agreement(outputs, reference) -> dict:
    """max |diff|, cosine and (score outputs) top-1 agreement against the x86 run, worst over outputs."""
    from pipeline.gate import compare, nonfinite

    if bad := nonfinite(outputs, "the board's outputs") or nonfinite(reference, "x86's outputs"):
        return {"agreement_error": bad}
    if len(outputs) != len(reference) or any(o.shape != r.shape for o, r in zip(outputs, reference)):
        return {
            "agreement_error": f"outputs {[o.shape for o in outputs]} differ in shape from x86's "
            f"{[r.shape for r in reference]}"
        }
    c = compare(outputs, reference, None)
    return {
        "max_abs_diff_vs_x86": c["max_abs_diff"],
        "cosine_vs_x86": c["cosine"],
        "top1_agreement_vs_x86": c.get("top1_agreement"),
        "agreement_samples": int(len(outputs[0])),
    }


def agree_fields(res: dict, out_file: Path, ref, ref_error, original: Path | None = None) -> dict:
    """The device's outputs against x86's run of the same file (`ref`), and with `original` (RunRequest.original)
    both against the original model's outputs."""
    from targets.metrics import load_outputs

    if not res.get("ok"):
        return {}
    if not out_file.exists():
        return {"agreement_error": ref_error or "the device wrote no outputs"}
    try:
        outputs = load_outputs(out_file)
    except (OSError, ValueError, KeyError) as e:  # a truncated or foreign file from the device
        return {"agreement_error": f"cannot read the device's outputs: {e}"}
    fields = {"agreement_error": ref_error} if ref_error else agreement(outputs, ref)
    if original is not None:
        fields.update(vs_original(outputs, original, None if ref_error else ref))
    return fields


def vs_original(outputs, original: Path, x86=None) -> dict:
    """Top-1 agreement, cosine and max |diff| of the device's outputs (and of x86's, `x86`) with the original
    model's on the same samples: what every other figure is measured against. A board whose int8 kernels are
    closer to the original than x86's disagrees with x86 and still answers better."""
    from pipeline.gate import compare
    from targets.metrics import load_outputs

    want = [r[: len(outputs[0])] for r in load_outputs(original)]
    if len(want) != len(outputs) or any(o.shape != w.shape for o, w in zip(outputs, want)):
        return {"original_error": f"outputs {[o.shape for o in outputs]} differ in shape from the original's"}
    fields = {}
    for who, outs in (("", outputs), ("x86_", x86)):
        if outs is not None and len(outs) == len(want) and all(o.shape == w.shape for o, w in zip(outs, want)):
            c = compare(outs, want, None)
            fields[f"{who}top1_agreement_vs_original"] = c.get("top1_agreement")
            fields[f"{who}cosine_vs_original"] = c["cosine"]
            fields[f"{who}max_abs_diff_vs_original"] = c["max_abs_diff"]
    return fields


def original_outputs(reference: Path, art: dict, folder: Path) -> Path:
    """The original model's outputs (the build's reference_outputs.npz) in the layout of the artifact's outputs
    (the inverse of its output_perms), as a file beside the samples a board runs."""
    import numpy as np

    from targets.metrics import load_outputs, save_outputs

    refs = load_outputs(reference)
    perms = (art.get("output_perms") or []) + [None] * len(refs)
    outs = [o.transpose(np.argsort(p)) if p else o for o, p in zip(refs, perms)]
    dest = folder / f"original_{art['target']}.npz"
    save_outputs(dest, outs)
    return dest


def legacy_on_board(res: dict, out: Path, ref, ref_error) -> str:
    """tflite-runtime 2.14 on the board against this machine's LiteRT, as build says it (verify.legacy_verdict)."""
    from pipeline.gate import legacy_verdict
    from targets.metrics import load_outputs

    if not res.get("ok"):
        return legacy_verdict(res.get("error") or "no result", [], [], "x86")
    compared = agree_fields(res, out, ref, ref_error)
    if "agreement_error" in compared:
        return f"loads; not compared: {compared['agreement_error']}"
    return legacy_verdict(None, load_outputs(out), ref, "x86")


def missing_runtime(res: dict, where: str = "board") -> dict:
    """A runner that could not import its runtime (or numpy): say what to install, once, plainly."""
    error = res.get("error") or ""
    m = re.search(r"No module named '([\w.]+)'", error) or re.search(
        r"No package metadata was found for ([\w.-]+)", error
    )
    if res.get("ok") or not m:
        return res
    pip = pip_name(m[1])
    return {**res, "error": f"{where} has no {pip}: pip install {pip} there", "runtime_error": error}


def emulated_fields(res: dict) -> dict:
    """Move every wall-clock figure of an emulated run under an `emulated_` key: none is device time."""
    lat = res.pop("latency", None) or {}
    own = res.pop("runtime_latency", None) or {}  # OpenVINO's own clock, ticking in emulated time too
    out = {
        "emulated_p50_ms": lat.get("p50_ms"),
        "emulated_runtime_p50_ms": own.get("p50_ms"),
        "emulated_load_ms": res.pop("load_ms", None),
        "emulated_first_inference_ms": res.pop("first_inference_ms", None),
        "timed_inferences": lat.get("runs"),
    }
    res.pop("peak_rss_mb", None)  # qemu's own memory (translated code included), not the board's
    return out


def artifact_files(model: Path) -> list[Path]:
    """The artifact's file and its companions (an OpenVINO IR's model.bin), from the target registry."""
    from targets import TARGETS

    names = {c for t in TARGETS.values() if t.filename == model.name for c in t.companions}
    if model.suffix == ".xml":
        names.add(model.with_suffix(".bin").name)
    return [model, *(model.with_name(n) for n in sorted(names) if model.with_name(n).is_file())]


# What is installed, from package metadata (no import: fast, even under qemu).
RUNTIMES_PROBE = f"""import json, platform
from importlib import metadata
out = {{"arch": platform.machine(), "python": platform.python_version()}}
for dist in {dists()!r}:
    try:
        out[dist] = metadata.version(dist)
    except Exception:
        out[dist] = None
print(json.dumps(out))
"""


def runtimes_json(text: str, where: str) -> dict:
    import json

    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise DeviceError(f"{where}: python3 did not say what it has installed")
