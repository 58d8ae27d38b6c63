"""`build --verify-on`: load every built artifact on a board, compare its outputs with x86's run of the same file
and with the original model's on held-out samples, and record the result in the manifest entry as
`arm_check[device]`, with the figure its gate used."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.devices import RunRequest, get_devices
from pipeline.errors import UsageError
from pipeline.verdict import Status, VerifyResult

ARM_CHECK_SAMPLES = 100  # held-out samples compared with x86


def verify_devices(specs, **options) -> list:
    """The devices of `--verify-on` (checked before anything is built): emu:PROFILE or ssh://..."""
    if not specs:
        return []
    devices = get_devices(specs, **options)
    if any(d.name == "local" for d in devices):
        raise UsageError("--verify-on takes emulated or remote devices (emu:rpi4, ssh://user@host), not local")
    return devices


def arm_check(
    device, target, art: dict, path: Path, inputs: Path, build, timeout: float = 600.0, original: Path | None = None
) -> dict:
    """Load the artifact on `device` and compare its outputs with x86's (and with `original`, the original model's
    outputs: RunRequest.original) on ARM_CHECK_SAMPLES samples.

    Gate: the board passes when it agrees with x86's run of the file (the build verified that one against the
    original), or, failing that, when it agrees with the original at least as well as x86's run does on the same
    samples (x86's int8 kernels can be the lossy ones). `gate` says which figure decided."""
    from pipeline.gate import agreement_gate

    request = RunRequest(target.runner_path, path, inputs, limit=ARM_CHECK_SAMPLES, timeout=timeout, original=original)
    res = device.run(request)
    f = res.get("device_fields") or {}
    check = {
        "device": device.name,
        "arch": getattr(device, "arch", None) or "aarch64",
        "runtime": f"{res.get('runtime')} {res.get('runtime_version')}",
        "loads": f.get("loads") == "yes",
        **{
            k: f.get(k)
            for k in (
                "max_abs_diff_vs_x86",
                "top1_agreement_vs_x86",
                "cosine_vs_x86",
                "agreement_samples",
                "top1_agreement_vs_original",
                "cosine_vs_original",
                "x86_top1_agreement_vs_original",
                "x86_cosine_vs_original",
                "tflite_runtime_2_14",
            )
            if f.get(k) is not None
        },
    }
    if getattr(device, "emulated", False):
        check["cpu"] = device.profile.cpu
    reasons = []
    if not res.get("ok"):
        reasons.append(res.get("error") or "no result")
    elif f.get("agreement_error"):
        reasons.append(f["agreement_error"])
    else:
        reasons += agreement_gate(check.get("top1_agreement_vs_x86"), check.get("cosine_vs_x86"), build, "x86")
        check["gate"] = "x86"
        if reasons and _as_close_to_the_original(check):
            check["gate"], reasons = "original", []
        elif reasons and "top1_agreement_vs_original" in check:
            reasons.append(
                f"and with the original model {check['top1_agreement_vs_original']:.4f}, below x86's "
                f"{check['x86_top1_agreement_vs_original']:.4f} on the same samples"
            )
    check = VerifyResult(check, reasons, Status.FAILED).record()
    check["sha256"] = art.get("sha256")
    return check


def _as_close_to_the_original(check: dict) -> bool:
    """The board agrees with the original at least as well as x86's run of the file does (top-1, else cosine)."""
    for key in ("top1_agreement_vs_original", "cosine_vs_original"):
        board, x86 = check.get(key), check.get(f"x86_{key}")
        if board is not None and x86 is not None:
            return board >= x86
    return False


def record_arm_checks(out: Path, model_name: str, checks: dict[str, dict]) -> None:
    """Add `arm_check[device]` to the manifest entries checked, under build's lock, atomically.

    An entry whose artifact changed since it was checked (another build published meanwhile) is
    left alone: a check belongs to the bytes it ran."""
    from pipeline import manifest as manifest_mod
    from pipeline.util import atomic_write_json, locked

    path = Path(out) / model_name / "manifest.json"
    with locked(Path(out) / model_name / ".lock"):
        m = manifest_mod.read(path)
        if m is None:
            return
        for a in m.get("artifacts", []):
            for check in checks.get(a["target"], []):
                if check.get("sha256") == a.get("sha256"):
                    a.setdefault("arm_check", {})[check["device"]] = {k: v for k, v in check.items() if k != "sha256"}
        atomic_write_json(path, m)


def verify_on(
    devices: list, cfg, out: Path, rows: list[dict], inputs: Path, log=print, reference: Path | None = None
) -> list[dict]:
    """Check every built artifact on every device and record it. `reference`: the original model's outputs on
    `inputs` (the build's reference_outputs.npz). Returns one row per check."""
    import tempfile

    from pipeline.devices.agreement import original_outputs
    from pipeline.gate import artifact_inputs
    from targets import TARGETS

    checks: dict[str, list[dict]] = {}
    table = []
    for device in devices:
        for a in rows:
            path = Path(out) / a["path"] if a.get("path") else None
            if a.get("status") != Status.OK or path is None or not path.exists():
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:  # the samples in the artifact's own input layout
                original = original_outputs(reference, a, Path(tmp)) if reference else None
                check = arm_check(
                    device,
                    TARGETS[a["target"]],
                    a,
                    path,
                    artifact_inputs(inputs, a, Path(tmp)),
                    cfg.build,
                    original=original,
                )
            checks.setdefault(a["target"], []).append(check)
            table.append({"target": a["target"], **check})
            log(
                f"verify-on {a['target']:<16} {device.name}: {check['status']}"
                f"{': ' + check['reason'] if check.get('reason') else ''} ({time.perf_counter() - t0:.1f} s)"
            )
    record_arm_checks(out, cfg.name, checks)
    return table


TABLE_COLUMNS = [
    ("target", "target"),
    ("device", "device"),
    ("status", "arm check"),
    ("runtime", "runtime"),
    ("max_abs_diff_vs_x86", "max|diff| vs x86"),
    ("top1_agreement_vs_x86", "top-1 vs x86"),
    ("top1_agreement_vs_original", "top-1 vs original"),
    ("x86_top1_agreement_vs_original", "x86 top-1 vs original"),
    ("gate", "gate used"),
    ("agreement_samples", "samples"),
    ("tflite_runtime_2_14", "tflite-runtime 2.14 aarch64"),
]
