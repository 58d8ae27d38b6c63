"""`build --verify-on`: load every built artifact on a board, compare its outputs with x86's on held-out
samples, and record the result in the manifest entry as `arm_check[device]`."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.devices import RunRequest, get_devices
from pipeline.errors import UsageError

ARM_CHECK_SAMPLES = 100  # held-out samples compared with x86


def verify_devices(specs, **options) -> list:
    """The devices of `--verify-on` (checked before anything is built): emu:PROFILE or ssh://..."""
    if not specs:
        return []
    devices = get_devices(specs, **options)
    if any(d.name == "local" for d in devices):
        raise UsageError("--verify-on takes emulated or remote devices (emu:rpi4, ssh://user@host), not local")
    return devices


def arm_check(device, target, art: dict, path: Path, inputs: Path, build, timeout: float = 600.0) -> dict:
    """Load the artifact on `device` and compare its outputs with x86's on ARM_CHECK_SAMPLES samples."""
    from pipeline.gate import agreement_gate

    res = device.run(RunRequest(target.runner_path, path, inputs, limit=ARM_CHECK_SAMPLES, timeout=timeout))
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
    check["status"] = "failed" if reasons else "ok"
    if reasons:
        check["reason"] = "; ".join(reasons)
    check["sha256"] = art.get("sha256")
    return check


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


def verify_on(devices: list, cfg, out: Path, rows: list[dict], inputs: Path, log=print) -> list[dict]:
    """Check every built artifact on every device and record it. Returns one row per check."""
    import tempfile

    from pipeline.gate import artifact_inputs
    from targets import TARGETS

    checks: dict[str, list[dict]] = {}
    table = []
    for device in devices:
        for a in rows:
            path = Path(out) / a["path"] if a.get("path") else None
            if a.get("status") != "ok" or path is None or not path.exists():
                continue
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:  # the samples in the artifact's own input layout
                check = arm_check(
                    device, TARGETS[a["target"]], a, path, artifact_inputs(inputs, a, Path(tmp)), cfg.build
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
    ("agreement_samples", "samples"),
    ("tflite_runtime_2_14", "tflite-runtime 2.14 aarch64"),
]
